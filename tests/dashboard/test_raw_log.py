"""A step's raw log download (issue 18, point 2): the whole log as text, streamed, for those
who may see the run; 404 otherwise."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_the_raw_log_streams_every_line(gated, developer, outsider, client_for):
    from orchestrator.models import LogChunk, StepRun

    run, _ = gated
    step = StepRun.objects.filter(stage__run=run).order_by("stage__position", "position").first()
    LogChunk.objects.filter(step=step).delete()
    lines = [f"line {i}" for i in range(2500)]
    LogChunk.objects.bulk_create(
        [
            LogChunk(step=step, offset=i, line_count=100, text="\n".join(lines[i : i + 100]))
            for i in range(0, 2500, 100)
        ]
    )
    url = f"/runs/{run.pk}/steps/{step.pk}/log.txt"
    response = client_for(developer).get(url)
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    assert b"".join(response.streaming_content).decode().splitlines() == lines
    assert client_for(outsider).get(url).status_code == 404
    assert (
        client_for(developer).get(f"/runs/{run.pk + 999}/steps/{step.pk}/log.txt").status_code
        == 404
    )

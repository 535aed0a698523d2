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


def _long_log(step, n: int) -> None:
    from orchestrator.models import LogChunk

    LogChunk.objects.filter(step=step).delete()
    LogChunk.objects.bulk_create(
        [
            LogChunk(
                step=step,
                offset=i,
                line_count=min(200, n - i),
                text="\n".join(
                    f"2026-12-04T10:00:00.000Z line {j}" for j in range(i, min(i + 200, n))
                ),
            )
            for i in range(0, n, 200)
        ],
        batch_size=500,
    )
    step.log_lines = n
    step.save(update_fields=["log_lines"])


def test_the_run_page_weighs_the_same_at_3000_and_100000_lines(gated, developer, client_for):
    """Issue 18 point 2: long logs are shown in windows; the page holds each step's last
    1,000 lines, whatever the length."""
    from orchestrator.models import StepRun

    run, _ = gated
    step = StepRun.objects.filter(stage__run=run).order_by("stage__position", "position").first()
    client = client_for(developer)
    sizes = {}
    for n in (3_000, 100_000):
        _long_log(step, n)
        body = client.get(f"/runs/{run.pk}/").content.decode()
        sizes[n] = len(body)
        assert f'id="s{step.pk}-L{n}"' in body and f'id="s{step.pk}-L{n - 1000}"' not in body
        assert f'data-first-offset="{n - 1000}" data-next-offset="{n}"' in body
        assert f"Show earlier lines ({n - 1000} before these)" in body
    # Flat: only the line numbers get longer (a few digits on each of the 1,000 lines shown).
    assert sizes[100_000] < sizes[3_000] * 1.05, sizes


def test_an_earlier_window_is_rendered_like_the_page(gated, developer, outsider, client_for):
    from orchestrator.models import StepRun

    run, _ = gated
    step = StepRun.objects.filter(stage__run=run).order_by("stage__position", "position").first()
    _long_log(step, 3_000)
    url = f"/runs/{run.pk}/steps/{step.pk}/log/?before=2000"
    response = client_for(developer).get(url)
    body = response.content.decode()
    assert response["X-Log-First"] == "1000"
    assert body.count('class="log-line"') == 1000
    assert f'id="s{step.pk}-L1001"' in body and f'id="s{step.pk}-L2000"' in body
    assert "line 1000" in body and "line 2000" not in body
    first = client_for(developer).get(f"/runs/{run.pk}/steps/{step.pk}/log/?before=1000")
    assert first["X-Log-First"] == "0" and first.content.decode().count('class="log-line"') == 1000
    assert client_for(outsider).get(url).status_code == 404

"""Reading a step's log in pieces: read_log() and GET /api/v1/runs/{id}/log/?step=&offset=."""

from __future__ import annotations

import pytest

from orchestrator import actions
from orchestrator.models import LogChunk, read_log

from .conftest import client_for, steps_of

pytestmark = pytest.mark.django_db(transaction=True)

CHATTY = """
name: chatty
stages:
  - name: talk
    steps:
      - name: count
        run: seq 1 120
  - name: wait
    needs: [talk]
    steps:
      - name: wait
        run: echo waiting
"""


@pytest.fixture
def finished(start, worker):
    """A run whose first step printed 121 lines (the command + 120) and whose second step is
    queued, not started."""
    run = start(CHATTY)
    worker.run(worker.take()[0])
    steps = steps_of(run)
    return run, steps["talk/count"], steps["wait/wait"]


def numbers(lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[1] for line in lines]


def log_url(run, step, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"step": step.pk, **params}.items())
    return f"/api/v1/runs/{run.pk}/log/?{query}"


def test_read_log_resumes_at_any_offset(finished):
    _, step, _ = finished
    assert LogChunk.objects.filter(step=step).count() == 3  # 50 + 50 + 21
    everything, end = read_log(step, 0)
    assert end == 121 == step.log_lines
    assert numbers(everything)[1:] == [str(n) for n in range(1, 121)]
    for offset in (0, 1, 49, 50, 51, 99, 120):
        lines, next_offset = read_log(step, offset)
        assert lines == everything[offset:], offset
        assert next_offset == 121
    assert read_log(step, 121) == ([], 121)
    assert read_log(step, 500) == ([], 500)
    lines, next_offset = read_log(step, 37, limit=30)
    assert lines == everything[37:67] and next_offset == 67


def test_log_endpoint_pages_through_the_lines_and_says_when_complete(finished, developer):
    run, step, _ = finished
    client = client_for(developer)
    collected: list[str] = []
    offset, pages = 0, 0
    while True:
        response = client.get(log_url(run, step, offset=offset, limit=40))
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"lines", "next_offset", "complete"}
        assert body["next_offset"] == offset + len(body["lines"])
        collected += body["lines"]
        offset, pages = body["next_offset"], pages + 1
        if body["complete"]:
            break
        assert pages < 10
    assert pages == 4  # 40 + 40 + 40 + 1
    assert numbers(collected)[1:] == [str(n) for n in range(1, 121)]
    # Resuming from the end: nothing new, still complete.
    body = client.get(log_url(run, step, offset=offset)).json()
    assert body == {"lines": [], "next_offset": 121, "complete": True}


def test_a_step_that_has_not_finished_is_not_complete(finished, developer, worker):
    run, _, waiting = finished
    client = client_for(developer)
    body = client.get(log_url(run, waiting)).json()
    assert body == {"lines": [], "next_offset": 0, "complete": False}
    worker.drive()
    body = client.get(log_url(run, waiting)).json()
    assert numbers(body["lines"]) == ["$ echo waiting", "waiting"] and body["complete"]


def test_log_endpoint_refuses_bad_queries(finished, developer, start, rival, outsider):
    run, step, _ = finished
    client = client_for(developer)
    assert client.get(f"/api/v1/runs/{run.pk}/log/").status_code == 400
    assert client.get(log_url(run, step, offset="x")).status_code == 400
    assert client.get(log_url(run, step, offset=-1)).status_code == 400
    other = start(CHATTY)
    other_step = steps_of(other)["talk/count"]
    response = client.get(log_url(run, other_step))
    assert response.status_code == 404, "a step of another run"
    assert "message" in response.json()
    # Someone who may not see the run cannot read its log either.
    assert client_for(rival).get(log_url(run, step)).status_code == 404
    assert client_for(outsider).get(log_url(run, step)).status_code == 404


def test_log_of_a_canceled_run(finished, developer):
    run, step, waiting = finished
    actions.cancel_run(run, actor=developer)
    body = client_for(developer).get(log_url(run, waiting)).json()
    assert body["complete"] is True and body["lines"] == []

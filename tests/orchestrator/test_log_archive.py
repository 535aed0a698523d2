"""Archived logs: an ended run's step logs move to the artifact storage as gzip (members of
LOG_ARCHIVE_INDEX_LINES lines), the database keeps only the index, and the API, the run
page's windows and log.txt read them back identically."""

from __future__ import annotations

import gzip
import hashlib

import pytest
from django.core.files.storage import storages

from governance.models import AuditEvent
from orchestrator import actions, logarchive
from orchestrator.models import LogArchive, LogChunk, RunStatus

from .conftest import client_for, log_text, steps_of

pytestmark = pytest.mark.django_db(transaction=True)

CHATTY = """
name: chatty
stages:
  - name: a
    steps:
      - name: count
        run: seq 1 2500; echo 'ünïcode ✓'; echo oops >&2
      - name: quiet
        run: "true"
"""


@pytest.fixture(autouse=True)
def fresh_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "artifacts")},
        },
    }
    settings.CLEARWAY = {**settings.CLEARWAY, "LOG_ARCHIVE_INDEX_LINES": 700}


def _finished(start, worker):
    run = start(CHATTY)
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    step = steps_of(run)["a/count"]
    return run, step, log_text(step)


def test_an_ended_runs_logs_move_to_storage_and_read_back_identically(start, worker, developer):
    run, step, before = _finished(start, worker)
    assert step.log_lines > 2500
    result = actions.archive_logs(run.pk)
    assert result == {"archived": 2, "failed": 0}
    assert not LogChunk.objects.filter(step__stage__run=run).exists()  # only the index left
    archive = LogArchive.objects.get(step=step)
    assert archive.line_count == step.log_lines
    assert archive.index_every == 700
    assert len(archive.offsets) == -(-step.log_lines // 700)
    expected = (before + "\n").encode()
    assert archive.sha256 == hashlib.sha256(expected).hexdigest()
    assert archive.size == len(expected)
    with storages["artifacts"].open(archive.storage_key) as fh:
        assert gzip.decompress(fh.read()) == expected  # a plain gzip file: zcat reads it
    event = AuditEvent.objects.get(action="run.logs_archived")
    assert {s["step"] for s in event.details["steps"]} == {step.pk, steps_of(run)["a/quiet"].pk}

    lines = before.split("\n")
    api = client_for(developer)
    got, offset = [], 0
    while True:  # the API in pages that cross member boundaries
        page = api.get(
            f"/api/v1/runs/{run.pk}/log/", {"step": step.pk, "offset": offset, "limit": 999}
        )
        assert page.status_code == 200
        got += page.json()["lines"]
        offset = page.json()["next_offset"]
        if page.json()["complete"]:
            break
    assert got == lines

    web = client_for(developer)
    web.force_login(developer)
    raw = web.get(f"/runs/{run.pk}/steps/{step.pk}/log.txt")
    assert b"".join(raw.streaming_content) == expected
    window = web.get(f"/runs/{run.pk}/steps/{step.pk}/log/", {"before": 1500})
    assert window["X-Log-First"] == "500"
    assert "ünïcode" not in window.content.decode()
    page = web.get(f"/runs/{run.pk}/")
    assert "ünïcode ✓" in page.content.decode()  # the tail window, from the archive
    assert "Show earlier lines" in page.content.decode()


def test_archiving_twice_changes_nothing(start, worker):
    run, step, _ = _finished(start, worker)
    actions.archive_logs(run.pk)
    assert actions.archive_logs(run.pk) == {"archived": 0, "failed": 0}
    assert LogArchive.objects.filter(step__stage__run=run).count() == 2


def test_a_running_run_is_not_archived(start, worker):
    run = start(CHATTY)
    assert actions.archive_logs(run.pk) == {"archived": 0, "failed": 0}


def test_an_archive_that_does_not_read_back_keeps_the_chunks(start, worker, monkeypatch):
    run, step, before = _finished(start, worker)
    real_save = storages["artifacts"].save

    def corrupting(name, content, **kw):
        return real_save(name, type(content)(content.read()[:-20], name=name), **kw)

    monkeypatch.setattr(storages["artifacts"], "save", corrupting)
    assert actions.archive_logs(run.pk) == {"archived": 0, "failed": 2}
    assert not LogArchive.objects.exists()
    assert log_text(step) == before  # nothing lost
    monkeypatch.undo()
    assert actions.runs_with_unarchived_logs(older_than=__import__("datetime").timedelta(0)) == [
        run.pk
    ]


def test_the_run_end_queues_the_archive(start, worker, celery_eager):
    run = start(CHATTY)
    worker.drive(run)
    step = steps_of(run)["a/count"]
    archive = LogArchive.objects.get(step=step)  # the task ran (eagerly) after the commit
    assert not LogChunk.objects.filter(step=step).exists()
    first, second = logarchive.read_lines(archive, 0, 2)
    assert first.endswith("$ seq 1 2500; echo 'ünïcode ✓'; echo oops >&2")
    assert second.endswith(" 1")

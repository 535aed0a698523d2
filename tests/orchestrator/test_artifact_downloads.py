"""Artifact downloads (the run page and the API) with the logs' read rule — a user who may
not view the run gets 404 —, the run page's list, and the purge of expired artifacts and
archived logs, recorded in the audit log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.storage import storages
from django.test import Client
from django.utils import timezone

from governance.models import AuditEvent
from orchestrator import actions, artifacts
from orchestrator.models import Artifact, LogArchive, RunStatus

from .conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)

DEFINITION = """
name: plan
stages:
  - name: plan
    steps:
      - name: plan
        run: |
          printf '{"ok": true}' > tfplan.json
        artifacts: [{name: plan, path: tfplan.json}]
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


@pytest.fixture
def stored(start, worker):
    run = start(DEFINITION)
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    return run, Artifact.objects.get(stage_run__run=run)


def _web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_run_page_lists_and_serves_the_artifact(stored, viewer):
    run, artifact = stored
    page = _web(viewer).get(f"/runs/{run.pk}/").content.decode()
    url = f"/runs/{run.pk}/artifacts/{artifact.pk}/"
    assert f'href="{url}"' in page
    assert artifact.sha256[:12] in page
    response = _web(viewer).get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b'{"ok": true}'
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith("attachment;")
    assert f"{run.pipeline.slug}-{run.number}-plan-tfplan.json" in response["Content-Disposition"]
    assert response["X-Artifact-SHA256"] == artifact.sha256
    assert response["X-Content-Type-Options"] == "nosniff"


def test_the_api_lists_and_serves_the_artifact(stored, developer):
    run, artifact = stored
    api = client_for(developer)
    listed = api.get(f"/api/v1/runs/{run.pk}/artifacts/")
    assert listed.status_code == 200
    [item] = listed.json()["results"]
    assert item["sha256"] == artifact.sha256
    assert (item["name"], item["path"], item["stage"], item["step"]) == (
        "plan",
        "tfplan.json",
        "plan",
        "plan",
    )
    got = api.get(f"/api/v1/runs/{run.pk}/artifacts/{artifact.pk}/download/")
    assert got.status_code == 200
    assert b"".join(got.streaming_content) == b'{"ok": true}'


def test_a_user_who_may_not_view_the_run_gets_404(stored, outsider, rival):
    run, artifact = stored
    for user in (outsider, rival):
        assert _web(user).get(f"/runs/{run.pk}/artifacts/{artifact.pk}/").status_code == 404
        api = client_for(user)
        assert api.get(f"/api/v1/runs/{run.pk}/artifacts/").status_code == 404
        download = f"/api/v1/runs/{run.pk}/artifacts/{artifact.pk}/download/"
        assert api.get(download).status_code == 404


def test_an_artifact_of_another_run_is_404_under_this_run(stored, start, worker, developer):
    run, artifact = stored
    other = start(DEFINITION)
    worker.drive(other)
    assert _web(developer).get(f"/runs/{other.pk}/artifacts/{artifact.pk}/").status_code == 404
    api = client_for(developer)
    assert api.get(f"/api/v1/runs/{other.pk}/artifacts/{artifact.pk}/download/").status_code == 404


def test_the_purge_removes_expired_files_and_records_it(stored, developer):
    run, artifact = stored
    actions.archive_logs(run.pk)
    archive = LogArchive.objects.get(step__stage__run=run)
    assert storages["artifacts"].exists(artifact.storage_key)
    assert artifacts.purge_expired() == {"artifacts": 0, "logs": 0, "failed": 0}
    later = timezone.now() + timedelta(days=91)
    assert artifacts.purge_expired(now=later) == {"artifacts": 1, "logs": 1, "failed": 0}
    assert not storages["artifacts"].exists(artifact.storage_key)
    assert not storages["artifacts"].exists(archive.storage_key)
    artifact.refresh_from_db()
    assert artifact.purged_at == later  # the row stays: reports and the audit log name it
    event = AuditEvent.objects.get(action="run.artifacts_purged")
    assert event.target_id == str(run.pk)
    assert event.details["artifacts"] == [
        {"name": "plan", "path": "tfplan.json", "sha256": artifact.sha256}
    ]
    assert event.details["reason"] == "retention"
    # A purged artifact is gone for downloads; the purged log says why it is empty.
    assert _web(developer).get(f"/runs/{run.pk}/artifacts/{artifact.pk}/").status_code == 404
    log = client_for(developer).get(f"/api/v1/runs/{run.pk}/log/", {"step": archive.step_id})
    assert log.json()["lines"] == [
        f"[clearway] this log was archived and removed on {later:%Y-%m-%d} (retention)"
    ]
    assert log.json()["complete"] is True  # a client reading to the end stops
    assert artifacts.purge_expired(now=later) == {"artifacts": 0, "logs": 0, "failed": 0}


def test_the_run_page_lists_artifacts_in_one_query(stored, django_assert_max_num_queries):
    run, _ = stored
    with django_assert_max_num_queries(1):
        rows = artifacts.for_run(run)
        assert [r.stage_run.name + r.step_run.name for r in rows] == ["planplan"]

"""Artifacts between stages (orchestrator.artifacts through the real executor, sandboxed):
a step's files stored with digest and content type, received by a stage that needs its
stage in a workspace that never held them, and every bad input a clear message on the step
with nothing half-stored."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from django.core.files.storage import FileSystemStorage, storages

from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import Artifact, RunStatus, StepStatus

from .conftest import log_text, steps_of

pytestmark = pytest.mark.django_db(transaction=True)

PLAN = """
name: infra
stages:
  - name: plan
    steps:
      - name: plan
        run: |
          mkdir -p out/reports
          printf '{"resource_changes": []}\\n' > tfplan.json
          echo one > out/reports/a.xml
          echo two > out/reports/b.xml
        artifacts:
          - {name: plan, path: tfplan.json, policy_input: true}
          - {name: reports, path: "out/**/*.xml"}
  - name: apply
    needs: [plan]
    steps:
      - name: apply
        run: |
          sha256sum tfplan.json out/reports/a.xml
          test -w tfplan.json && echo writable
"""


@pytest.fixture(autouse=True)
def fresh_storage(settings, tmp_path):
    """An empty artifact storage of the test's own."""
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "artifacts")},
        },
    }


def _files_in_storage() -> set[str]:
    found = set()

    def walk(prefix: str) -> None:
        dirs, files = storages["artifacts"].listdir(prefix)
        for name in files:
            found.add(f"{prefix}/{name}".lstrip("/"))
        for name in dirs:
            walk(f"{prefix}/{name}".lstrip("/"))

    try:
        walk("")
    except FileNotFoundError:
        pass
    return found


def _first_stage_then_forget_the_workspace(worker, run):
    """Run the first stage, then delete the workspace: the next stage starts as on a host
    that never saw the run."""
    worker.run(worker.pending.popleft())
    shutil.rmtree(actions.workspace_for(run.pk))
    worker.drive(run)


def test_stored_artifacts_reach_the_stage_that_needs_them(start, worker):
    run = start(PLAN)
    _first_stage_then_forget_the_workspace(worker, run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    rows = {a.path: a for a in Artifact.objects.filter(stage_run__run=run)}
    assert set(rows) == {"tfplan.json", "out/reports/a.xml", "out/reports/b.xml"}
    plan = rows["tfplan.json"]
    body = b'{"resource_changes": []}\n'
    assert plan.name == "plan" and plan.policy_input and not plan.optional
    assert plan.size == len(body)
    assert plan.sha256 == hashlib.sha256(body).hexdigest()
    assert plan.content_type == "application/json"
    assert rows["out/reports/a.xml"].name == "reports"
    assert rows["out/reports/a.xml"].content_type in ("application/xml", "text/xml")
    with storages["artifacts"].open(plan.storage_key) as fh:
        assert fh.read() == body
    assert (plan.expires_at - plan.created_at).days == 90
    apply_log = log_text(steps_of(run)["apply/apply"])
    assert f"{plan.sha256}  tfplan.json" in apply_log
    assert "received artifact plan: tfplan.json" in apply_log
    assert "writable" in apply_log  # the step's own file, not the worker's
    # The audit row of the producing step names what it stored.
    succeeded = AuditEvent.objects.get(action="step.succeeded", target_name__endswith="/ plan")
    assert {a["sha256"] for a in succeeded.details["artifacts"]} == {
        r.sha256 for r in rows.values()
    }


def test_retention_days_of_the_pipeline(start, worker):
    run = start(PLAN.replace("name: infra\n", "name: infra\nretention_days: 7\n", 1))
    worker.drive(run)
    plan = Artifact.objects.get(stage_run__run=run, name="plan")
    assert (plan.expires_at - plan.created_at).days == 7


def _fails_with(start, worker, definition: str, words: str):
    run = start(definition)
    worker.drive(run)
    assert run.status == RunStatus.FAILED
    step = steps_of(run)["plan/plan"]
    assert step.status == StepStatus.FAILED
    assert words in step.error, step.error
    assert words in log_text(step)
    assert not Artifact.objects.filter(stage_run__run=run).exists()
    return run


def one(command: str, artifacts: str) -> str:
    return f"""
name: bad
stages:
  - name: plan
    steps:
      - name: plan
        run: {command!r}
        artifacts: {artifacts}
"""


def test_a_symlink_out_of_the_workspace_is_refused(start, worker):
    _fails_with(
        start,
        worker,
        one("ln -s /etc/hostname leak.txt", "[{name: leak, path: leak.txt}]"),
        'artifact "leak" (path "leak.txt"): leak.txt is a symlink that leads out of the workspace',
    )
    assert _files_in_storage() == set()


def test_a_glob_that_matches_nothing_fails_unless_optional(start, worker):
    _fails_with(
        start,
        worker,
        one("true", '[{name: reports, path: "out/*.xml"}]'),
        'artifact "reports" (path "out/*.xml"): no file matches in the workspace',
    )
    run = start(one("true", '[{name: reports, path: "out/*.xml", optional: true}]'))
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert not Artifact.objects.filter(stage_run__run=run).exists()


def test_a_file_over_the_limit_fails_and_nothing_is_half_stored(start, worker, settings):
    settings.CLEARWAY = {**settings.CLEARWAY, "ARTIFACT_MAX_BYTES": 1024}
    _fails_with(
        start,
        worker,
        one(
            "echo small > a.txt; head -c 4096 /dev/zero > big.bin",
            "[{name: small, path: a.txt}, {name: big, path: big.bin}]",
        ),
        'artifact "big" (path "big.bin"): big.bin is 4096 bytes, over the limit of 1024 bytes',
    )
    assert _files_in_storage() == set()


def test_storage_unavailable_fails_the_step_and_the_run_can_be_retried(
    start, worker, settings, tmp_path, developer
):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    good = settings.STORAGES["artifacts"]
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(blocked)},
        },
    }
    run = _fails_with(
        start,
        worker,
        one("echo x > a.txt", "[{name: a, path: a.txt}]"),
        'artifact "a" (a.txt): artifact storage unavailable:',
    )
    settings.STORAGES = {**settings.STORAGES, "artifacts": good}
    retry = actions.retry_run(run, actor=developer)
    worker.drive(retry)
    assert retry.status == RunStatus.SUCCEEDED, retry.reason
    assert Artifact.objects.filter(stage_run__run=retry, name="a").count() == 1


def test_a_file_changed_in_storage_is_not_delivered(start, worker):
    run = start(PLAN)
    worker.run(worker.pending.popleft())
    plan = Artifact.objects.get(stage_run__run=run, name="plan")
    path = storages["artifacts"].path(plan.storage_key)
    with open(path, "w") as fh:
        fh.write('{"resource_changes": ["tampered"]}\n')
    shutil.rmtree(actions.workspace_for(run.pk))
    worker.drive(run)
    assert run.status == RunStatus.FAILED
    step = steps_of(run)["apply/apply"]
    assert "does not match its digest" in step.error
    assert f"expected sha256 {plan.sha256}" in step.error
    assert not (actions.workspace_for(run.pk) / "tfplan.json").exists()


class ReReadingStorage(FileSystemStorage):
    """A backend that reads the file once for a checksum, seeks back and reads it again to
    store it (as boto does): the digest must still be that of the file."""

    def _save(self, name, content):
        for _ in content.chunks():
            pass
        content.seek(0)
        return super()._save(name, content)


def test_the_digest_holds_when_the_backend_reads_the_file_twice(start, worker, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": f"{__name__}.ReReadingStorage",
            "OPTIONS": {"location": str(tmp_path / "reread")},
        },
    }
    run = start(one("head -c 6000000 /dev/urandom > big.bin", "[{name: big, path: big.bin}]"))
    worker.run(worker.pending.popleft())
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.reason
    row = Artifact.objects.get(stage_run__run=run)
    assert row.size == 6_000_000  # over the threaded digest's threshold
    with storages["artifacts"].open(row.storage_key) as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == row.sha256

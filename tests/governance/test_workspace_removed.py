"""When a run ends — however it ends, through whichever verb — its workspace is removed
after commit: the one advance() verb does it for every caller (finish, cancel, approve,
reject, override, gate checks)."""

from __future__ import annotations

import pytest

from governance import actions
from orchestrator import actions as run_actions
from orchestrator.models import RunStatus

from .conftest import NEEDS_TICKET

UNPROTECTED = """\
name: Plain
stages:
  - name: build
    steps:
      - name: compile
        run: echo build
  - name: deploy-staging
    needs: [build]
    environment: staging
    steps:
      - name: rollout
        run: echo deploy
"""


@pytest.fixture
def staging_pipeline(make_pipeline):
    return make_pipeline("plain", definition=UNPROTECTED)


@pytest.fixture
def workspace():
    """workspace(run): create the run's workspace as an executor would; returns its path."""

    def make(run):
        path = run_actions.workspace_for(run.pk)
        path.mkdir(parents=True, exist_ok=True)
        (path / "build.log").write_text("artefact")
        return path

    return make


def test_a_run_that_succeeds(
    make_run, finish_stage, workspace, django_capture_on_commit_callbacks, staging_pipeline
):
    run = make_run(pipeline=staging_pipeline)
    path = workspace(run)
    with django_capture_on_commit_callbacks(execute=True):
        run = finish_stage(run, "build")
        run = finish_stage(run, "deploy-staging")
    assert run.status == RunStatus.SUCCEEDED
    assert not path.exists()


def test_a_run_that_fails(make_run, finish_stage, workspace, django_capture_on_commit_callbacks):
    run = make_run()
    path = workspace(run)
    with django_capture_on_commit_callbacks(execute=True):
        run = finish_stage(run, "build", succeeded=False)
    assert run.status == RunStatus.FAILED
    assert not path.exists()


def test_a_run_that_is_canceled(make_run, workspace, developer, django_capture_on_commit_callbacks):
    run = make_run()
    path = workspace(run)
    with django_capture_on_commit_callbacks(execute=True):
        run_actions.cancel_run(run, actor=developer)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert not path.exists()


def test_a_run_whose_gate_is_rejected(
    run_at_gate, workspace, security_approver, django_capture_on_commit_callbacks, t0
):
    run, gate = run_at_gate(now=t0)
    path = workspace(run)
    with django_capture_on_commit_callbacks(execute=True):
        actions.reject_gate(gate, actor=security_approver, comment="not this week", now=t0)
    run.refresh_from_db()
    assert run.status == RunStatus.BLOCKED and "rejected by sofia" in run.reason
    assert not path.exists()


def test_a_run_blocked_by_a_hard_mandatory_policy(
    make_run, finish_stage, make_policy, workspace, django_capture_on_commit_callbacks, t0
):
    make_policy("ticket", NEEDS_TICKET, "hard-mandatory")
    run = make_run(now=t0)
    path = workspace(run)
    with django_capture_on_commit_callbacks(execute=True):
        run = finish_stage(run, "build", now=t0)
    assert run.status == RunStatus.BLOCKED
    assert not path.exists()


def test_a_run_that_goes_on_keeps_its_workspace(
    make_run, finish_stage, workspace, django_capture_on_commit_callbacks, t0
):
    run = make_run(now=t0)
    path = workspace(run)
    with django_capture_on_commit_callbacks(execute=True):
        run = finish_stage(run, "build", now=t0)
    assert run.status == RunStatus.WAITING  # at the production gate
    assert path.exists()

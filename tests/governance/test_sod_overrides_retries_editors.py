"""Separation of duties holds for break-glass overrides as for approvals, survives a retry
started by someone else, and covers everyone who edited the pipeline version being deployed
since its previous deployment to the environment — each refusal audited."""

from __future__ import annotations

import pytest

from governance import actions, gates
from governance.models import AuditEvent, Gate, GateStatus, Outcome
from orchestrator import actions as run_actions

from .conftest import NEEDS_TICKET

pytestmark = pytest.mark.django_db

WHY = "hotfix for incident INC-4711, change ticket follows"


def refused(action: str, user) -> AuditEvent:
    return AuditEvent.objects.get(action=action, actor_id=user.pk, outcome=Outcome.DENIED)


def test_a_triggerer_holding_the_override_permission_cannot_override_their_own_run(
    make_run, finish_stage, make_policy, approver, t0
):
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    run = finish_stage(make_run(actor=approver, now=t0), "build", now=t0)  # sam triggers
    gate = Gate.objects.get(stage_run__run=run)
    with pytest.raises(gates.GateRefused) as info:
        actions.override_gate(gate, actor=approver, justification=WHY, now=t0)
    assert "triggered this run and may not override it" in info.value.message
    assert refused("gate.override", approver).details["rule"] == "separation-of-duties"
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING and not gate.overrides.exists()


def test_the_original_triggerer_cannot_approve_a_retry_started_by_someone_else(
    make_run, finish_stage, developer, approver, superuser, t0
):
    first = make_run(actor=approver, now=t0)  # sam triggers; it fails
    first = finish_stage(first, "build", succeeded=False, now=t0)
    retry = run_actions.retry_run(first, actor=superuser, now=t0)  # someone else retries
    retry = finish_stage(retry, "build", now=t0)
    gate = Gate.objects.get(stage_run__run=retry)
    with pytest.raises(gates.GateRefused) as info:
        actions.approve_gate(gate, actor=approver, now=t0)
    assert f"triggered run #{first.number}, which this run retries" in info.value.message
    assert refused("gate.approve", approver).details["rule"] == "separation-of-duties"


def test_an_earlier_editor_since_the_last_deployment_cannot_approve(
    make_pipeline, make_run, finish_stage, approver, second_approver, developer, t0
):
    from tests.conftest import DEFAULT_PIPELINE

    pipeline = make_pipeline("edited", actor=developer)
    # sam edits (v2), then dana edits again (v3): the last editor is dana, but sam's edit is
    # part of what v3 deploys, since nothing was deployed to production before.
    run_actions.update_pipeline(
        pipeline, actor=approver, definition=DEFAULT_PIPELINE.replace("echo build", "echo b2")
    )
    run_actions.update_pipeline(
        pipeline, actor=developer, definition=DEFAULT_PIPELINE.replace("echo build", "echo b3")
    )
    pipeline.refresh_from_db()
    assert pipeline.current_version.number == 3
    run = finish_stage(make_run(pipeline=pipeline, actor=developer, now=t0), "build", now=t0)
    gate = Gate.objects.get(stage_run__run=run)
    with pytest.raises(gates.GateRefused) as info:
        actions.approve_gate(gate, actor=approver, now=t0)
    assert "edited the pipeline (version 2) since its last deployment to production" in (
        info.value.message
    )
    actions.approve_gate(gate, actor=second_approver, now=t0)  # sara edited nothing
    eligible = {u.username for u in gates.eligible_approvers(gate)}
    assert "sam" not in eligible and "sara" in eligible

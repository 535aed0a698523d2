"""Rejecting a gate: the stage is blocked and the run ends "blocked" with the reason."""

from __future__ import annotations

import pytest

from governance import actions, audit, gates
from governance.models import Approval, AuditEvent, GateStatus, Outcome
from orchestrator.models import RunStatus, StageStatus

pytestmark = pytest.mark.django_db


def test_a_rejection_blocks_the_stage_and_ends_the_run_with_the_reason(
    gate, second_approver, dispatched, django_capture_on_commit_callbacks, t0
):
    run = gate.stage_run.run
    with django_capture_on_commit_callbacks(execute=True):
        rejection = actions.reject_gate(
            gate, actor=second_approver, comment="the canary failed in staging", now=t0
        )
    assert rejection.decision == "reject"
    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == GateStatus.REJECTED
    assert gate.reason == "rejected by sara: the canary failed in staging"
    assert run.stages.get(name="deploy-production").status == StageStatus.BLOCKED
    assert run.status == RunStatus.BLOCKED
    assert run.reason == "stage deploy-production: rejected by sara: the canary failed in staging"
    assert run.finished_at == t0
    deploy = set(gate.stage_run.steps.values_list("pk", flat=True))
    assert not [d for d in dispatched if d[0] in deploy]
    actions_logged = list(
        AuditEvent.objects.filter(target_type="gate", target_id=str(gate.pk)).values_list(
            "action", "actor_name"
        )
    )
    assert actions_logged == [
        ("gate.waiting", "system"),
        ("gate.reject", "sara"),
        ("gate.rejected", "sara"),
    ]
    assert AuditEvent.objects.filter(action="run.blocked", target_id=str(run.pk)).exists()
    assert audit.verify().ok


@pytest.mark.parametrize("comment", ["", "   "])
def test_a_rejection_needs_a_comment(gate, approver, comment, t0):
    with pytest.raises(gates.GateInvalid) as info:
        actions.reject_gate(gate, actor=approver, comment=comment, now=t0)
    assert info.value.message == "a rejection needs a comment that says why"
    assert info.value.status_code == 400
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING


def test_an_approver_may_change_their_mind(gate, approver, t0):
    approval = actions.approve_gate(gate, actor=approver, now=t0)
    actions.reject_gate(gate, actor=approver, comment="found a bug after all", now=t0)
    approval.refresh_from_db()
    assert approval.void and approval.void_reason == "superseded by the same user's rejection"
    gate.refresh_from_db()
    assert gate.status == GateStatus.REJECTED


def test_rejecting_a_decided_gate_is_refused(gate, approver, second_approver, t0):
    actions.reject_gate(gate, actor=approver, comment="no", now=t0)
    with pytest.raises(gates.GateConflict) as info:
        actions.reject_gate(gate, actor=second_approver, comment="no too", now=t0)
    assert (
        info.value.message
        == f"gate {gate.pk} was rejected: rejected by sam: no; it takes no more decisions"
    )
    with pytest.raises(gates.GateConflict):
        actions.approve_gate(gate, actor=second_approver, now=t0)


def test_someone_who_may_not_approve_may_not_reject_and_the_attempt_is_audited(gate, developer, t0):
    with pytest.raises(gates.GateRefused):
        actions.reject_gate(gate, actor=developer, comment="stop", now=t0)
    event = AuditEvent.objects.get(action="gate.reject")
    assert (event.outcome, event.actor_name) == (Outcome.DENIED, "dana")
    assert not Approval.objects.exists()


def test_the_person_who_triggered_the_run_may_still_stop_it(run_at_gate, approver, t0):
    run, gate = run_at_gate(actor=approver, now=t0)
    actions.reject_gate(gate, actor=approver, comment="wrong version, sorry", now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.REJECTED

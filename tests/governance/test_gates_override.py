"""Break-glass overrides: soft-mandatory denials only, with a justification, by holders of the
override permission; approvals are still required."""

from __future__ import annotations

import pytest

from governance import actions, gates
from governance.models import AuditEvent, GateStatus, Outcome, Override

from .conftest import FREEZE, NEEDS_TICKET, TWO_SRE

pytestmark = pytest.mark.django_db

WHY = "hotfix for incident INC-4711, change ticket follows"


@pytest.fixture
def soft_gate(run_at_gate, make_policy, t0):
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING
    return gate


def test_an_override_passes_a_soft_denial_and_the_gate_opens_as_overridden(
    soft_gate, approver, approvers, dispatched, django_capture_on_commit_callbacks, t0
):
    gate = soft_gate
    override = actions.override_gate(gate, actor=approver, justification=WHY, now=t0)
    assert override.policies == [
        {"policy": "ticket", "version": 1, "result": "deny", "messages": ["no change ticket"]}
    ]
    gate.refresh_from_db()
    # Approvals are still required.
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "waiting for approvals: 1 more from security, 2 more from sre"

    sam, sara, sofia = approvers
    with django_capture_on_commit_callbacks(execute=True):
        actions.approve_gate(gate, actor=sara, now=t0)
        actions.approve_gate(gate, actor=sofia, now=t0)
        actions.approve_gate(gate, actor=sam, now=t0)  # the override does not bar sam

    gate.refresh_from_db()
    assert gate.status == GateStatus.OVERRIDDEN
    assert gate.reason.startswith("opened with an override by sam of ticket;")
    event = AuditEvent.objects.get(action="gate.override")
    assert event.details["break_glass"] is True
    assert event.details["justification"] == WHY
    assert AuditEvent.objects.filter(action="gate.overridden", target_id=str(gate.pk)).exists()
    deploy = gate.stage_run.steps.values_list("pk", flat=True)
    assert [d for d in dispatched if d[0] in set(deploy)]


@pytest.mark.parametrize("justification", ["", "because", "x" * 19, " " * 30])
def test_a_short_justification_is_refused(soft_gate, approver, justification, t0):
    with pytest.raises(gates.GateInvalid) as info:
        actions.override_gate(soft_gate, actor=approver, justification=justification, now=t0)
    assert "at least 20 characters" in info.value.message
    assert not Override.objects.exists()


def test_a_hard_mandatory_denial_is_never_overridden(
    run_at_gate, make_policy, approver, second_approver, t0
):
    make_policy("two-sre", TWO_SRE, "hard-mandatory")  # waiting: approvals can lift it
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING
    with pytest.raises(gates.GateConflict) as info:
        actions.override_gate(gate, actor=approver, justification=WHY, now=t0)
    assert info.value.message == (
        f"nothing to override on gate {gate.pk}: only hard-mandatory policies deny it, and "
        "those can never be overridden"
    )


def test_a_blocked_gate_cannot_be_overridden(
    run_at_gate, production, freezes_block, make_policy, approver, t0
):
    make_policy("freeze", FREEZE, "hard-mandatory")
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    production.freeze_windows = [
        {"start": "2026-11-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00", "reason": "x"}
    ]
    production.save()
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.BLOCKED
    with pytest.raises(gates.GateConflict) as info:
        actions.override_gate(gate, actor=approver, justification=WHY, now=t0)
    assert "is blocked" in info.value.message


def test_nothing_to_override_is_a_conflict(gate, approver, t0):
    with pytest.raises(gates.GateConflict) as info:
        actions.override_gate(gate, actor=approver, justification=WHY, now=t0)
    assert "no soft-mandatory policy denies it" in info.value.message


@pytest.mark.parametrize("who", ["security_approver", "developer", "viewer", "policy_admin"])
def test_without_the_override_permission_it_is_refused_and_audited(request, soft_gate, who, t0):
    user = request.getfixturevalue(who)
    with pytest.raises(gates.GateRefused) as info:
        actions.override_gate(soft_gate, actor=user, justification=WHY, now=t0)
    assert info.value.message == (
        f"{user.username} may not override gates of production: the override permission on "
        "the environment is missing"
    )
    event = AuditEvent.objects.get(action="gate.override")
    assert event.outcome == Outcome.DENIED
    assert not Override.objects.exists()


def test_an_override_covers_the_policy_version_it_passed(
    soft_gate, approver, approvers, publish_version, make_policy, t0
):
    gate = soft_gate
    actions.override_gate(gate, actor=approver, justification=WHY, now=t0)
    policy = gate.decisions.get(current=True).policy_version.policy
    publish_version(policy, NEEDS_TICKET.replace("no change ticket", "a ticket is required"))
    for person in approvers:
        actions.approve_gate(gate, actor=person, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert "soft-mandatory policy ticket: a ticket is required" in gate.reason

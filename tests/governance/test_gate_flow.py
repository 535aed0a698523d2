"""Gates that keep moving: a freeze pauses a waiting gate (and it resumes after), a gate
waiting past its environment's maximum is rejected by the system, a rule past its SLA
escalates to its backup group, and the inbox counts only what a person can still act on."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from governance import actions, gates, notifications
from governance.models import (
    ApprovalRule,
    AuditEvent,
    FreezeMode,
    Gate,
    GateEscalation,
    GateStatus,
)
from orchestrator.models import RunStatus, StageStatus

from .conftest import FREEZE

pytestmark = pytest.mark.django_db


@pytest.fixture
def told(monkeypatch) -> list[tuple[int, str]]:
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(notifications, "schedule", lambda gate, kind: sent.append((gate.pk, kind)))
    return sent


def freeze(env, start, end, reason="year-end freeze"):
    env.freeze_windows = [{"start": start.isoformat(), "end": end.isoformat(), "reason": reason}]
    env.save(update_fields=["freeze_windows"])


def approve_all(gate, people, now):
    for person in people:
        actions.approve_gate(gate, actor=person, now=now)
    gate.refresh_from_db()


# --- a freeze pauses, then the gate resumes ---------------------------------------------


def test_a_freeze_that_starts_while_a_gate_waits_pauses_it_and_it_resumes_after(
    run_at_gate, make_policy, production, approvers, t0
):
    make_policy("freeze", FREEZE, "hard-mandatory")  # would block for good in "block" mode
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING and "waiting for approvals" in gate.reason
    freeze(production, t0 + timedelta(hours=1), t0 + timedelta(hours=3))

    assert actions.recheck(gate.pk, now=t0 + timedelta(hours=2)) == GateStatus.WAITING
    gate.refresh_from_db()
    assert gate.reason.startswith("frozen until ")
    assert "(year-end freeze): the gate waits and resumes when the freeze ends" in gate.reason
    approve_all(gate, approvers, t0 + timedelta(hours=2))  # approvals are taken meanwhile
    assert gate.status == GateStatus.WAITING  # still paused

    assert actions.recheck(gate.pk, now=t0 + timedelta(hours=3, minutes=1)) == GateStatus.OPEN
    run.refresh_from_db()
    assert run.stages.get(name="deploy-production").status == StageStatus.QUEUED


def test_an_environment_may_choose_block_instead(run_at_gate, make_policy, production, t0):
    production.freeze_mode = FreezeMode.BLOCK
    production.save(update_fields=["freeze_mode"])
    make_policy("freeze", FREEZE, "hard-mandatory")
    freeze(production, t0 - timedelta(hours=1), t0 + timedelta(hours=1))
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.BLOCKED
    assert "freeze" in gate.reason


# --- the maximum wait ---------------------------------------------------------------------


def test_a_gate_waiting_past_the_maximum_is_rejected_by_the_system(run_at_gate, told, t0):
    run, gate = run_at_gate(now=t0)
    assert gate.environment.max_wait_days == 30  # the default
    actions.housekeeping(now=t0 + timedelta(days=29, hours=23))
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING

    actions.housekeeping(now=t0 + timedelta(days=30, seconds=1))
    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == GateStatus.REJECTED
    assert gate.reason.startswith("rejected by the system: no decision within 30 days")
    assert run.status == RunStatus.BLOCKED
    event = AuditEvent.objects.get(action="gate.rejected", target_id=str(gate.pk))
    assert event.actor_name == "system" and event.details["timed_out"] is True
    assert (gate.pk, "timed_out") in told


# --- SLA escalation -----------------------------------------------------------------------


@pytest.fixture
def backup(make_user, production):
    """sre-backup holds the approve permission on production; security's rule escalates to
    it after 4 hours."""
    group = Group.objects.get_or_create(name="sre-backup")[0]
    assign_perm("governance.approve_environment", group, production)
    ApprovalRule.objects.filter(environment=production, group__name="security").update(
        sla_minutes=240, backup_group=group
    )
    return make_user("bob", "approver", "sre-backup")


def test_a_rule_past_its_sla_escalates_to_its_backup_group(
    run_at_gate, backup, approver, second_approver, told, t0
):
    run, gate = run_at_gate(now=t0)
    with pytest.raises(gates.GateRefused, match="not in an approval group"):
        actions.approve_gate(gate, actor=backup, now=t0 + timedelta(hours=1))
    actions.housekeeping(now=t0 + timedelta(hours=3, minutes=59))
    assert not GateEscalation.objects.exists()

    actions.housekeeping(now=t0 + timedelta(hours=4, minutes=1))
    escalation = GateEscalation.objects.get(gate=gate)
    assert (escalation.group.name, escalation.backup_group.name) == ("security", "sre-backup")
    event = AuditEvent.objects.get(action="gate.escalate")
    assert event.details["backup_group"] == "sre-backup" and event.details["group"] == "security"
    assert (gate.pk, "escalated") in told
    assert "bob" in {u.username for u in gates.eligible_approvers(gate)}
    assert Gate.objects.waiting_for(backup).filter(pk=gate.pk).exists()

    later = t0 + timedelta(hours=5)
    approve_all(gate, [backup, approver, second_approver], later)
    assert gate.status == GateStatus.OPEN
    assert "security: bob" in gate.reason
    actions.housekeeping(now=later)
    assert GateEscalation.objects.count() == 1  # once per rule


def test_a_satisfied_rule_does_not_escalate(run_at_gate, backup, security_approver, told, t0):
    run, gate = run_at_gate(now=t0)
    actions.approve_gate(gate, actor=security_approver, now=t0)
    actions.housekeeping(now=t0 + timedelta(hours=5))
    assert not GateEscalation.objects.exists()


# --- the inbox ----------------------------------------------------------------------------


def test_the_inbox_counts_only_gates_the_user_can_still_act_on(
    run_at_gate, make_run, finish_stage, approver, second_approver, t0
):
    run, gate = run_at_gate(now=t0)
    mine = finish_stage(make_run(actor=approver, now=t0), "build", now=t0)  # sam triggered
    assert Gate.objects.waiting_for(second_approver).count() == 2
    assert list(Gate.objects.waiting_for(approver)) == [gate]  # not the run he triggered
    actions.approve_gate(gate, actor=approver, now=t0)
    assert Gate.objects.waiting_for(approver).count() == 0  # decided
    assert Gate.objects.waiting_for(second_approver).count() == 2
    assert mine.status == RunStatus.WAITING

"""Delegation (out of office): sam, an sre approver, is away and lets tom decide in his place
for a period. tom's approvals count as sam's ("tom for sam"), in the inbox and on the gate;
separation of duties still refuses him (and refuses him for sam when sam may not approve);
nobody delegates to themselves; periods do not overlap or run backwards; an expired or
revoked delegation gives no right."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance import actions, gates
from governance.delegation import DelegationError, create_delegation, revoke_delegation
from governance.models import Approval, AuditEvent, Delegation, Gate, GateStatus, Outcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def tom(make_user):
    """A colleague with the approver role (he sees pipelines) but in no approval group and
    without the approve permission on production."""
    return make_user("tom", "approver", first_name="Tom")


@pytest.fixture
def away(approver, tom, production, t0):
    """sam delegates to tom for a week from t0."""
    return create_delegation(
        actor=approver,
        delegate=tom,
        starts_at=t0,
        ends_at=t0 + timedelta(days=7),
        reason="on leave",
        now=t0,
    )


@pytest.fixture
def away_now(approver, tom, production):
    """sam delegates to tom from an hour ago for a week (in force for the queries that ask
    about the present: the inbox, the notifications)."""
    now = timezone.now()
    return create_delegation(
        actor=approver,
        delegate=tom,
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=7),
        now=now,
    )


def test_a_delegate_approves_for_the_delegator_during_the_period(
    run_at_gate, away, approver, second_approver, security_approver, tom, t0
):
    run, gate = run_at_gate(now=t0)
    later = t0 + timedelta(hours=1)
    assert gates.approve_problem(gate, run, tom, now=later) is None
    approval = actions.approve_gate(gate, actor=tom, now=later)
    assert approval.user == tom and approval.on_behalf_of == approver
    assert approval.groups == ["approver", "sre"]  # counts with sam's groups
    event = AuditEvent.objects.get(action="gate.approve", actor_name="tom")
    assert event.details["on_behalf_of"] == "sam"

    actions.approve_gate(gate, actor=second_approver, now=later)
    actions.approve_gate(gate, actor=security_approver, now=later)
    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN


def test_without_a_delegation_the_colleague_may_not_approve(run_at_gate, tom, t0):
    run, gate = run_at_gate(now=t0)
    with pytest.raises(gates.GateRefused, match="approve permission"):
        actions.approve_gate(gate, actor=tom, now=t0)


def test_an_expired_delegation_gives_no_right(run_at_gate, away, tom, t0):
    run, gate = run_at_gate(now=t0)
    after = t0 + timedelta(days=7)  # ends_at is exclusive
    with pytest.raises(gates.GateRefused):
        actions.approve_gate(gate, actor=tom, now=after)
    assert not Approval.objects.filter(gate=gate).exists()
    refused = AuditEvent.objects.get(action="gate.approve", outcome=Outcome.DENIED)
    assert refused.actor_name == "tom"


def test_a_revoked_delegation_gives_no_right(run_at_gate, away, approver, tom, t0):
    revoke_delegation(away, actor=approver, now=t0 + timedelta(minutes=5))
    run, gate = run_at_gate(now=t0)
    with pytest.raises(gates.GateRefused):
        actions.approve_gate(gate, actor=tom, now=t0 + timedelta(hours=1))
    assert AuditEvent.objects.filter(action="delegation.revoke", actor_name="sam").exists()


def test_a_delegation_that_has_not_started_gives_no_right_yet(run_at_gate, approver, tom, t0):
    create_delegation(
        actor=approver,
        delegate=tom,
        starts_at=t0 + timedelta(days=1),
        ends_at=t0 + timedelta(days=2),
        now=t0,
    )
    run, gate = run_at_gate(now=t0)
    with pytest.raises(gates.GateRefused):
        actions.approve_gate(gate, actor=tom, now=t0 + timedelta(hours=1))


def test_a_delegate_who_is_the_author_is_refused(run_at_gate, away, tom, t0):
    run, gate = run_at_gate(now=t0, parameters={"author": "Tom <tom@example.test>"})
    with pytest.raises(gates.GateRefused, match="tom is the author of the change") as exc:
        actions.approve_gate(gate, actor=tom, now=t0 + timedelta(hours=1))
    assert exc.value.rule == "separation-of-duties"
    refused = AuditEvent.objects.get(action="gate.approve", outcome=Outcome.DENIED)
    assert refused.details["rule"] == "separation-of-duties"
    assert not Approval.objects.filter(gate=gate).exists()


def test_a_delegate_who_triggered_the_run_is_refused(run_at_gate, away, tom, pipeline, t0):
    from guardian.shortcuts import assign_perm

    assign_perm("orchestrator.run_pipeline", tom, pipeline)
    run, gate = run_at_gate(now=t0, actor=tom)
    with pytest.raises(gates.GateRefused, match="tom triggered this run"):
        actions.approve_gate(gate, actor=tom, now=t0 + timedelta(hours=1))


def test_a_delegate_cannot_approve_for_a_delegator_who_is_the_author(run_at_gate, away, tom, t0):
    """sam may not approve a change he wrote; his delegate may not approve it for him."""
    run, gate = run_at_gate(now=t0, parameters={"author": "sam"})
    with pytest.raises(gates.GateRefused, match="tom would approve for sam, and sam is the"):
        actions.approve_gate(gate, actor=tom, now=t0 + timedelta(hours=1))
    assert not Gate.objects.decidable_by(tom).filter(pk=gate.pk).exists()


def test_one_vote_per_delegator(run_at_gate, away, approver, tom, t0):
    """sam's vote counts once: cast by tom for him, sam cannot add his own; and the other
    way round."""
    run, gate = run_at_gate(now=t0)
    actions.approve_gate(gate, actor=tom, now=t0 + timedelta(hours=1))
    already = r"sam's decision on gate \d+ was already given \(tom approved for sam\)"
    with pytest.raises(gates.GateConflict, match=already):
        actions.approve_gate(gate, actor=approver, now=t0 + timedelta(hours=2))

    run2, gate2 = run_at_gate(now=t0)
    actions.approve_gate(gate2, actor=approver, now=t0 + timedelta(hours=1))
    with pytest.raises(gates.GateConflict, match="sam's decision on gate"):
        actions.approve_gate(gate2, actor=tom, now=t0 + timedelta(hours=2))


def test_a_delegate_in_an_approval_group_approves_as_themselves_first(
    run_at_gate, second_approver, approver, t0
):
    """sara (sre) holds sam's delegation: her own approval is hers; she may then not add
    sam's on the same gate (one person decides once)."""
    create_delegation(
        actor=approver,
        delegate=second_approver,
        starts_at=t0,
        ends_at=t0 + timedelta(days=1),
        now=t0,
    )
    run, gate = run_at_gate(now=t0)
    own = actions.approve_gate(gate, actor=second_approver, now=t0)
    assert own.on_behalf_of is None
    with pytest.raises(gates.GateConflict, match="sara already approved"):
        actions.approve_gate(gate, actor=second_approver, now=t0, on_behalf_of=approver)


def test_naming_someone_who_gave_no_delegation_is_refused(run_at_gate, tom, second_approver, t0):
    run, gate = run_at_gate(now=t0)
    with pytest.raises(gates.GateRefused, match="holds no delegation from sara") as exc:
        actions.approve_gate(gate, actor=tom, now=t0, on_behalf_of=second_approver)
    assert exc.value.rule == "delegation"


def test_a_delegate_may_reject_for_the_delegator(run_at_gate, away, approver, tom, t0):
    run, gate = run_at_gate(now=t0)
    rejection = actions.reject_gate(gate, actor=tom, comment="not during the freeze", now=t0)
    assert rejection.on_behalf_of == approver
    gate.refresh_from_db()
    assert gate.status == GateStatus.REJECTED
    assert gate.reason == "rejected by tom for sam: not during the freeze"


# --- the inbox ----------------------------------------------------------------------------


def test_the_inbox_counts_delegated_gates(run_at_gate, away_now, approver, tom, t0):
    run, gate = run_at_gate(now=t0)
    assert list(Gate.objects.waiting_for(tom)) == [gate]
    assert list(Gate.objects.decidable_by(tom)) == [gate]
    actions.approve_gate(gate, actor=tom)
    assert not Gate.objects.waiting_for(tom).exists()
    assert not Gate.objects.waiting_for(approver).exists()  # his vote was cast


def test_the_inbox_forgets_delegated_gates_when_the_delegation_ends(
    run_at_gate, away_now, approver, tom, t0
):
    run, gate = run_at_gate(now=t0)
    assert Gate.objects.waiting_for(tom).exists()
    revoke_delegation(away_now, actor=approver)
    assert not Gate.objects.waiting_for(tom).exists()


def test_notifications_reach_the_delegate(run_at_gate, away_now, tom, t0):
    run, gate = run_at_gate(now=t0)
    from governance import notifications

    assert "tom@example.test" in notifications.recipients(gate, "waiting")


# --- creating and revoking ------------------------------------------------------------


def test_delegating_to_oneself_is_refused_and_audited(approver, t0):
    with pytest.raises(DelegationError, match="cannot delegate to themselves") as exc:
        create_delegation(
            actor=approver, delegate=approver, starts_at=t0, ends_at=t0 + timedelta(days=1), now=t0
        )
    assert exc.value.rule == "self-delegation"
    assert not Delegation.objects.exists()
    event = AuditEvent.objects.get(action="delegation.create")
    assert event.outcome == Outcome.DENIED and event.details["rule"] == "self-delegation"


def test_an_inverted_period_is_refused(approver, tom, t0):
    with pytest.raises(DelegationError, match="ends .* before it starts"):
        create_delegation(
            actor=approver, delegate=tom, starts_at=t0, ends_at=t0 - timedelta(hours=1), now=t0
        )


def test_a_period_in_the_past_is_refused(approver, tom, t0):
    with pytest.raises(DelegationError, match="end in the past"):
        create_delegation(
            actor=approver,
            delegate=tom,
            starts_at=t0 - timedelta(days=3),
            ends_at=t0 - timedelta(days=1),
            now=t0,
        )


def test_overlapping_periods_are_refused(away, approver, second_approver, t0):
    with pytest.raises(DelegationError, match="already delegates to tom .* overlaps") as exc:
        create_delegation(
            actor=approver,
            delegate=second_approver,
            starts_at=t0 + timedelta(days=6),
            ends_at=t0 + timedelta(days=10),
            now=t0,
        )
    assert exc.value.rule == "overlap"
    # Right after the first one ends is fine.
    create_delegation(
        actor=approver,
        delegate=second_approver,
        starts_at=t0 + timedelta(days=7),
        ends_at=t0 + timedelta(days=10),
        now=t0,
    )


def test_only_the_approver_or_an_administrator_delegates(approver, tom, second_approver, t0):
    with pytest.raises(DelegationError, match="may not delegate sam's approvals"):
        create_delegation(
            actor=tom,
            delegator=approver,
            delegate=tom,
            starts_at=t0,
            ends_at=t0 + timedelta(days=1),
            now=t0,
        )


def test_someone_who_approves_nowhere_has_nothing_to_delegate(tom, approver, t0):
    with pytest.raises(DelegationError, match="approves deployments nowhere"):
        create_delegation(
            actor=tom, delegate=approver, starts_at=t0, ends_at=t0 + timedelta(days=1), now=t0
        )


def test_only_the_delegator_revokes(away, tom, approver, t0):
    with pytest.raises(DelegationError, match="tom may not revoke"):
        revoke_delegation(away, actor=tom, now=t0)
    revoke_delegation(away, actor=approver, now=t0)
    with pytest.raises(DelegationError, match="already revoked"):
        revoke_delegation(away, actor=approver, now=t0)
    denied = AuditEvent.objects.filter(action="delegation.revoke", outcome=Outcome.DENIED)
    assert denied.count() == 2

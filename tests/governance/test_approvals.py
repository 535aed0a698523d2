"""Approvals: attribution to rules (one person counts once), separation of duties,
eligibility, duplicates, expiry and void-on-change."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from guardian.shortcuts import assign_perm

from governance import actions, gates
from governance.models import Approval, AuditEvent, GateStatus, Outcome
from orchestrator import actions as run_actions

from .conftest import NEEDS_TICKET, OUTSIDE_WINDOW, TWO_SRE

pytestmark = pytest.mark.django_db


# --- attribution (pure) ---------------------------------------------------------------------


def test_a_person_in_two_groups_fills_one_slot_where_it_is_needed():
    rules = [("sre", 2), ("security", 1)]
    # Both-groups first: the matching moves them to security when sre is covered by others.
    matched = gates.match_approvals(
        rules, [("both", {"sre", "security"}), ("sam", {"sre"}), ("sara", {"sre"})]
    )
    assert matched == {"both": "security", "sam": "sre", "sara": "sre"}


def test_a_person_in_two_groups_counts_once():
    matched = gates.match_approvals(
        [("sre", 2), ("security", 1)], [("both", {"sre", "security"}), ("sam", {"sre"})]
    )
    assert sorted(g for g in matched.values() if g) in (["security", "sre"], ["sre", "sre"])
    assert sum(1 for g in matched.values() if g) == 2  # 3 slots, only 2 people


def test_surplus_and_unrelated_approvals_fill_nothing():
    matched = gates.match_approvals(
        [("sre", 1)], [("sam", {"sre"}), ("sara", {"sre"}), ("vic", {"viewer"})]
    )
    assert matched == {"sam": "sre", "sara": None, "vic": None}


def test_attribution_is_a_maximum_matching_not_greedy():
    # Greedy (first come, first choice) would put x on a, then y (only a) fills nothing.
    rules = [("a", 1), ("b", 1)]
    matched = gates.match_approvals(rules, [("x", {"a", "b"}), ("y", {"a"})])
    assert matched == {"x": "b", "y": "a"}


# --- attribution on a gate -------------------------------------------------------------------


def test_two_sre_and_one_security_with_a_member_of_both_counted_once(
    run_at_gate, make_user, approver, second_approver, t0
):
    both = make_user("bo", "approver", "sre", "security")
    run, gate = run_at_gate(now=t0)
    actions.approve_gate(gate, actor=both, now=t0)
    actions.approve_gate(gate, actor=approver, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "waiting for approvals: 1 more from sre"

    actions.approve_gate(gate, actor=second_approver, now=t0)

    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    groups = dict(
        Approval.objects.filter(gate=gate).values_list("user__username", "attributed_group")
    )
    assert groups == {"bo": "security", "sam": "sre", "sara": "sre"}


# --- separation of duties --------------------------------------------------------------------


def refused(gate, actor, now) -> gates.GateRefused:
    with pytest.raises(gates.GateRefused) as info:
        actions.approve_gate(gate, actor=actor, comment="lgtm", now=now)
    return info.value


def test_the_person_who_triggered_the_run_may_not_approve_it(run_at_gate, approver, t0):
    run, gate = run_at_gate(actor=approver, now=t0)
    exc = refused(gate, approver, t0)
    assert exc.message == "separation of duties: sam triggered this run and may not approve it"
    assert exc.status_code == 403 and exc.rule == "separation-of-duties"
    assert not Approval.objects.filter(gate=gate).exists()
    event = AuditEvent.objects.get(action="gate.approve")
    assert event.outcome == Outcome.DENIED
    assert event.actor_name == "sam"
    assert event.details["rule"] == "separation-of-duties"
    assert event.details["message"] == exc.message


@pytest.mark.parametrize("author", ["sara", "SARA", " sara@example.test "])
def test_the_author_of_the_change_may_not_approve_it(run_at_gate, second_approver, author, t0):
    run, gate = run_at_gate(parameters={"author": author}, now=t0)
    exc = refused(gate, second_approver, t0)
    assert exc.message == (
        "separation of duties: sara is the author of the change (run parameter author) and may "
        "not approve it"
    )


def test_the_last_editor_of_the_pipeline_may_not_approve_its_runs(
    run_at_gate, pipeline, security_approver, t0
):
    definition = pipeline.current_version.definition.replace("echo deploy", "echo deploy v2")
    run_actions.update_pipeline(pipeline, actor=security_approver, definition=definition)
    pipeline.refresh_from_db()
    run, gate = run_at_gate(now=t0)
    exc = refused(gate, security_approver, t0)
    assert exc.message == (
        "separation of duties: sofia last edited the pipeline (version 2) and may not approve it"
    )


@pytest.mark.django_db(transaction=True)
def test_a_refused_self_approval_is_committed_to_the_audit_log(run_at_gate, approver, t0):
    run, gate = run_at_gate(actor=approver, now=t0)
    with pytest.raises(gates.GateRefused):
        actions.approve_gate(gate, actor=approver, now=t0)
    # No transaction is open any more: what we read below was committed.
    assert not transaction.get_connection().in_atomic_block
    denied = AuditEvent.objects.filter(action="gate.approve", outcome=Outcome.DENIED)
    assert denied.count() == 1
    assert not Approval.objects.exists()


# --- eligibility and state -------------------------------------------------------------------


@pytest.mark.parametrize("who", ["developer", "viewer", "policy_admin", "compliance_manager"])
def test_people_without_the_approve_permission_are_refused(request, gate, who, t0):
    user = request.getfixturevalue(who)
    exc = refused(gate, user, t0)
    assert exc.message == (
        f"{user.username} may not approve deployments to production: the approve permission on "
        f"the environment is missing"
    )


def test_a_permitted_user_outside_the_rule_groups_is_refused(gate, make_user, production, t0):
    lone = make_user("lone", "approver")
    assign_perm("governance.approve_environment", lone, production)
    exc = refused(gate, lone, t0)
    assert exc.message == "lone is not in an approval group of production (security, sre)"
    assert exc.rule == "eligibility"


def test_a_second_decision_by_the_same_user_is_a_conflict(gate, approver, t0):
    actions.approve_gate(gate, actor=approver, now=t0)
    with pytest.raises(gates.GateConflict) as info:
        actions.approve_gate(gate, actor=approver, now=t0)
    assert info.value.message == f"sam already approved gate {gate.pk}"
    assert info.value.status_code == 409
    assert Approval.objects.filter(gate=gate).count() == 1


def test_approving_a_decided_gate_is_refused_with_a_clear_message(gate, approvers, make_user, t0):
    for person in approvers:
        actions.approve_gate(gate, actor=person, now=t0)
    late = make_user("lena", "approver", "sre")
    with pytest.raises(gates.GateConflict) as info:
        actions.approve_gate(gate, actor=late, now=t0)
    assert info.value.message.startswith(f"gate {gate.pk} is already open")


def test_a_stale_view_cannot_be_approved(gate, approver, make_policy, t0):
    seen = gate.seen_hash
    make_policy("ticket", NEEDS_TICKET, "advisory")  # a new policy applies since
    with pytest.raises(gates.GateConflict) as info:
        actions.approve_gate(gate, actor=approver, now=t0, seen_hash=seen)
    assert "changed since you looked at it" in info.value.message
    actions.approve_gate(gate, actor=approver, now=t0, seen_hash=gates.current_seen_hash(gate, t0))


# --- expiry ----------------------------------------------------------------------------------


def test_approvals_expire_after_the_environment_ttl_and_the_gate_asks_again(
    gate, approver, second_approver, security_approver, t0
):
    first = actions.approve_gate(gate, actor=approver, now=t0)
    actions.approve_gate(gate, actor=second_approver, now=t0 + timedelta(hours=1))
    assert first.expires_at == t0 + timedelta(hours=24)

    stats = actions.housekeeping(now=t0 + timedelta(hours=24, seconds=1))

    assert stats["voided"] == 1
    first.refresh_from_db()
    assert first.void and first.void_reason == "expired after 24 h"
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "waiting for approvals: 1 more from security, 1 more from sre"
    assert AuditEvent.objects.filter(action="approval.void", target_id=str(first.pk)).exists()
    # Sam may approve again (the void approval is kept for the record).
    actions.approve_gate(gate, actor=approver, now=t0 + timedelta(hours=24, minutes=30))
    actions.approve_gate(gate, actor=security_approver, now=t0 + timedelta(hours=24, minutes=30))
    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    assert Approval.objects.filter(gate=gate, user=approver).count() == 2


def test_an_expired_approval_never_opens_a_gate(
    gate, approver, second_approver, security_approver, t0
):
    actions.approve_gate(gate, actor=approver, now=t0)
    actions.approve_gate(gate, actor=second_approver, now=t0)
    # No housekeeping ran; the last approval comes a day later: the check voids on the spot.
    actions.approve_gate(gate, actor=security_approver, now=t0 + timedelta(hours=30))
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "waiting for approvals: 2 more from sre"


def test_a_zero_ttl_means_approvals_do_not_expire(gate, production, approver, t0):
    production.approval_ttl_hours = 0
    production.save()
    approval = actions.approve_gate(gate, actor=approver, now=t0)
    assert approval.expires_at is None
    actions.housekeeping(now=t0 + timedelta(days=30))
    approval.refresh_from_db()
    assert not approval.void


# --- void on change --------------------------------------------------------------------------


def test_republishing_a_policy_voids_the_approvals_given_before(
    gate, make_policy, publish_version, approver, second_approver, security_approver, t0
):
    policy = make_policy("ticket", NEEDS_TICKET, "advisory")
    actions.recheck(gate.pk, now=t0)
    actions.approve_gate(gate, actor=approver, now=t0)
    actions.approve_gate(gate, actor=second_approver, now=t0)

    publish_version(policy, NEEDS_TICKET.replace("no change ticket", "ticket missing"))
    actions.approve_gate(gate, actor=security_approver, now=t0 + timedelta(minutes=1))

    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "waiting for approvals: 2 more from sre"
    void = Approval.objects.filter(gate=gate, void=True)
    assert set(void.values_list("user__username", flat=True)) == {"sam", "sara"}
    assert {a.void_reason for a in void} == {
        "what was approved changed: policy ticket was republished (v1 → v2)"
    }
    assert Approval.objects.get(gate=gate, void=False).user == security_approver


def test_a_change_window_that_opens_does_not_void_approvals(
    run_at_gate, production, make_policy, approvers, dispatched, t0
):
    production.timezone = "Europe/Berlin"
    production.change_windows = [{"days": [0, 1, 2, 3], "start": "08:00", "end": "18:00"}]
    production.save()
    make_policy("window", OUTSIDE_WINDOW, "soft-mandatory")
    early = t0.replace(hour=6)  # 07:00 in Berlin
    run, gate = run_at_gate(now=early)
    for person in approvers:
        actions.approve_gate(gate, actor=person, now=early)
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert gate.reason.startswith("soft-mandatory policy window: outside the change windows")

    actions.housekeeping(now=t0.replace(hour=7, minute=5))  # 08:05 in Berlin

    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    assert not Approval.objects.filter(gate=gate, void=True).exists()


def test_a_policy_that_counts_approvals_does_not_void_them(run_at_gate, make_policy, approvers, t0):
    make_policy("two-sre", TWO_SRE, "hard-mandatory")
    run, gate = run_at_gate(now=t0)
    for person in approvers:
        actions.approve_gate(gate, actor=person, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    assert not Approval.objects.filter(gate=gate, void=True).exists()

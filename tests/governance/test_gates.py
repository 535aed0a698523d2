"""The gate hook (governance.gates.check) driven through the real engine: creation, policy
evaluation by enforcement level, the decision log, the input document, freezes, cancel."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import jsonschema
import pytest

from governance import actions, audit, gates, rego
from governance.models import AuditEvent, Environment, Gate, GateStatus, PolicyDecision, Tier
from orchestrator import actions as run_actions
from orchestrator import events
from orchestrator.models import RunStatus, StageStatus

from .conftest import BRANCH_WARNING, BROKEN, FREEZE, NEEDS_TICKET, TWO_SRE

pytestmark = pytest.mark.django_db


def deploy_dispatches(run, dispatched) -> int:
    step_ids = set(run.stages.get(name="deploy-production").steps.values_list("pk", flat=True))
    return sum(1 for step_id, _, _ in dispatched if step_id in step_ids)


def approve_all(gate, people, now):
    for person in people:
        actions.approve_gate(gate, actor=person, now=now)
    gate.refresh_from_db()
    return gate


def test_a_gate_waits_for_its_approval_rules_and_opens_once_they_hold(
    run_at_gate, approvers, dispatched, django_capture_on_commit_callbacks, t0
):
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "waiting for approvals: 1 more from security, 2 more from sre"
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    assert run.stages.get(name="deploy-production").status == StageStatus.WAITING
    assert deploy_dispatches(run, dispatched) == 0
    created = AuditEvent.objects.get(action="gate.waiting", target_id=str(gate.pk))
    assert created.details["previous"] is None and created.details["environment"] == "production"

    with django_capture_on_commit_callbacks(execute=True):
        approve_all(gate, approvers, t0 + timedelta(minutes=5))

    assert gate.status == GateStatus.OPEN
    assert gate.decided_at == t0 + timedelta(minutes=5)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert run.stages.get(name="deploy-production").status == StageStatus.QUEUED
    assert deploy_dispatches(run, dispatched) == 1
    opened = AuditEvent.objects.get(action="gate.open", target_id=str(gate.pk))
    assert opened.actor_name == "sofia"  # the approval that opened it
    assert opened.details["required"] == [
        {"group": "security", "count": 1, "given": 1},
        {"group": "sre", "count": 2, "given": 2},
    ]
    assert audit.verify().ok


def test_the_input_document_follows_the_published_schema(run_at_gate, approver, t0):
    run, gate = run_at_gate(now=t0, parameters={"version": "2.0.0", "author": "erin"})
    actions.approve_gate(gate, actor=approver, comment="fine", now=t0 + timedelta(seconds=1.5))
    gate.refresh_from_db()
    doc = gate.input
    jsonschema.validate(doc, rego.INPUT_SCHEMA)
    assert doc["now"] == "2026-11-24T10:00:01.500000+00:00"
    assert doc["pipeline"] == {
        "slug": "payments-api",
        "name": "Payments API",
        "team": "payments",
        "version": 1,
    }
    assert doc["run"]["id"] == str(run.pk)
    assert doc["run"]["triggered_by"] == {
        "username": "dana",
        "groups": ["developer", "team-payments"],
    }
    assert doc["run"]["parameters"] == {"version": "2.0.0", "author": "erin"}
    assert doc["stage"] == {"name": "deploy-production", "environment": "production", "secrets": []}
    assert doc["previous_stages"] == [{"name": "build", "status": "succeeded", "environment": None}]
    assert doc["approvals"] == [
        {
            "username": "sam",
            "groups": ["approver", "sre"],
            "decision": "approve",
            "at": "2026-11-24T10:00:01.500000+00:00",
        }
    ]
    assert gate.input_hash == rego.input_hash(doc)


def test_freeze_and_change_windows_are_computed_in_the_environment_time_zone(
    run_at_gate, production, t0
):
    run, gate = run_at_gate(now=t0)
    production.timezone = "Europe/Berlin"
    production.freeze_windows = [
        {"start": "2026-12-20T00:00:00Z", "end": "2027-01-03T23:59:59+00:00", "reason": "year end"}
    ]
    # Mon-Thu 08:00-18:00 Berlin (UTC+1 in winter).
    production.change_windows = [{"days": [0, 1, 2, 3], "start": "08:00", "end": "18:00"}]
    production.save()
    stage = gate.stage_run
    stage.environment = Environment.objects.get(pk=production.pk)

    def flags(when):
        env = gates.build_input(stage, when)["environment"]
        return env["in_freeze"], env["in_change_window"]

    assert flags(t0) == (False, True)  # Tuesday 11:00 Berlin
    assert flags(t0.replace(hour=17, minute=30)) == (False, False)  # 18:30 Berlin
    assert flags(t0.replace(hour=6, minute=59)) == (False, False)  # 07:59 Berlin
    assert flags(t0.replace(hour=7, minute=0)) == (False, True)  # 08:00 Berlin
    assert flags(t0.replace(day=27)) == (False, False)  # a Friday
    assert flags(t0.replace(month=12, day=22)) == (True, True)  # Tuesday in the freeze
    doc = gates.build_input(stage, t0)
    assert doc["environment"]["freeze_windows"][0]["start"] == "2026-12-20T00:00:00+00:00"


def test_a_hard_mandatory_deny_blocks_the_gate_the_stage_and_the_run(
    run_at_gate, production, freezes_block, make_policy, dispatched, t0
):
    make_policy("freeze", FREEZE, "hard-mandatory")
    production.freeze_windows = [
        {"start": "2026-11-20T00:00:00+00:00", "end": "2026-11-30T00:00:00+00:00", "reason": "x"}
    ]
    production.save()

    run, gate = run_at_gate(now=t0)

    assert gate.status == GateStatus.BLOCKED
    assert gate.reason == "blocked by hard-mandatory policy freeze: frozen"
    run.refresh_from_db()
    assert run.status == RunStatus.BLOCKED
    assert run.reason == "stage deploy-production: blocked by hard-mandatory policy freeze: frozen"
    assert deploy_dispatches(run, dispatched) == 0
    decision = PolicyDecision.objects.get(gate=gate)
    assert (decision.result, decision.deny, decision.current) == ("deny", ["frozen"], True)
    assert decision.input_hash == gate.input_hash
    assert AuditEvent.objects.filter(action="gate.blocked", target_id=str(gate.pk)).exists()


def test_a_hard_deny_that_more_approvals_can_lift_waits_for_them(
    run_at_gate, make_policy, approvers, t0
):
    make_policy("two-sre", TWO_SRE, "hard-mandatory")
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING
    assert "two-sre: needs 2 sre approvals, has 0 (more approvals can lift it)" in gate.reason

    sam, sara, sofia = approvers
    actions.approve_gate(gate, actor=sam, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert "has 1" in gate.reason
    actions.approve_gate(gate, actor=sofia, now=t0)
    actions.approve_gate(gate, actor=sara, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    # The decisions that let it open are the current ones, and the older ones are kept.
    current = PolicyDecision.objects.get(gate=gate, current=True)
    assert current.result == "pass"
    assert PolicyDecision.objects.filter(gate=gate, current=False).count() >= 1


def test_a_hard_deny_nobody_left_can_lift_blocks(
    run_at_gate, make_policy, approver, second_approver, t0
):
    make_policy("two-sre", TWO_SRE, "hard-mandatory")
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING  # sam and sara could still approve
    # Sara leaves sre: nobody left could bring the second sre approval.
    second_approver.groups.remove(second_approver.groups.get(name="sre"))
    actions.recheck(gate.pk, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.BLOCKED


def test_a_soft_mandatory_deny_keeps_the_gate_waiting_even_when_approved(
    run_at_gate, make_policy, approvers, dispatched, t0
):
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    run, gate = run_at_gate(now=t0)
    approve_all(gate, approvers, t0)
    assert gate.status == GateStatus.WAITING
    assert gate.reason == "soft-mandatory policy ticket: no change ticket (an override can pass it)"
    assert deploy_dispatches(run, dispatched) == 0


def test_an_advisory_policy_only_warns(run_at_gate, make_policy, approvers, t0):
    make_policy("branch", BRANCH_WARNING, "advisory")
    make_policy("ticket", NEEDS_TICKET, "advisory")
    run, gate = run_at_gate(now=t0)
    approve_all(gate, approvers, t0)
    assert gate.status == GateStatus.OPEN
    results = dict(
        PolicyDecision.objects.filter(gate=gate, current=True).values_list(
            "policy_version__policy__name", "result"
        )
    )
    assert results == {"branch": "warn", "ticket": "deny"}


def test_a_policy_that_cannot_be_evaluated_fails_closed(run_at_gate, make_policy, t0):
    make_policy("broken", BROKEN, "hard-mandatory")
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.BLOCKED
    assert gate.reason.startswith(
        "blocked by hard-mandatory policy broken: policy broken could not"
    )
    assert PolicyDecision.objects.get(gate=gate).result == "error"


def test_policies_out_of_scope_disabled_or_unpublished_are_not_evaluated(
    run_at_gate, make_policy, staging, t0
):
    make_policy("elsewhere", FREEZE.replace("in_freeze", "protected"), environments=[staging])
    make_policy("off", NEEDS_TICKET, enabled=False)
    draft = make_policy("draft", NEEDS_TICKET)
    draft.current_version = None
    draft.save()
    make_policy("by-tier", BRANCH_WARNING, "advisory", environments=[], tiers=[Tier.PRODUCTION])
    run, gate = run_at_gate(now=t0)
    names = set(
        PolicyDecision.objects.filter(gate=gate).values_list(
            "policy_version__policy__name", flat=True
        )
    )
    assert names == {"by-tier"}


def test_re_evaluating_with_the_same_verdicts_adds_no_decision_rows(run_at_gate, make_policy, t0):
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    run, gate = run_at_gate(now=t0)
    assert PolicyDecision.objects.filter(gate=gate).count() == 1
    for minutes in (1, 2, 3):
        actions.recheck(gate.pk, now=t0 + timedelta(minutes=minutes))
    assert PolicyDecision.objects.filter(gate=gate).count() == 1
    gate.refresh_from_db()
    assert gate.input["now"] == rego.render_time(t0 + timedelta(minutes=3))
    # Only the first check was a transition: one audit row.
    assert AuditEvent.objects.filter(target_type="gate", target_id=str(gate.pk)).count() == 1


def test_a_freeze_that_starts_after_the_approvals_blocks_at_dispatch(
    run_at_gate,
    production,
    freezes_block,
    make_policy,
    approvers,
    dispatched,
    django_capture_on_commit_callbacks,
    t0,
):
    make_policy("freeze", FREEZE, "hard-mandatory")
    production.freeze_windows = [
        {
            "start": (t0 + timedelta(hours=1)).isoformat(),
            "end": (t0 + timedelta(hours=5)).isoformat(),
            "reason": "incident",
        }
    ]
    production.save()
    run, gate = run_at_gate(now=t0)
    sam, sara, sofia = approvers
    actions.approve_gate(gate, actor=sam, now=t0)
    actions.approve_gate(gate, actor=sara, now=t0)
    # The last approval arrives once the freeze began: the gate is re-evaluated right before
    # it would dispatch, and the freeze wins.
    with django_capture_on_commit_callbacks(execute=True):
        actions.approve_gate(gate, actor=sofia, now=t0 + timedelta(hours=2))
    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == GateStatus.BLOCKED
    assert run.status == RunStatus.BLOCKED
    assert deploy_dispatches(run, dispatched) == 0


def test_a_freeze_blocks_a_gate_that_waits_for_an_override(
    run_at_gate, production, freezes_block, make_policy, approvers, t0
):
    make_policy("freeze", FREEZE, "hard-mandatory")
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    production.freeze_windows = [
        {
            "start": (t0 + timedelta(hours=1)).isoformat(),
            "end": (t0 + timedelta(hours=5)).isoformat(),
            "reason": "incident",
        }
    ]
    production.save()
    run, gate = run_at_gate(now=t0)
    approve_all(gate, approvers, t0)
    assert gate.status == GateStatus.WAITING
    actions.housekeeping(now=t0 + timedelta(hours=2))
    gate.refresh_from_db()
    assert gate.status == GateStatus.BLOCKED


def test_without_rules_or_policies_a_protected_gate_opens_at_once(
    make_pipeline, make_run, finish_stage, staging, dispatched, t0
):
    staging.protected = True
    staging.save()
    definition = textwrap.dedent(
        """\
        name: Claims
        stages:
          - name: build
            steps: [{name: b, run: "true"}]
          - name: deploy
            needs: [build]
            environment: staging
            steps: [{name: d, run: "true"}]
        """
    )
    pipeline = make_pipeline("claims", definition=definition)
    run = make_run(pipeline, now=t0)
    finish_stage(run, "build", now=t0)
    gate = Gate.objects.get(stage_run__run=run)
    assert (gate.status, gate.reason) == (GateStatus.OPEN, "policies passed; no approval required")
    assert run.stages.get(name="deploy").status == StageStatus.QUEUED


def test_canceling_the_run_expires_its_waiting_gate(run_at_gate, developer, t0):
    run, gate = run_at_gate(now=t0)
    run_actions.cancel_run(run, actor=developer, now=t0 + timedelta(minutes=1))
    gate.refresh_from_db()
    assert (gate.status, gate.reason) == (GateStatus.EXPIRED, "run canceled")
    assert AuditEvent.objects.filter(action="gate.expired", target_id=str(gate.pk)).exists()


def test_a_gate_whose_stage_was_skipped_expires_at_housekeeping(
    make_pipeline, make_run, finish_stage, environments, t0
):
    definition = textwrap.dedent(
        """\
        name: Payments API
        stages:
          - name: build
            steps: [{name: b, run: "true"}]
          - name: e2e-tests
            needs: [build]
            steps: [{name: t, run: "true"}]
          - name: deploy-production
            needs: [build]
            environment: production
            steps: [{name: d, run: "true"}]
        """
    )
    run = make_run(make_pipeline("payments-e2e", definition=definition), now=t0)
    finish_stage(run, "build", now=t0)
    gate = Gate.objects.get(stage_run__run=run)
    assert gate.status == GateStatus.WAITING
    finish_stage(run, "e2e-tests", succeeded=False, now=t0)
    assert run.stages.get(name="deploy-production").status == StageStatus.SKIPPED

    actions.housekeeping(now=t0 + timedelta(minutes=1))

    gate.refresh_from_db()
    assert gate.status == GateStatus.EXPIRED
    assert "ended (failed)" in gate.reason


def test_one_gate_updated_per_gate_transition(
    run_at_gate,
    approver,
    second_approver,
    security_approver,
    monkeypatch,
    t0,
    django_capture_on_commit_callbacks,
):
    """Each transaction that changes a gate announces it once, with its final state: the
    check that creates it, an approval that leaves it waiting, the approval that opens it
    (which also re-evaluates it in the same transaction)."""
    sent = []
    monkeypatch.setattr(events.sender, "send", lambda group, message: sent.append(message))

    def gate_events():
        found = []
        for message in sent:
            batch = message.get("events") or [message["event"]]
            found += [
                (e["data"]["id"], e["data"]["status"]) for e in batch if e["type"] == "gate.updated"
            ]
        sent.clear()
        return found

    with django_capture_on_commit_callbacks(execute=True):
        run, gate = run_at_gate(now=t0)
    assert gate_events() == [(gate.pk, GateStatus.WAITING)]
    for user in (approver, second_approver):
        with django_capture_on_commit_callbacks(execute=True):
            actions.approve_gate(gate, actor=user, now=t0)
        assert gate_events() == [(gate.pk, GateStatus.WAITING)]
    with django_capture_on_commit_callbacks(execute=True):
        actions.approve_gate(gate, actor=security_approver, now=t0)
    assert gate_events() == [(gate.pk, GateStatus.OPEN)]


def test_a_misconfigured_environment_fails_closed_and_says_what_to_fix(
    run_at_gate, production, approvers, t0
):
    production.freeze_windows = [{"start": "next tuesday", "end": "2026-12-01T00:00:00+00:00"}]
    production.save()
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING
    assert gate.reason.startswith("cannot evaluate the policies: environment production is")
    with pytest.raises(gates.GateConflict) as info:
        actions.approve_gate(gate, actor=approvers[0], now=t0)
    assert info.value.message.startswith(f"gate {gate.pk} cannot be evaluated: environment")
    production.freeze_windows = []
    production.save()
    approve_all(gate, approvers, t0)
    assert gate.status == GateStatus.OPEN

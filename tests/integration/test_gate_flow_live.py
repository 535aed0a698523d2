"""Gates that keep moving, on PostgreSQL with a real prefork worker.

A run reaches a production gate through the worker; then the gate housekeeping task
(clearway.gate_housekeeping), queued from the test and run by the worker on its own clock,
moves it on. The worker cannot be given a clock, so time is made to pass by backdating the
gate's created_at (an SLA of a minute, a maximum wait of a day) or by placing a freeze window
around the real present and then moving it into the past:

- a rule past its SLA escalates to its backup group (a GateEscalation and a gate.escalate
  audit row; the backup approver's inbox lists the gate and their approval fills the rule);
- a gate waiting past the environment's maximum is rejected by the system, with the reason
  and an audit row, and the run is blocked;
- a freeze pauses a waiting gate ("frozen until …"), approvals are taken meanwhile, and the
  gate opens and the stage deploys once the freeze has ended;
- the inbox (API and navigation badge) counts only the gates the approver can still act on:
  not the run they triggered, not a gate they already approved."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from governance.models import (
    ApprovalRule,
    AuditEvent,
    Environment,
    Gate,
    GateEscalation,
    GateStatus,
    Outcome,
    Tier,
)
from orchestrator import actions
from orchestrator.kernel.queue import enqueue
from orchestrator.models import RunStatus

from .conftest import wait_for
from .test_engine_live import _pipeline, _user, _wait_run

pytestmark = pytest.mark.integration

DEFINITION = """
name: gated rollout
stages:
  - name: build
    steps:
      - name: compile
        run: echo build
  - name: deploy
    needs: [build]
    environment: prod-flow
    steps:
      - name: rollout
        run: echo "rolling out"
"""


def _approver(name: str, *groups: Group) -> User:
    user, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@it.test"})
    user.groups.add(Group.objects.get(name="approver"), *groups)
    return user


@pytest.fixture
def world(live_db):
    """prod-flow: one approval from it-sec, whose rule escalates to it-backup after its SLA."""
    env, _ = Environment.objects.get_or_create(
        name="prod-flow", defaults={"tier": Tier.PRODUCTION, "protected": True}
    )
    sec, _ = Group.objects.get_or_create(name="it-sec")
    backup, _ = Group.objects.get_or_create(name="it-backup")
    rule, _ = ApprovalRule.objects.get_or_create(
        environment=env, group=sec, defaults={"required_count": 1}
    )
    for group in (sec, backup):
        assign_perm("governance.approve_environment", group, env)
    return {
        "env": env,
        "rule": rule,
        "sam": _approver("it-sam", sec),
        "pat": _approver("it-pat", sec),
        "bob": _approver("it-bob", backup),
        "backup": backup,
    }


def _run_at_gate(pipeline, actor=None):
    run = actions.trigger_run(pipeline, actor=actor or _user(), trigger="api")
    _wait_run(run, {RunStatus.WAITING, RunStatus.FAILED})
    assert run.status == RunStatus.WAITING, run.reason
    return run, Gate.objects.get(stage_run__run=run)


def _backdate(gate: Gate, **delta) -> None:
    Gate.objects.filter(pk=gate.pk).update(created_at=timezone.now() - timedelta(**delta))


def _housekeeping_by_the_worker() -> None:
    """Queue the beat's task and wait until the worker has run it."""
    result = enqueue("clearway.gate_housekeeping", ignore_result=False)
    wait_for(result.ready, 60, what="the worker to run the gate housekeeping")
    assert result.successful(), result.result


def _api(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def _inbox(user) -> list[int]:
    body = _api(user).get("/api/v1/gates/?status=waiting").json()
    assert body["count"] == len(body["results"])
    return [g["id"] for g in body["results"]]


def _badge(user) -> int:
    page = Client()
    page.force_login(user)
    html = page.get("/approvals/count/").content.decode()
    return int(re.search(r'id="inbox-badge"[^>]*data-count="(\d+)"', html).group(1))


def test_a_rule_past_its_sla_escalates_to_its_backup_group(world, worker):
    ApprovalRule.objects.filter(pk=world["rule"].pk).update(
        sla_minutes=1, backup_group=world["backup"]
    )
    run, gate = _run_at_gate(_pipeline(DEFINITION))
    bob = world["bob"]
    _housekeeping_by_the_worker()  # within the SLA: nothing
    assert not GateEscalation.objects.filter(gate=gate).exists()
    assert gate.pk not in _inbox(bob)

    _backdate(gate, minutes=2)
    _housekeeping_by_the_worker()
    escalation = GateEscalation.objects.get(gate=gate)
    assert (escalation.group.name, escalation.backup_group.name) == ("it-sec", "it-backup")
    event = AuditEvent.objects.get(action="gate.escalate", target_id=str(gate.pk))
    assert (event.details["group"], event.details["backup_group"]) == ("it-sec", "it-backup")
    assert event.actor_name == "system"

    assert gate.pk in _inbox(bob)  # shown to the backup group
    response = _api(bob).post(f"/api/v1/gates/{gate.pk}/approve/", {}, format="json")
    assert response.status_code == 200, response.json()
    (row,) = response.json()["approvals"]
    assert (row["user"], row["group"]) == ("it-bob", "it-sec")  # fills the escalated rule
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    _housekeeping_by_the_worker()
    assert GateEscalation.objects.filter(gate=gate).count() == 1  # once per rule


def test_a_gate_waiting_past_the_maximum_is_rejected_by_the_system(world, worker):
    Environment.objects.filter(pk=world["env"].pk).update(max_wait_days=1)
    run, gate = _run_at_gate(_pipeline(DEFINITION))
    _backdate(gate, hours=23)
    _housekeeping_by_the_worker()
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING

    _backdate(gate, days=1, minutes=1)
    _housekeeping_by_the_worker()
    gate.refresh_from_db()
    assert gate.status == GateStatus.REJECTED
    assert gate.reason.startswith("rejected by the system: no decision within 1 days")
    assert "(the maximum wait of prod-flow)" in gate.reason
    _wait_run(run, {RunStatus.BLOCKED})
    event = AuditEvent.objects.get(action="gate.rejected", target_id=str(gate.pk))
    assert event.actor_name == "system" and event.details["timed_out"] is True
    assert event.outcome == Outcome.SUCCESS
    assert gate.pk not in _inbox(world["sam"])
    response = _api(world["sam"]).post(f"/api/v1/gates/{gate.pk}/approve/", {}, format="json")
    assert response.status_code in (403, 409), response.json()


FREEZE_SECONDS = 30


def _freeze(env: Environment, start, end) -> None:
    Environment.objects.filter(pk=env.pk).update(
        freeze_windows=[
            {"start": start.isoformat(), "end": end.isoformat(), "reason": "year-end freeze"}
        ]
    )


def test_a_freeze_pauses_a_waiting_gate_and_it_resumes_after(world, worker):
    run, gate = _run_at_gate(_pipeline(DEFINITION))
    assert "waiting for approvals" in gate.reason
    # The freeze ends FREEZE_SECONDS from now on the real clock: the window is not edited
    # afterwards, since an edited window changes the gate's input and voids its approvals.
    now = timezone.now()
    end = now + timedelta(seconds=FREEZE_SECONDS)
    _freeze(world["env"], now - timedelta(minutes=1), end)
    _housekeeping_by_the_worker()
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert gate.reason.startswith("frozen until "), gate.reason
    assert "(year-end freeze): the gate waits and resumes when the freeze ends" in gate.reason

    response = _api(world["sam"]).post(f"/api/v1/gates/{gate.pk}/approve/", {}, format="json")
    assert response.status_code == 200, response.json()  # approvals are taken meanwhile
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING and gate.reason.startswith("frozen until ")
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    assert timezone.now() < end, "the machine was too slow to see the freeze"

    def resumed():
        _housekeeping_by_the_worker()
        gate.refresh_from_db()
        return gate.status != GateStatus.WAITING

    wait_for(resumed, FREEZE_SECONDS + 60, interval=2, what="the gate to resume")
    assert gate.status == GateStatus.OPEN, gate.reason
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.SUCCEEDED, run.reason


def test_the_inbox_counts_only_gates_the_approver_can_still_act_on(world, worker):
    ApprovalRule.objects.filter(pk=world["rule"].pk).update(required_count=2)
    sam, pat = world["sam"], world["pat"]
    pipeline = _pipeline(DEFINITION)
    theirs, gate = _run_at_gate(pipeline)
    mine, own_gate = _run_at_gate(pipeline, actor=sam)  # sam triggered it: not his to approve

    assert sorted(_inbox(pat)) == sorted([gate.pk, own_gate.pk]) and _badge(pat) == 2
    assert _inbox(sam) == [gate.pk] and _badge(sam) == 1

    response = _api(sam).post(f"/api/v1/gates/{gate.pk}/approve/", {}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == GateStatus.WAITING  # one more from it-sec
    assert _inbox(sam) == [] and _badge(sam) == 0  # decided by him
    assert sorted(_inbox(pat)) == sorted([gate.pk, own_gate.pk]) and _badge(pat) == 2
    for run in (theirs, mine):
        actions.cancel_run(run, actor=_user())

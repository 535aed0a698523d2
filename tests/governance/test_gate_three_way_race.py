"""Approve racing reject racing cancel on one gate (PostgreSQL): one final state, one
consistent audit trail, the stage dispatched at most once."""

from __future__ import annotations

import pytest
from django.conf import settings

from governance import actions, audit, gates, notifications
from governance.models import AuditEvent, GateStatus
from orchestrator import actions as run_actions
from orchestrator.models import RunStatus

from .test_gate_concurrency import deploy_dispatches, race

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
        reason="needs PostgreSQL (DATABASE_URL)",
    ),
]


@pytest.fixture(autouse=True)
def quiet_notifications(monkeypatch):
    monkeypatch.setattr(notifications, "schedule", lambda gate, kind: None)


@pytest.mark.parametrize("order", range(3))
def test_approve_reject_cancel_race_ends_in_one_state(
    run_at_gate,
    approver,
    second_approver,
    security_approver,
    make_user,
    developer,
    dispatched,
    order,
    t0,
):
    sid = make_user("sid", "approver", "security")
    run, gate = run_at_gate(now=t0)
    actions.approve_gate(gate, actor=approver, now=t0)
    actions.approve_gate(gate, actor=second_approver, now=t0)
    jobs = [
        lambda: actions.approve_gate(gate, actor=security_approver, now=t0),
        lambda: actions.reject_gate(gate, actor=sid, comment="stop", now=t0),
        lambda: run_actions.cancel_run(run, actor=developer, now=t0),
    ]
    jobs = jobs[order:] + jobs[:order]
    results = race(jobs)
    winners = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(e, gates.GateConflict | run_actions.ActionError) for e in errors), errors
    assert winners, results
    gate.refresh_from_db()
    run.refresh_from_db()
    trail = list(
        AuditEvent.objects.filter(target_id=str(gate.pk), target_type="gate")
        .exclude(outcome="denied")
        .values_list("action", flat=True)
    )
    final = {GateStatus.OPEN, GateStatus.REJECTED, GateStatus.EXPIRED}
    assert gate.status in final
    assert sum(a in ("gate.open", "gate.rejected", "gate.expired") for a in trail) == 1, trail
    if gate.status == GateStatus.OPEN:
        # the approval won; a cancel that came after it still stops the run
        assert deploy_dispatches(run, dispatched) <= 1
        assert run.status in (RunStatus.RUNNING, RunStatus.CANCELED)
    elif gate.status == GateStatus.REJECTED:
        assert run.status == RunStatus.BLOCKED
        assert deploy_dispatches(run, dispatched) == 0
    else:
        assert run.status == RunStatus.CANCELED
        assert deploy_dispatches(run, dispatched) == 0
    assert audit.verify().ok

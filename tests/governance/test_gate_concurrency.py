"""Racing gate decisions on PostgreSQL (SQLite ignores SELECT ... FOR UPDATE).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/clearway_gates \\
        .venv/bin/pytest -m integration tests/governance/test_gate_concurrency.py

Every thread has its own database connection (Django's are per thread) and closes it at the
end. Step dispatch is recorded (the `dispatched` fixture), never sent to Celery.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.conf import settings
from django.db import connection

from governance import actions, audit, gates, notifications
from governance.models import Approval, AuditEvent, GateStatus
from orchestrator.models import RunStatus, StageStatus

from .conftest import BRANCH_WARNING

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


def race(jobs) -> list:
    """Start every job at the same moment, each in its own thread with its own connection;
    return what each returned or raised."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run(i, job):
        try:
            barrier.wait(10)
            results[i] = job()
        except Exception as exc:  # collected and asserted on below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    return results


def deploy_dispatches(run, dispatched) -> int:
    steps = set(run.stages.get(name="deploy-production").steps.values_list("pk", flat=True))
    return sum(1 for step_id, _, _ in dispatched if step_id in steps)


def test_twenty_approvals_at_once_open_the_gate_once_and_dispatch_once(
    run_at_gate, make_user, make_policy, dispatched, t0
):
    make_policy("branch", BRANCH_WARNING, "advisory")  # the evaluator pool is in the race too
    sre = [make_user(f"sre{i}", "approver", "sre") for i in range(5)]
    security = [make_user(f"sec{i}", "approver", "security") for i in range(2)]
    people = sre + security
    run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.WAITING

    def approve(person):
        return lambda: actions.approve_gate(gate, actor=person, now=t0)

    jobs = [approve(people[i % len(people)]) for i in range(20)]
    results = race(jobs)

    errors = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(e, gates.GateConflict) for e in errors), errors
    approvals = Approval.objects.filter(gate=gate)
    per_user = Counter(approvals.values_list("user__username", flat=True))
    assert max(per_user.values()) == 1
    assert len(results) - len(errors) == approvals.count() >= 3
    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    assert AuditEvent.objects.filter(action="gate.open", target_id=str(gate.pk)).count() == 1
    assert run.stages.get(name="deploy-production").status == StageStatus.QUEUED
    assert deploy_dispatches(run, dispatched) == 1
    assert AuditEvent.objects.filter(action="gate.approve").count() == approvals.count()
    assert audit.verify().ok


@pytest.mark.parametrize("attempt", range(4))
def test_an_approval_racing_a_rejection_ends_in_one_consistent_state(
    run_at_gate, approver, second_approver, security_approver, make_user, dispatched, attempt, t0
):
    sid = make_user("sid", "approver", "security")
    run, gate = run_at_gate(now=t0)
    actions.approve_gate(gate, actor=approver, now=t0)
    actions.approve_gate(gate, actor=second_approver, now=t0)
    # The last approval needed and a rejection, at the same moment.
    jobs = [
        lambda: actions.approve_gate(gate, actor=security_approver, now=t0),
        lambda: actions.reject_gate(gate, actor=sid, comment="not during the incident", now=t0),
    ]
    if attempt % 2:
        jobs.reverse()
    results = race(jobs)

    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], gates.GateConflict), results
    gate.refresh_from_db()
    run.refresh_from_db()
    stage = run.stages.get(name="deploy-production")
    opened = AuditEvent.objects.filter(action="gate.open", target_id=str(gate.pk)).count()
    rejected = AuditEvent.objects.filter(action="gate.rejected", target_id=str(gate.pk)).count()
    if gate.status == GateStatus.OPEN:
        assert (opened, rejected) == (1, 0)
        assert run.status == RunStatus.RUNNING and stage.status == StageStatus.QUEUED
        assert deploy_dispatches(run, dispatched) == 1
        assert not AuditEvent.objects.filter(action="gate.reject").exists()
    else:
        assert gate.status == GateStatus.REJECTED
        assert (opened, rejected) == (0, 1)
        assert run.status == RunStatus.BLOCKED and stage.status == StageStatus.BLOCKED
        assert deploy_dispatches(run, dispatched) == 0
        assert AuditEvent.objects.filter(action="gate.approve").count() == 2
    assert audit.verify().ok

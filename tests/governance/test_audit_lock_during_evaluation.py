"""An approval evaluates the gate's policies (up to the policy timeout) in the middle of its
transaction. The audit chain head — which every audited change in the installation takes —
must not be held meanwhile: the transition writes its audit rows at its end.

PostgreSQL only (SQLite has no row locks); two connections, one per thread."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.db import connection, transaction

from governance import actions, audit, gates, notifications
from governance.models import AuditEvent

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


def test_another_transaction_appends_to_the_audit_log_while_an_approval_evaluates(
    run_at_gate, approver, make_policy, monkeypatch, t0
):
    make_policy("branch", BRANCH_WARNING, "advisory")  # one real policy evaluates
    run, gate = run_at_gate(now=t0)
    evaluating, release = threading.Event(), threading.Event()
    real_evaluate = gates._evaluate

    def slow_evaluate(versions, doc):
        # The approval's transaction is now inside its policy evaluation: a slow policy.
        evaluating.set()
        assert release.wait(30), "the other transaction never finished"
        return real_evaluate(versions, doc)

    monkeypatch.setattr(gates, "_evaluate", slow_evaluate)
    outcome: dict = {}

    def approve():
        try:
            outcome["approval"] = actions.approve_gate(gate, actor=approver, now=t0)
        except Exception as exc:  # asserted below
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=approve)
    thread.start()
    try:
        assert evaluating.wait(30), "the approval never reached the policy evaluation"
        # A second connection: an unrelated audited change, with a lock timeout so that a
        # held chain head fails the test instead of hanging it.
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '3s'")
            audit.record(None, "test.unrelated", None)
        appended_while_evaluating = AuditEvent.objects.filter(action="test.unrelated").exists()
    finally:
        release.set()
        thread.join(60)
    assert appended_while_evaluating
    assert "error" not in outcome, outcome.get("error")
    assert audit.verify().ok
    # The approval's own rows come after the unrelated one: they were appended at its end.
    order = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert order.index("test.unrelated") < order.index("gate.approve")

"""Gate notifications: email to the eligible approvers, a Slack-compatible webhook, reminders,
decisions; a failing webhook is retried and never touches the gate."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from django.core import mail

from governance import actions
from governance.models import AuditEvent, GateStatus, Outcome
from governance.tasks import notify_gate_webhook

from .conftest import FREEZE

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook():
    """A chat webhook on 127.0.0.1 that records JSON bodies and answers `status["code"]`."""
    received: list[dict] = []
    status = {"code": 500}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"null"))
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(
        url=f"http://127.0.0.1:{server.server_port}/hook", received=received, status=status
    )
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def notified(celery_eager, django_capture_on_commit_callbacks):
    """Run the after-commit callbacks (and so the Celery tasks, eagerly) of a block."""

    def run():
        return django_capture_on_commit_callbacks(execute=True)

    return run


def to(message) -> str:
    return message.to[0]


def test_a_waiting_gate_emails_its_eligible_approvers_once(
    run_at_gate, approvers, make_user, outsider, notified, t0
):
    tom = make_user("tom", "approver", "sre")  # an approver who triggers: excluded
    with notified():
        run, gate = run_at_gate(actor=tom, now=t0)
    assert sorted(to(m) for m in mail.outbox) == [
        "sam@example.test",
        "sara@example.test",
        "sofia@example.test",
    ]
    message = mail.outbox[0]
    assert message.subject == "[Clearway] payments-api #1 → production waits for your approval"
    assert "Run: #1, triggered by tom" in message.body
    assert "Reason: waiting for approvals: 1 more from security, 2 more from sre" in message.body
    assert f"http://127.0.0.1:8000/gates/{gate.pk}/" in message.body
    gate.refresh_from_db()
    assert gate.notified_at == t0

    mail.outbox.clear()
    with notified():
        actions.recheck(gate.pk, now=t0 + timedelta(minutes=1))
        actions.approve_gate(gate, actor=approvers[0], now=t0 + timedelta(minutes=2))
    assert mail.outbox == []  # still waiting: no second notice


def test_the_webhook_gets_a_slack_compatible_body(
    run_at_gate, approvers, production, webhook, notified, t0
):
    webhook.status["code"] = 200
    production.notify_webhook_url = webhook.url
    production.save()
    with notified():
        run, gate = run_at_gate(now=t0)
    assert len(webhook.received) == 1
    body = webhook.received[0]
    assert set(body) == {"text"}
    assert body["text"].startswith("payments-api #1 → production waits for your approval")
    assert f"<http://127.0.0.1:8000/gates/{gate.pk}/|open the gate>" in body["text"]


def test_a_failing_webhook_is_retried_then_audited_and_the_gate_is_unaffected(
    run_at_gate, approvers, production, webhook, notified, t0
):
    production.notify_webhook_url = webhook.url
    production.save()
    with notified():
        run, gate = run_at_gate(now=t0)

    assert len(webhook.received) == 1 + notify_gate_webhook.max_retries
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING
    assert len(mail.outbox) == 3  # email is a separate task and went out
    failure = AuditEvent.objects.get(action="notification.failed")
    assert failure.outcome == Outcome.FAILURE
    assert failure.target_id == str(gate.pk)
    assert failure.details == {
        "channel": "webhook",
        "kind": "waiting",
        "error": "webhook of production answered HTTP 500",
    }
    # The gate keeps working.
    for person in approvers:
        actions.approve_gate(gate, actor=person, now=t0)
    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN


def test_an_unreachable_webhook_fails_the_same_way(
    run_at_gate, approvers, production, notified, t0
):
    production.notify_webhook_url = "http://127.0.0.1:9/hook"  # discard port: refused
    production.save()
    with notified():
        run, gate = run_at_gate(now=t0)
    assert AuditEvent.objects.filter(action="notification.failed").count() == 1
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING


def test_a_reminder_goes_out_once_after_the_reminder_delay(gate, approvers, notified, t0):
    with notified():
        actions.housekeeping(now=t0 + timedelta(minutes=59))
    assert mail.outbox == []
    with notified():
        stats = actions.housekeeping(now=t0 + timedelta(minutes=61))
    assert stats["reminded"] == 1
    assert len(mail.outbox) == 3
    assert mail.outbox[0].subject.startswith("[Clearway] Reminder: payments-api #1")
    gate.refresh_from_db()
    assert gate.reminded_at == t0 + timedelta(minutes=61)
    with notified():
        actions.housekeeping(now=t0 + timedelta(minutes=200))
    assert len(mail.outbox) == 3


def test_the_decision_is_announced_to_approvers_and_the_person_who_triggered(
    gate, approvers, notified, t0
):
    with notified():
        for person in approvers:
            actions.approve_gate(gate, actor=person, now=t0)
    subjects = {(to(m), m.subject) for m in mail.outbox}
    assert (
        "dana@example.test",
        "[Clearway] payments-api #1 → production was approved; the gate is open",
    ) in subjects
    assert len(subjects) == 4


def test_a_rejection_is_announced(gate, approvers, notified, t0):
    with notified():
        actions.reject_gate(gate, actor=approvers[0], comment="not today", now=t0)
    rejected = [m for m in mail.outbox if "was rejected" in m.subject]
    assert sorted(to(m) for m in rejected) == [
        "dana@example.test",
        "sam@example.test",
        "sara@example.test",
        "sofia@example.test",
    ]
    assert "Reason: rejected by sam: not today" in rejected[0].body


def test_a_gate_blocked_at_once_is_announced(
    run_at_gate, production, freezes_block, make_policy, approvers, notified, t0
):
    make_policy("freeze", FREEZE, "hard-mandatory")
    production.freeze_windows = [
        {"start": "2026-11-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00", "reason": "x"}
    ]
    production.save()
    with notified():
        run, gate = run_at_gate(now=t0)
    assert gate.status == GateStatus.BLOCKED
    assert {m.subject for m in mail.outbox} == {
        "[Clearway] payments-api #1 → production was blocked by policy"
    }
    assert "dana@example.test" in {to(m) for m in mail.outbox}


def test_a_waiting_notice_for_a_gate_decided_meanwhile_is_dropped(gate, approvers, t0):
    from governance import notifications

    for person in approvers:
        actions.approve_gate(gate, actor=person, now=t0)
    assert notifications.send_email(gate.pk, "waiting") == 0
    assert notifications.send_email(gate.pk + 1000, "waiting") == 0  # gone: quietly nothing


def test_who_may_override_hears_of_a_gate_held_by_a_soft_denial(
    run_at_gate, make_policy, make_user, production, approvers, notified, t0
):
    from guardian.shortcuts import assign_perm

    from .conftest import NEEDS_TICKET

    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    oncall = make_user("otto", "oncall")
    assign_perm("governance.override_environment", oncall, production)
    assign_perm("orchestrator.view_pipeline", oncall)
    with notified():
        run_at_gate(now=t0)
    assert "otto@example.test" in {to(m) for m in mail.outbox}

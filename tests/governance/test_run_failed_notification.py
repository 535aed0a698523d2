"""A run that passed the gate of a protected environment and then failed is told to that
environment's channels (a generic JSON webhook on a local HTTPS receiver here) and to the
person who triggered it — not to the approvers; a failure before any gate passed is not."""

from __future__ import annotations

import json

import pytest
from django.core import mail

from governance.models import NotificationChannel, NotificationDelivery
from orchestrator.models import RunStatus

from . import test_notification_channels as kit

receiver, notified = kit.receiver, kit.notified  # the local receivers' fixtures

pytestmark = pytest.mark.django_db


def test_a_failed_run_past_a_protected_gate_is_told_to_the_channel_and_the_triggerer(
    run_at_gate,
    approvers,
    production,
    finish_stage,
    receiver,
    notified,
    t0,
):
    NotificationChannel.objects.create(
        environment=production,
        name="prod-alerts",
        url=f"jsons://127.0.0.1:{receiver.port}/alerts",
        events=["run_failed"],
    )
    from governance import actions

    run, gate = run_at_gate(now=t0)
    for person in approvers:
        actions.approve_gate(gate, actor=person, now=t0)
    mail.outbox.clear()
    with notified():
        run = finish_stage(run, "deploy-production", succeeded=False, now=t0)
    assert run.status == RunStatus.FAILED

    (hook,) = receiver.to("127.0.0.1", "/alerts")
    body = json.loads(hook["body"])
    assert body["title"] == (
        "[Clearway] payments-api #1 → production failed after passing its gate"
    )
    assert "Run status: failed (stage deploy-production: step" in body["message"]
    row = NotificationDelivery.objects.get(kind="run_failed")
    assert row.status == "sent" and row.gate_id == gate.pk
    # E-mail: the triggerer (dana), not the approvers.
    assert [m.to for m in mail.outbox] == [["dana@example.test"]]
    assert "failed after passing its gate" in mail.outbox[0].subject


def test_a_run_that_fails_before_any_gate_is_not_told(
    make_run,
    finish_stage,
    production,
    receiver,
    notified,
):
    NotificationChannel.objects.create(
        environment=production, name="prod-alerts", url=f"jsons://127.0.0.1:{receiver.port}/a"
    )
    run = make_run()
    with notified():
        run = finish_stage(run, "build", succeeded=False)
    assert run.status == RunStatus.FAILED
    assert not NotificationDelivery.objects.filter(kind="run_failed").exists()
    assert receiver.to("127.0.0.1", "/a") == []

"""'A governance change request waits for you' goes through apprise like a gate's notices:
to the channels that want it (all-environment ones for a policy's change, plus the
environment's own for an environment's change) and to each reviewer's personal URL — never to
the proposer, and not once the request was decided."""

from __future__ import annotations

import json

import pytest

from governance import change_requests, notifications, policies
from governance.models import NotificationChannel, NotificationDelivery, NotificationPreference

from . import test_notification_channels as kit
from .test_change_requests import CASES, SOURCE, SOURCE_V2

receiver, notified = kit.receiver, kit.notified  # the local receivers' fixtures

pytestmark = pytest.mark.django_db


@pytest.fixture
def draft(make_policy, policy_admin):
    policy = make_policy("branch", SOURCE)
    return policies.save_draft(policy, actor=policy_admin, source=SOURCE_V2, test_cases=CASES)


def test_a_policy_change_request_reaches_the_channels_and_the_reviewers_url(
    draft, policy_admin, second_policy_admin, production, receiver, notified
):
    base = f"jsons://127.0.0.1:{receiver.port}"
    NotificationChannel.objects.create(name="governance", url=f"{base}/governance")
    NotificationChannel.objects.create(name="gates-only", url=f"{base}/gates", events=["waiting"])
    # A production-only channel hears of production's changes, not of a policy's.
    NotificationChannel.objects.create(environment=production, name="prod", url=f"{base}/prod")
    NotificationPreference.objects.create(user=second_policy_admin, url=f"{base}/pierre")
    NotificationPreference.objects.create(user=policy_admin, url=f"{base}/paula")  # proposer

    with notified():
        proposed = change_requests.propose_policy_publish(draft, actor=policy_admin)

    (hook,) = receiver.to("127.0.0.1", "/governance")
    body = json.loads(hook["body"])
    assert body["title"].startswith("[Clearway] A governance change request waits for you")
    assert f"/change-requests/{proposed.pk}/" in body["message"]
    assert len(receiver.to("127.0.0.1", "/pierre")) == 1
    for nobody in ("/gates", "/prod", "/paula"):
        assert receiver.to("127.0.0.1", nobody) == []
    rows = NotificationDelivery.objects.filter(change_request=proposed)
    assert sorted(rows.values_list("status", flat=True)) == ["sent", "sent"]
    assert all(row.gate_id is None and row.kind == "change_request" for row in rows)


def test_an_environment_change_request_reaches_the_environments_channel(
    production, policy_admin, second_policy_admin, receiver, notified
):
    # Policy admins hold change_environment in the demo roles (as in test_change_requests).
    NotificationChannel.objects.create(
        environment=production, name="prod", url=f"jsons://127.0.0.1:{receiver.port}/prod"
    )
    with notified():
        proposed = change_requests.propose_environment_update(
            production, actor=policy_admin, settings={"approval_ttl_hours": 12}
        )
    assert proposed.environment_id == production.pk
    assert len(receiver.to("127.0.0.1", "/prod")) == 1


def test_a_request_decided_before_delivery_is_not_announced(
    draft, policy_admin, second_policy_admin, receiver
):
    NotificationChannel.objects.create(
        name="governance", url=f"jsons://127.0.0.1:{receiver.port}/governance"
    )
    proposed = change_requests.propose_policy_publish(draft, actor=policy_admin)
    ids = notifications.fan_out_change_request(proposed.pk)
    change_requests.withdraw(proposed, actor=policy_admin)
    assert notifications.deliver(ids[0]) is True
    row = NotificationDelivery.objects.get(pk=ids[0])
    assert row.status == "failed" and "no longer pending" in row.last_error
    assert receiver.to("127.0.0.1", "/governance") == []
    assert notifications.fan_out_change_request(proposed.pk) == []

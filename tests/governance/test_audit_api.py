"""/api/v1/audit-events/: only for those who may view the audit log; filters; verify."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from governance import audit
from governance.models import AuditEvent, Outcome
from tests.governance.test_audit import tamper

pytestmark = pytest.mark.django_db

ROLES = {
    "viewer": ["viewer"],
    "developer": ["developer"],
    "approver": ["approver"],
    "outsider": [],
    "policy_admin": ["policy-admin"],
    "compliance_manager": ["compliance-manager"],
    "superuser": [],
}
AUDITORS = {"compliance_manager", "superuser"}
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def make_user(role: str, username: str | None = None):
    User = get_user_model()
    if role == "superuser":
        return User.objects.create_superuser(username or role)
    user = User.objects.create_user(username or role)
    for name in ROLES[role]:
        user.groups.add(Group.objects.get(name=name))
    return user


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def log():
    """A small known history, on top of whatever fixtures recorded (role grants)."""
    dana = get_user_model().objects.create_user("dana")
    rows = [
        (dana, "policy.create", ("policy", 1, "freeze"), Outcome.SUCCESS, 0),
        (dana, "policy.publish", ("policy", 1, "freeze"), Outcome.FAILURE, 1),
        ("sam", "gate.approve", ("gate", 9, "gate 9"), Outcome.SUCCESS, 2),
        (None, "run.trigger", ("run", 4, "payments-api #4"), Outcome.SUCCESS, 3),
        ("mallory", "auth.login_failed", ("user", "", "mallory"), Outcome.FAILURE, 4),
        (dana, "policy.publish", ("policy", 2, "tests-passed"), Outcome.SUCCESS, 5),
    ]
    return [
        audit.record(actor, action, target, outcome=outcome, at=T0 + timedelta(hours=h))
        for actor, action, target, outcome, h in rows
    ]


def seqs(response) -> list[int]:
    assert response.status_code == 200, response.data
    return [e["seq"] for e in response.json()["results"]]


# --- who ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["list", "retrieve", "verify"])
@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
def test_role_table(role, endpoint, log):
    path = {
        "list": "/api/v1/audit-events/",
        "retrieve": f"/api/v1/audit-events/{log[0].seq}/",
        "verify": "/api/v1/audit-events/verify/",
    }[endpoint]
    user = None if role == "anonymous" else make_user(role)
    response = api(user).get(path)
    if role == "anonymous":
        assert response.status_code == 401
    elif role in AUDITORS:
        assert response.status_code == 200, response.data
    else:
        assert response.status_code == 403
        assert "audit log" in response.json()["message"]
        assert "results" not in response.json()


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_log_cannot_be_written_through_the_api(method, log):
    root = make_user("superuser")
    count = AuditEvent.objects.count()
    for path in ("/api/v1/audit-events/", f"/api/v1/audit-events/{log[0].seq}/"):
        response = getattr(api(root), method)(path, {"action": "forged"}, format="json")
        assert response.status_code == 405
    assert AuditEvent.objects.count() == count
    assert audit.verify().ok


# --- what --------------------------------------------------------------------------------------


@pytest.fixture
def carl():
    return api(make_user("compliance_manager", "carl"))


def test_newest_first_and_paginated(carl, log):
    page = carl.get("/api/v1/audit-events/?limit=2")
    body = page.json()
    assert body["count"] == AuditEvent.objects.count()
    assert [e["seq"] for e in body["results"]] == [
        AuditEvent.objects.count(),
        AuditEvent.objects.count() - 1,
    ]
    assert body["next"]
    event = carl.get(f"/api/v1/audit-events/{log[1].seq}/").json()
    assert event["action"] == "policy.publish" and event["actor"] == "dana"
    assert event["outcome"] == "failure" and event["target_name"] == "freeze"
    assert event["hash"] == log[1].hash and event["prev_hash"] == log[0].hash


@pytest.mark.parametrize(
    "query, expected",
    [
        ("action=policy.publish", [5, 1]),
        ("action=policy.*", [5, 1, 0]),
        ("action=policy.pub*", [5, 1]),
        ("actor=dana", [5, 1, 0]),
        ("actor=system", [3]),
        ("target=policy", [5, 1, 0]),
        ("target=policy:1", [1, 0]),
        ("target=gate:9", [2]),
        ("outcome=failure", [4, 1]),
        ("since=2026-03-01T11:00:00%2B00:00", [5, 4, 3, 2]),
        ("until=2026-03-01T11:00:00Z", [1, 0]),
        ("since=2026-03-01T10:00:00&until=2026-03-01T12:00:00", [2, 1]),
        ("since=2026-03-01T11:00:00+00:00&actor=dana", [5]),
    ],
)
def test_filters(carl, log, query, expected):
    mine = {e.seq for e in log}  # leave out what the fixtures recorded (role grants)
    found = [seq for seq in seqs(carl.get(f"/api/v1/audit-events/?{query}")) if seq in mine]
    assert found == [log[i].seq for i in expected]


@pytest.mark.parametrize(
    "query, text",
    [
        ("since=yesterday", 'since: "yesterday" is not an ISO 8601 date-time'),
        ("until=2026-13-45T00:00:00", "until:"),
        ("outcome=meh", 'unknown outcome "meh"'),
    ],
)
def test_bad_filters_are_400_with_a_message(carl, log, query, text):
    response = carl.get(f"/api/v1/audit-events/?{query}")
    assert response.status_code == 400
    assert text in response.json()["message"]


def test_verify_reports_ok_and_then_the_broken_row(carl, log):
    ok = carl.get("/api/v1/audit-events/verify/").json()
    head = AuditEvent.objects.order_by("-seq").first()
    assert ok == {
        "ok": True,
        "checked": head.seq,
        "head": {"seq": head.seq, "hash": head.hash},
        "first_broken_seq": None,
        "problem": "",
        "since_seq": 0,  # no signed checkpoint: the whole chain
    }
    tamper(log[2].seq, details={"forged": True})
    broken = carl.get("/api/v1/audit-events/verify/")
    assert broken.status_code == 200
    assert broken.json()["ok"] is False
    assert broken.json()["first_broken_seq"] == log[2].seq

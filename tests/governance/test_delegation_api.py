"""The gates API for delegates, as rows of the permission table of test_gate_api: tom (a
viewer) stands in for sam (an sre approver). In force, he lists, approves and rejects like
an approver — "tom for sam" in the detail — but never overrides (break-glass is not
delegated); revoked, he is a viewer again; a delegate who cannot see the pipeline gets
nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.delegation import create_delegation, revoke_delegation
from governance.models import Approval

from .test_gate_api import ACTIONS, outcome, soft_gate, url  # noqa: F401  (a fixture too)

pytestmark = pytest.mark.django_db

TABLE = {
    "delegate": (True, True, 200, 200, 200, 403),
    "revoked_delegate": (True, False, 200, 403, 403, 403),
    "delegate_without_view": (False, False, 404, 404, 404, 404),
}


@pytest.fixture
def delegates(make_user, approver, second_approver, production):
    """tom stands in for sam; rita stood in for sam (revoked); otto, who sees no pipeline,
    stands in for sara."""
    now = timezone.now()
    people = {
        "revoked_delegate": make_user("rita", "viewer"),
        "delegate": make_user("tom", "viewer"),
        "delegate_without_view": make_user("otto"),
    }
    for role, person in people.items():
        row = create_delegation(
            actor=second_approver if role == "delegate_without_view" else approver,
            delegate=person,
            starts_at=now - timedelta(hours=1),
            ends_at=now + timedelta(days=1),
            now=now,
        )
        if role == "revoked_delegate":
            revoke_delegation(row, actor=approver, now=now)
    return people


@pytest.mark.parametrize("role", TABLE)
def test_delegate_rows(soft_gate, run_at_gate, delegates, api, role, t0):  # noqa: F811
    client = api(delegates[role])
    got = {}
    for action in ACTIONS:
        gate = soft_gate if action in ("list", "waiting", "retrieve") else run_at_gate(now=t0)[1]
        got[action] = outcome(client, gate, action)
    assert got == dict(zip(ACTIONS, TABLE[role], strict=True))


def test_the_detail_shows_who_approved_for_whom(soft_gate, delegates, api):  # noqa: F811
    tom = delegates["delegate"]
    response = api(tom).post(url(soft_gate, "approve"), {"comment": "for sam"}, format="json")
    assert response.status_code == 200
    (row,) = response.json()["approvals"]
    assert (row["user"], row["on_behalf_of"]) == ("tom", "sam")
    assert Approval.objects.get().on_behalf_of.username == "sam"


def test_naming_a_delegator_who_gave_no_delegation_is_refused(soft_gate, delegates, api, users):  # noqa: F811
    response = api(delegates["delegate"]).post(
        url(soft_gate, "approve"), {"on_behalf_of": "sara"}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["rule"] == "delegation"
    assert not Approval.objects.exists()


# --- /api/v1/delegations/ -------------------------------------------------------------


def _period(days=2):
    now = timezone.now()
    return {"starts_at": now.isoformat(), "ends_at": (now + timedelta(days=days)).isoformat()}


# role -> (list status, create status, revoke sam's delegation status)
DELEGATIONS_TABLE = {
    "approver": (200, 201, 200),  # sam: his own
    "second_approver": (200, 201, 404),  # sara: may delegate hers, not revoke sam's
    "viewer": (200, 400, 404),  # approves nowhere: nothing to delegate
    "outsider": (200, 400, 404),
}


@pytest.mark.parametrize("role", DELEGATIONS_TABLE)
def test_delegation_endpoints_by_role(users, production, make_user, approver, api, role):
    colleague = make_user("colin", "viewer")
    sams = create_delegation(
        actor=approver,
        delegate=colleague,
        starts_at=timezone.now() + timedelta(days=10),
        ends_at=timezone.now() + timedelta(days=11),
    )
    client = api(users[role])
    listed = client.get("/api/v1/delegations/")
    created = client.post(
        "/api/v1/delegations/", {"delegate": "colin", **_period(), "reason": "away"}, format="json"
    )
    revoked = client.post(f"/api/v1/delegations/{sams.pk}/revoke/")
    got = (listed.status_code, created.status_code, revoked.status_code)
    assert got == DELEGATIONS_TABLE[role], (created.json(), revoked.content)
    if created.status_code == 201:
        body = created.json()
        assert body["delegate"] == "colin" and body["in_force"] is True
    if role == "approver":
        assert {d["delegate"] for d in client.get("/api/v1/delegations/").json()["results"]} == {
            "colin"
        }


def test_self_delegation_over_the_api_is_refused(approver, production, api):
    response = api(approver).post(
        "/api/v1/delegations/", {"delegate": "sam", **_period()}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["rule"] == "self-delegation"

"""The gates and environments API: every role × every gate endpoint, response shapes, errors,
the approver's inbox, the OpenAPI schema and query counts."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from governance.models import Approval, GateStatus, Override

from .conftest import NEEDS_TICKET

pytestmark = pytest.mark.django_db

WHY = "hotfix for incident INC-4711, change ticket follows"


@pytest.fixture
def soft_gate(run_at_gate, make_policy, users, t0):
    """Waiting at production for approvals and for a soft-mandatory policy (so an override is
    meaningful); triggered by dana."""
    make_policy("ticket", NEEDS_TICKET, "soft-mandatory")
    run, gate = run_at_gate(now=t0)
    return gate


def url(gate, action: str = "") -> str:
    return f"/api/v1/gates/{gate.pk}/" + (f"{action}/" if action else "")


def call(client, gate, action: str):
    if action == "list":
        return client.get("/api/v1/gates/")
    if action == "waiting":
        return client.get("/api/v1/gates/?status=waiting")
    if action == "retrieve":
        return client.get(url(gate))
    body = {
        "approve": {"comment": "looks good"},
        "reject": {"comment": "not now"},
        "override": {"justification": WHY},
    }[action]
    return client.post(url(gate, action), body, format="json")


ACTIONS = ("list", "waiting", "retrieve", "approve", "reject", "override")
# role -> expected outcome per action: for the lists whether the gate is listed, else the
# HTTP status. Every role × every action, allowed and denied.
TABLE = {
    "viewer": (True, False, 200, 403, 403, 403),
    "developer": (True, False, 200, 403, 403, 403),
    "approver": (True, True, 200, 200, 200, 200),
    "second_approver": (True, True, 200, 200, 200, 200),
    "security_approver": (True, True, 200, 200, 200, 403),
    "outsider": (False, False, 404, 404, 404, 404),
    "policy_admin": (True, False, 200, 403, 403, 403),
    "compliance_manager": (True, False, 200, 403, 403, 403),
}


def state(gate):
    gate.refresh_from_db()
    return (
        gate.status,
        list(Approval.objects.filter(gate=gate).values_list("user__username", "decision")),
        Override.objects.filter(gate=gate).count(),
    )


def outcome(client, gate, action):
    """What `action` on `gate` gives: listed or not, or the status (checking that a refusal
    is JSON with a message and changed nothing, and that a success changed the gate)."""
    before = state(gate)
    response = call(client, gate, action)
    if action in ("list", "waiting"):
        assert response.status_code == 200
        return gate.pk in [g["id"] for g in response.json()["results"]]
    if response.status_code == 200:
        assert response.json()["id"] == gate.pk
        assert (state(gate) != before) is (action != "retrieve"), action
    else:
        assert "message" in response.json()
        assert state(gate) == before, action
    return response.status_code


@pytest.mark.parametrize("role", TABLE)
def test_role_table(soft_gate, run_at_gate, users, api, role, t0):
    client = api(users[role])
    got = {}
    for action in ACTIONS:
        # Each decision gets a gate of its own: an allowed one changes it.
        gate = soft_gate if action in ("list", "waiting", "retrieve") else run_at_gate(now=t0)[1]
        got[action] = outcome(client, gate, action)
    assert got == dict(zip(ACTIONS, TABLE[role], strict=True))


def test_anonymous_callers_are_turned_away(soft_gate, api):
    assert {a: call(api(None), soft_gate, a).status_code for a in ACTIONS} == dict.fromkeys(
        ACTIONS, 401
    )


def test_the_gate_detail_has_what_an_approver_needs(soft_gate, api, approver, second_approver, t0):
    api(approver).post(url(soft_gate, "approve"), {"comment": "fine by me"}, format="json")
    api(approver).post(url(soft_gate, "override"), {"justification": WHY}, format="json")
    data = api(second_approver).get(url(soft_gate)).json()

    assert data["status"] == GateStatus.WAITING
    assert data["environment"] == "production"
    assert data["stage"] == "deploy-production"
    assert data["run"]["pipeline"] == "payments-api"
    assert data["run"]["number"] == 1
    assert data["run"]["triggered_by"] == "dana"
    assert data["reason"] == "waiting for approvals: 1 more from security, 1 more from sre"
    assert data["decisions"] == [
        {
            "policy": "ticket",
            "version": 1,
            "enforcement": "soft-mandatory",
            "result": "deny",
            "messages": ["no change ticket"],
            "deny": ["no change ticket"],
            "warn": [],
            "overridden": True,
            "duration_ms": data["decisions"][0]["duration_ms"],
        }
    ]
    [approval] = data["approvals"]
    assert {k: approval[k] for k in ("user", "decision", "comment", "group", "void")} == {
        "user": "sam",
        "decision": "approve",
        "comment": "fine by me",
        "group": "sre",
        "void": False,
    }
    assert approval["at"] and approval["expires_at"]
    assert data["required"] == [
        {"group": "security", "count": 1, "given": 0},
        {"group": "sre", "count": 2, "given": 1},
    ]
    assert data["overridden"] is True
    assert [(o["user"], o["justification"]) for o in data["overrides"]] == [("sam", WHY)]
    assert data["excluded"] == [
        {
            "user": "dana",
            "reason": "separation of duties: dana triggered this run and may not approve it",
        },
        {
            "user": "ada",
            "reason": (
                "separation of duties: ada last edited the pipeline (version 1) and may not "
                "approve it"
            ),
        },
    ]
    assert data["can_approve"] is True and data["can_reject"] is True
    assert data["can_override"] is False  # the only soft denial is overridden already
    assert data["input"]["run"]["parameters"]["version"] == "1.0.0"
    assert len(data["seen_hash"]) == 64

    mine = api(approver).get(url(soft_gate)).json()
    assert mine["can_approve"] is False
    assert mine["cannot_approve_reason"] == f"sam already approved gate {soft_gate.pk}"


def test_approving_returns_the_updated_gate_and_opens_it(soft_gate, api, approvers, t0):
    sam, sara, sofia = approvers
    api(sam).post(url(soft_gate, "override"), {"justification": WHY}, format="json")
    for person in (sam, sara):
        assert api(person).post(url(soft_gate, "approve"), {}, format="json").status_code == 200
    response = api(sofia).post(url(soft_gate, "approve"), {"comment": "ok"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == GateStatus.OVERRIDDEN
    assert response.json()["can_approve"] is False


def test_refusals_are_json_with_the_rule_that_refused(
    run_at_gate, api, approver, second_approver, t0
):
    run, gate = run_at_gate(actor=approver, now=t0)
    response = api(approver).post(url(gate, "approve"), {}, format="json")
    assert response.status_code == 403
    assert response.json() == {
        "message": "separation of duties: sam triggered this run and may not approve it",
        "rule": "separation-of-duties",
    }
    assert api(second_approver).post(url(gate, "approve"), {}, format="json").status_code == 200
    again = api(second_approver).post(url(gate, "approve"), {}, format="json")
    assert again.status_code == 409
    assert again.json()["message"] == f"sara already approved gate {gate.pk}"
    no_comment = api(second_approver).post(url(gate, "reject"), {}, format="json")
    assert no_comment.status_code == 400
    own = api(approver).post(url(gate, "override"), {"justification": WHY}, format="json")
    assert own.status_code == 403  # break-glass is not a way around separation of duties
    assert own.json() == {
        "message": "separation of duties: sam triggered this run and may not override it",
        "rule": "separation-of-duties",
    }
    nothing = api(second_approver).post(
        url(gate, "override"), {"justification": WHY}, format="json"
    )
    assert nothing.status_code == 409
    assert nothing.json()["message"].endswith("no soft-mandatory policy denies it")
    missing = api(approver).get("/api/v1/gates/999999/")
    assert missing.status_code == 404 and "message" in missing.json()


def test_a_rejection_without_comment_and_a_short_justification_are_400(soft_gate, api, approver):
    response = api(approver).post(url(soft_gate, "reject"), {"comment": " "}, format="json")
    assert response.status_code == 400
    assert response.json()["message"] == "a rejection needs a comment that says why"
    response = api(approver).post(
        url(soft_gate, "override"), {"justification": "why not"}, format="json"
    )
    assert response.status_code == 400
    assert "at least 20 characters" in response.json()["message"]


def test_the_waiting_list_is_the_callers_inbox(run_at_gate, api, users, make_user, t0):
    run1, by_dana = run_at_gate(now=t0)
    tom = make_user("tom", "approver", "sre")
    run2, by_tom = run_at_gate(actor=tom, now=t0)
    run3, authored_by_sara = run_at_gate(parameters={"author": "sara"}, now=t0)

    def inbox(user):
        response = api(user).get("/api/v1/gates/?status=waiting")
        assert response.status_code == 200
        return {g["id"] for g in response.json()["results"]}

    assert inbox(users["approver"]) == {by_dana.pk, by_tom.pk, authored_by_sara.pk}
    assert inbox(users["second_approver"]) == {by_dana.pk, by_tom.pk}
    assert inbox(tom) == {by_dana.pk, authored_by_sara.pk}
    assert inbox(users["viewer"]) == set()
    api(users["approver"]).post(url(by_dana, "approve"), {}, format="json")
    assert inbox(users["approver"]) == {by_tom.pk, authored_by_sara.pk}
    # Everything visible, filtered by status.
    visible = api(users["viewer"]).get("/api/v1/gates/?status=waiting,open").json()
    assert visible["count"] == 3
    bad = api(users["viewer"]).get("/api/v1/gates/?status=pending")
    assert bad.status_code == 400
    of_run = api(users["viewer"]).get(f"/api/v1/gates/?run={run2.pk}").json()
    assert [g["id"] for g in of_run["results"]] == [by_tom.pk]
    for junk in ("x", "-1", str(2**70)):
        assert api(users["viewer"]).get(f"/api/v1/gates/?run={junk}").status_code == 400
    assert api(users["viewer"]).get(f"/api/v1/gates/{2**70}/").status_code == 404


def test_listing_gates_costs_the_same_number_of_queries_for_1_or_many(
    run_at_gate, api, approver, t0
):
    client = api(approver)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/v1/gates/").status_code == 200
        return len(queries)

    run_at_gate(now=t0)
    count()  # the first request fills the user's permission caches
    one = count()
    for _ in range(4):
        run_at_gate(now=t0)
    assert count() == one
    assert one <= 4


def test_environments_list_their_rules_and_what_the_caller_may_do(api, users, production, t0):
    production.notify_webhook_url = "https://hooks.example.test/secret-token"
    production.save()
    data = api(users["approver"]).get("/api/v1/environments/").json()
    by_name = {e["name"]: e for e in data["results"]}
    assert set(by_name) == {"development", "staging", "production"}
    prod = by_name["production"]
    assert prod["rules"] == [{"group": "security", "count": 1}, {"group": "sre", "count": 2}]
    assert prod["protected"] is True and prod["tier"] == "production"
    assert prod["notifications"] is True
    assert "secret-token" not in str(data)
    assert (prod["can_approve"], prod["can_override"]) == (True, True)
    viewer_prod = api(users["viewer"]).get("/api/v1/environments/production/").json()
    assert (viewer_prod["can_approve"], viewer_prod["can_override"]) == (False, False)
    sofia = api(users["security_approver"]).get("/api/v1/environments/production/").json()
    assert (sofia["can_approve"], sofia["can_override"]) == (True, False)
    assert api(None).get("/api/v1/environments/").status_code == 401


def test_the_openapi_schema_describes_the_gate_endpoints(api, superuser):
    response = api(superuser).get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in (
        "/api/v1/gates/",
        "/api/v1/gates/{id}/",
        "/api/v1/gates/{id}/approve/",
        "/api/v1/gates/{id}/reject/",
        "/api/v1/gates/{id}/override/",
        "/api/v1/environments/",
        "/api/v1/environments/{name}/",
    ):
        assert path in paths, path
    approve = paths["/api/v1/gates/{id}/approve/"]["post"]
    body = approve["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/ApproveRequestRequest")
    assert approve["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/GateDetail"
    )
    for code in ("400", "403", "404", "409"):
        assert code in approve["responses"]
    detail = schema["components"]["schemas"]["GateDetail"]["properties"]
    for field in (
        "id",
        "status",
        "environment",
        "decisions",
        "approvals",
        "required",
        "can_approve",
    ):
        assert field in detail
    listing = paths["/api/v1/gates/"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"status", "environment", "limit"}

"""/api/v1/policies/ and /api/v1/decisions/: who may do what, and what the answers look like."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from guardian.shortcuts import assign_perm

from governance import policies, rego
from governance.models import (
    AuditEvent,
    Policy,
    PolicyDecision,
    PolicyVersion,
)
from tests.governance.test_policies_dry_run import gate_with_input, pipeline_row

pytestmark = pytest.mark.django_db

BASE_INPUT = rego.demo_policies()[0]["tests"][0]["input"]

SOURCE = """package clearway.branch

import rego.v1

deny contains msg if {
	input.run.parameters.branch != "main"
	msg := sprintf("branch %s is not main", [input.run.parameters.branch])
}
"""

DRAFT = SOURCE.replace("is not main", "must be main")

SYNTAX_ERROR = """package clearway.broken

import rego.v1

deny contains msg if {
	msg := "x")
}
"""

V0_SOURCE = """package clearway.old

deny[msg] {
	msg := "old style"
}
"""


def doc(branch: str) -> dict:
    data = copy.deepcopy(BASE_INPUT)
    data["run"]["parameters"]["branch"] = branch
    return data


def cases(message: str) -> list[dict]:
    return [
        {"name": "main passes", "input": doc("main"), "expect": {"deny": 0}},
        {"name": "dev denies", "input": doc("dev"), "expect": {"deny": [f"branch dev {message}"]}},
    ]


# --- people (the shared role fixtures of tests/conftest.py) ---------------------------------

ROLES = [
    "viewer",
    "developer",
    "approver",
    "outsider",
    "policy_admin",
    "compliance_manager",
    "superuser",
]
EDITORS = {"policy_admin", "superuser"}


@pytest.fixture
def prod(production):
    return production


@pytest.fixture
def paula(policy_admin):
    return policy_admin


@pytest.fixture
def policy(prod, paula):
    """Published v1, with a draft waiting to be published (its tests pass). Rows are written
    directly (both sources compile): the verbs are tested in test_policies.py, and this
    fixture runs for every cell of the role table."""
    policy = Policy.objects.create(
        name="branch",
        source=DRAFT,
        enforcement="hard-mandatory",
        test_cases=cases("must be main"),
        updated_by=paula,
    )
    policy.environments.set([prod])
    policy.current_version = PolicyVersion.objects.create(
        policy=policy,
        number=1,
        source=SOURCE,
        sha256=policies.source_sha256(SOURCE),
        enforcement="hard-mandatory",
        author=paula,
    )
    policy.save(update_fields=["current_version"])
    return policy


# --- the role table -----------------------------------------------------------------------


# action: (method, path, body, success status, needs the editor role)
def actions_for(policy: Policy) -> dict:
    base = f"/api/v1/policies/{policy.pk}"
    new = {"name": "fresh", "source": SOURCE, "enforcement": "advisory"}
    return {
        "list": ("get", "/api/v1/policies/", None, 200, False),
        "retrieve": ("get", f"{base}/", None, 200, False),
        "versions": ("get", f"{base}/versions/", None, 200, False),
        "version": ("get", f"{base}/versions/1/", None, 200, False),
        "evaluate": ("post", f"{base}/evaluate/", {"input": doc("dev")}, 200, False),
        "test": ("post", f"{base}/test/", {}, 200, False),
        "decisions": ("get", "/api/v1/decisions/", None, 200, False),
        "create": ("post", "/api/v1/policies/", new, 201, True),
        "update": ("patch", f"{base}/", {"enforcement": "advisory"}, 200, True),
        "replace": ("put", f"{base}/", {"description": "new words"}, 200, True),
        "delete": ("delete", f"{base}/", None, 202, True),  # a change request (four eyes)
        "publish": ("post", f"{base}/publish/", None, 202, True),
        "dry-run": ("post", f"{base}/dry-run/", {"days": 7}, 200, True),
        "evaluate-source": (
            "post",
            f"{base}/evaluate/",
            {"input": doc("dev"), "source": SOURCE},
            200,
            True,
        ),
        "test-source": ("post", f"{base}/test/", {"source": SOURCE}, 200, True),
    }


ACTIONS = list(actions_for(Policy(pk=1)))


def state(policy: Policy) -> tuple:
    policy.refresh_from_db()
    return (
        Policy.objects.count(),
        PolicyVersion.objects.count(),
        policy.source,
        policy.enforcement,
        policy.description,
        policy.enabled,
        AuditEvent.objects.count(),
    )


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
def test_role_table(request, api, role, action, policy):
    method, path, body, ok, editors_only = actions_for(policy)[action]
    user = None if role == "anonymous" else request.getfixturevalue(role)
    before = state(policy)
    response = getattr(api(user), method)(path, body, format="json")
    if role == "anonymous":
        assert response.status_code == 401
    elif editors_only and role not in EDITORS:
        assert response.status_code == 403, response.data
        assert "message" in response.data
    else:
        assert response.status_code == ok, response.data
        return
    assert state(policy) == before  # a refused request changes nothing


# --- create -----------------------------------------------------------------------------


def test_create_returns_the_policy_with_its_scope(api, prod, paula):
    body = {
        "name": "branch",
        "source": SOURCE,
        "enforcement": "soft-mandatory",
        "scope": {"environments": ["production"], "tiers": ["staging"]},
        "description": "main only",
        "test_cases": cases("is not main"),
        "enabled": True,
    }
    response = api(paula).post("/api/v1/policies/", body, format="json")
    assert response.status_code == 201, response.data
    data = response.json()
    assert data["name"] == "branch" and data["enforcement"] == "soft-mandatory"
    assert data["scope"] == {"environments": ["production"], "tiers": ["staging"]}
    assert data["version"] is None and data["current_version"] is None
    assert data["has_unpublished_changes"] is True
    assert data["updated_by"] == "paula"
    assert len(data["test_cases"]) == 2
    assert AuditEvent.objects.filter(action="policy.create").count() == 1


def test_a_syntax_error_reports_line_and_column_and_saves_nothing(api, prod, paula):
    events = AuditEvent.objects.count()
    body = {"name": "broken", "source": SYNTAX_ERROR, "enforcement": "advisory"}
    response = api(paula).post("/api/v1/policies/", body, format="json")
    assert response.status_code == 400
    data = response.json()
    assert "unexpected ) token" in data["message"]
    assert data["errors"][0] == {
        "message": "rego_parse_error: unexpected ) token: expected \\n or ; or }",
        "file": "policy.rego",
        "line": 6,
        "column": 12,
        "path": "source",
    }
    assert not Policy.objects.exists()
    assert AuditEvent.objects.count() == events


def test_a_v0_policy_is_refused_with_the_v1_hint(api, prod, paula):
    body = {"name": "old", "source": V0_SOURCE, "enforcement": "advisory"}
    response = api(paula).post("/api/v1/policies/", body, format="json")
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert "Rego v0" in error["message"] and "deny contains msg if" in error["message"]
    assert (error["line"], error["path"]) == (3, "source")
    assert not Policy.objects.exists()


@pytest.mark.parametrize(
    "body, path, text",
    [
        ({"enforcement": "advisory", "name": "x"}, "source", "required"),
        ({"source": SOURCE, "name": "x", "enforcement": "strict"}, "enforcement", "valid choice"),
        (
            {"source": SOURCE, "name": "x", "enforcement": "advisory", "scope": {"tiers": ["x"]}},
            "scope.tiers[0]",
            "valid choice",
        ),
        (
            {
                "source": SOURCE,
                "name": "x",
                "enforcement": "advisory",
                "scope": {"environments": ["moon"]},
            },
            "scope.environments",
            "unknown environment(s): moon",
        ),
        (
            {"source": SOURCE, "name": "x", "enforcement": "advisory", "test_cases": [{}]},
            "test_cases",
            "needs an input object",
        ),
    ],
)
def test_bad_fields_are_400_with_their_path(api, prod, paula, body, path, text):
    response = api(paula).post("/api/v1/policies/", body, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0]["path"] == path, errors
    assert text in errors[0]["message"]
    assert text in response.json()["message"]
    assert not Policy.objects.exists()


def test_a_duplicate_name_is_refused(api, policy, paula):
    body = {"name": "branch", "source": SOURCE, "enforcement": "advisory"}
    response = api(paula).post("/api/v1/policies/", body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "name"


# --- update, delete -----------------------------------------------------------------------


def test_update_saves_a_draft_and_proposes_the_scope(api, policy, paula, second_policy_admin):
    response = api(paula).patch(
        f"/api/v1/policies/{policy.pk}/",
        {"source": SOURCE, "enforcement": "advisory", "scope": {"tiers": ["staging"]}},
        format="json",
    )
    assert response.status_code == 202, response.data
    data = response.json()
    assert data["source"] == SOURCE and data["enforcement"] == "advisory"
    # The scope applies at once, so it waits for a second policy admin.
    assert data["scope"] == {"environments": ["production"], "tiers": []}
    assert data["change_request"]["kind"] == "policy.scope"
    assert data["version"] == 1 and data["current_version"]["enforcement"] == "hard-mandatory"
    assert data["has_unpublished_changes"] is True
    pk = data["change_request"]["id"]
    approved = api(second_policy_admin).post(f"/api/v1/change-requests/{pk}/approve/")
    assert approved.status_code == 200 and approved.json()["status"] == "applied"
    detail = api(paula).get(f"/api/v1/policies/{policy.pk}/").json()
    assert detail["scope"] == {"environments": ["production"], "tiers": ["staging"]}


def test_update_with_a_syntax_error_saves_nothing(api, policy, paula):
    response = api(paula).patch(
        f"/api/v1/policies/{policy.pk}/",
        {"source": SYNTAX_ERROR, "enforcement": "advisory"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["line"] == 6
    policy.refresh_from_db()
    assert policy.source == DRAFT and policy.enforcement == "hard-mandatory"


def test_a_policy_cannot_be_renamed(api, policy, paula):
    response = api(paula).patch(f"/api/v1/policies/{policy.pk}/", {"name": "other"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "name"


def test_delete_disables_and_keeps_history(api, policy, paula, second_policy_admin):
    response = api(paula).delete(f"/api/v1/policies/{policy.pk}/")
    assert response.status_code == 202
    policy.refresh_from_db()
    assert policy.enabled is True  # waits for a second policy admin
    pk = response.json()["change_request"]["id"]
    assert api(paula).post(f"/api/v1/change-requests/{pk}/approve/").status_code == 403
    assert (
        api(second_policy_admin).post(f"/api/v1/change-requests/{pk}/approve/").status_code == 200
    )
    policy.refresh_from_db()
    assert policy.enabled is False and policy.versions.count() == 1
    detail = api(paula).get(f"/api/v1/policies/{policy.pk}/").json()
    assert detail["enabled"] is False
    listed = api(paula).get("/api/v1/policies/?enabled=false").json()
    assert [p["name"] for p in listed["results"]] == ["branch"]
    assert api(paula).get("/api/v1/policies/?enabled=true").json()["count"] == 0
    assert AuditEvent.objects.filter(action="policy.disable").count() == 1
    assert api(paula).delete(f"/api/v1/policies/{policy.pk}/").status_code == 204


# --- publish and versions ---------------------------------------------------------------------


def _publish(api, policy, paula, reviewer) -> dict:
    response = api(paula).post(f"/api/v1/policies/{policy.pk}/publish/")
    assert response.status_code == 202, response.data
    pk = response.json()["change_request"]["id"]
    approved = api(reviewer).post(f"/api/v1/change-requests/{pk}/approve/", {"comment": "ok"})
    assert approved.status_code == 200, approved.data
    return approved.json()


def test_publish_creates_version_two(api, policy, paula, second_policy_admin):
    proposed = api(paula).post(f"/api/v1/policies/{policy.pk}/publish/").json()
    request = proposed["change_request"]
    assert request["status"] == "pending" and request["proposed_by"] == "paula"
    assert all(r["passed"] for r in request["checks"]["tests"]["results"])
    assert "would have blocked" in request["checks"]["dry_run"]["summary"]
    assert api(paula).get(f"/api/v1/policies/{policy.pk}/").json()["version"] == 1
    done = api(second_policy_admin).post(f"/api/v1/change-requests/{request['id']}/approve/").json()
    assert done["status"] == "applied" and done["decided_by"] == "pierre"
    data = api(paula).get(f"/api/v1/policies/{policy.pk}/versions/2/").json()
    assert data["number"] == 2 and data["source"] == DRAFT
    assert data["sha256"] == policies.source_sha256(DRAFT)
    assert data["author"] == "pierre"  # who made it take effect; the proposer is audited
    assert all(r["passed"] for r in data["test_results"])
    assert api(paula).get(f"/api/v1/policies/{policy.pk}/").json()["version"] == 2


def test_publish_is_blocked_by_a_failing_test_case(api, policy, paula):
    policies.save_draft(policy, actor=paula, test_cases=cases("is not main"))  # stale text
    response = api(paula).post(f"/api/v1/policies/{policy.pk}/publish/")
    assert response.status_code == 400
    data = response.json()
    assert "1 of 2 test case(s) failed" in data["message"]
    assert data["errors"] == [
        {
            "message": "dev denies: missing deny ['branch dev is not main']; "
            "unexpected deny ['branch dev must be main']",
            "line": None,
            "column": None,
            "path": "test_cases[1]",
        }
    ]
    assert [r["passed"] for r in data["results"]] == [True, False]
    assert policy.versions.count() == 1


def test_publishing_twice_is_a_conflict(api, policy, paula, second_policy_admin):
    _publish(api, policy, paula, second_policy_admin)
    response = api(paula).post(f"/api/v1/policies/{policy.pk}/publish/")
    assert response.status_code == 409
    assert "nothing to publish" in response.json()["message"]


def test_change_requests_are_listed_for_their_reviewers(api, policy, paula, second_policy_admin):
    api(paula).post(f"/api/v1/policies/{policy.pk}/publish/")
    waiting = api(second_policy_admin).get("/api/v1/change-requests/?waiting=1").json()
    assert [r["kind"] for r in waiting["results"]] == ["policy.publish"]
    assert api(paula).get("/api/v1/change-requests/?waiting=1").json()["count"] == 0
    assert api(paula).get("/api/v1/change-requests/").json()["count"] == 1


def test_versions_list_and_detail(api, policy, paula):
    policies.publish_policy(policy, actor=paula)
    listed = api(paula).get(f"/api/v1/policies/{policy.pk}/versions/").json()
    assert [v["number"] for v in listed["results"]] == [2, 1]
    v1 = api(paula).get(f"/api/v1/policies/{policy.pk}/versions/1/").json()
    assert v1["source"] == SOURCE and v1["policy"] == "branch"
    assert api(paula).get(f"/api/v1/policies/{policy.pk}/versions/9/").status_code == 404


# --- evaluate, test, dry-run ------------------------------------------------------------------


def test_evaluate_the_draft_the_current_version_or_a_number(api, policy, paula):
    url = f"/api/v1/policies/{policy.pk}/evaluate/"
    draft = api(paula).post(url, {"input": doc("dev")}, format="json").json()
    assert draft["result"] == "deny" and draft["deny"] == ["branch dev must be main"]
    assert draft["evaluated"] == "draft" and draft["allowed"] is False
    assert draft["input_hash"] == rego.input_hash(doc("dev"))
    current = api(paula).post(url, {"input": doc("dev"), "version": "current"}, format="json")
    assert current.json()["deny"] == ["branch dev is not main"]
    assert current.json()["evaluated"] == "v1"
    passing = api(paula).post(url, {"input": doc("main"), "version": "1"}, format="json").json()
    assert passing["result"] == "pass" and passing["allowed"] is True
    missing = api(paula).post(url, {"input": doc("main"), "version": "7"}, format="json")
    assert missing.status_code == 404


def test_evaluate_a_given_source_reports_compile_errors(api, policy, paula):
    url = f"/api/v1/policies/{policy.pk}/evaluate/"
    response = api(paula).post(url, {"input": {}, "source": SYNTAX_ERROR}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["line"] == 6


ARRAY_POLICY = """package clearway.images

deny contains msg if {
	some item in input
	endswith(item.image, ":latest")
	msg := sprintf("%s uses a :latest image", [item.name])
}
"""


def test_evaluate_accepts_any_json_document(api, policy, paula):
    url = f"/api/v1/policies/{policy.pk}/evaluate/"
    services = [{"name": "web", "image": "nginx:latest"}, {"name": "db", "image": "pg:16"}]
    body = {"input": services, "source": ARRAY_POLICY}
    data = api(paula).post(url, body, format="json").json()
    assert (data["result"], data["deny"]) == ("deny", ["web uses a :latest image"])
    assert data["input_hash"] == rego.input_hash(services)
    scalar = api(paula).post(url, {"input": "nope", "source": ARRAY_POLICY}, format="json")
    assert scalar.json()["result"] == "pass"  # `some item in "nope"` has no items


def test_evaluate_needs_an_input(api, policy, paula):
    url = f"/api/v1/policies/{policy.pk}/evaluate/"
    response = api(paula).post(url, {}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "input"


def test_the_test_endpoint_reports_each_case(api, policy, paula, viewer):
    url = f"/api/v1/policies/{policy.pk}/test/"
    report = api(viewer).post(url, {}, format="json").json()
    assert report == {
        "passed": True,
        "total": 2,
        "failed": 0,
        "results": report["results"],
        "coverage": report["coverage"],
    }
    # OPA's coverage over both cases: every line of the rules was evaluated by one of them
    assert report["coverage"]["not_covered"] == [] and report["coverage"]["percent"] == 100.0
    assert report["coverage"]["covered"]
    stale = api(paula).post(url, {"test_cases": cases("is not main")}, format="json").json()
    assert (stale["passed"], stale["failed"]) == (False, 1)
    assert stale["results"][1]["name"] == "dev denies"


def test_dry_run_through_the_api(api, policy, paula, prod):
    pipeline = pipeline_row("payments-api")
    now = timezone.now()
    for branch in ("main", "dev", "main", "feature"):
        gate_with_input(pipeline, prod, branch, created_at=now - timedelta(days=2))
    gate_with_input(pipeline, prod, "dev", created_at=now - timedelta(days=20))
    url = f"/api/v1/policies/{policy.pk}/dry-run/"
    report = api(paula).post(url, {"days": 7}, format="json").json()
    assert report["summary"] == "would have blocked 2 of 4 releases in 7 days"
    assert (report["gates"], report["would_block"]) == (4, 2)
    assert {c["after"] for c in report["changed"]} == {"deny"}
    assert report["changed"][0]["messages"][0].endswith("must be main")
    longer = api(paula).post(url, {"days": 30, "source": SOURCE}, format="json").json()
    assert longer["summary"] == "would have blocked 3 of 5 releases in 30 days"
    bad = api(paula).post(url, {"days": 0}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "days"


# --- decisions ------------------------------------------------------------------------------


def test_decisions_follow_their_pipeline(api, policy, prod, viewer, developer, outsider, superuser):
    payments = pipeline_row("payments-api")
    infra = pipeline_row("infra-network", team="platform")
    # (the developer's team group holds view on payments-api only)
    assign_perm("orchestrator.view_pipeline", Group.objects.get(name="team-payments"), payments)
    version = policy.current_version
    gates = {}
    for pipeline in (payments, infra):
        gate = gate_with_input(pipeline, prod, "dev", created_at=timezone.now())
        PolicyDecision.objects.create(
            gate=gate,
            policy_version=version,
            enforcement=version.enforcement,
            input_hash=gate.input_hash,
            result="deny",
            deny=["branch dev is not main"],
        )
        gates[pipeline.slug] = gate

    def seen(user, query=""):
        response = api(user).get(f"/api/v1/decisions/{query}")
        assert response.status_code == 200
        return [d["gate"] for d in response.json()["results"]]

    assert sorted(seen(viewer)) == sorted(g.pk for g in gates.values())
    assert seen(developer) == [gates["payments-api"].pk]
    assert seen(outsider) == []
    root = superuser
    infra_gate = gates["infra-network"].pk
    assert seen(root, f"?gate={infra_gate}") == [infra_gate]
    decision = api(root).get(f"/api/v1/decisions/?gate={infra_gate}").json()["results"][0]
    assert decision["policy"] == "branch" and decision["version"] == 1
    assert decision["messages"] == ["branch dev is not main"]


def test_the_schema_documents_the_endpoints(api, paula):
    response = api(paula).get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/policies/",
        "/api/v1/policies/{id}/publish/",
        "/api/v1/policies/{id}/versions/{number}/",
        "/api/v1/policies/{id}/dry-run/",
        "/api/v1/decisions/",
    ):
        assert path in paths

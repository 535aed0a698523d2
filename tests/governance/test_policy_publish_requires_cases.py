"""Publishing needs at least one test case that denies and one that passes
(docs/policy-authoring.md, "Testing a policy"): without either, publish_policy refuses with a
message naming what is missing and how to add it, audits the refusal, and publishes nothing.
A policy that only warns needs a case that warns instead of one that denies."""

from __future__ import annotations

import copy

import pytest

from governance import policies, rego
from governance.models import AuditEvent, Outcome, PolicyVersion

pytestmark = pytest.mark.django_db

BASE_INPUT = rego.demo_policies()[0]["tests"][0]["input"]

SOURCE = """package clearway.branch

import rego.v1

deny contains msg if {
	input.run.parameters.branch != "main"
	msg := sprintf("branch %s is not main", [input.run.parameters.branch])
}
"""

WARN_ONLY = """package clearway.branch_hint

import rego.v1

# deny contains "a comment is not a rule"
warn contains msg if {
	input.run.parameters.branch != "main"
	msg := sprintf("branch %s is not main", [input.run.parameters.branch])
}
"""


def doc(branch: str) -> dict:
    data = copy.deepcopy(BASE_INPUT)
    data["run"]["parameters"]["branch"] = branch
    return data


PASSES = {"name": "main passes", "input": doc("main"), "expect": {"deny": []}}
DENIES = {"name": "feature denies", "input": doc("x"), "expect": {"deny": ["branch x is not main"]}}
WARNS = {"name": "feature warns", "input": doc("x"), "expect": {"warn": ["branch x is not main"]}}


def make(actor, cases, source=SOURCE, name="branch"):
    return policies.create_policy(
        actor=actor, name=name, source=source, enforcement="hard-mandatory", test_cases=cases
    )


def refusal(outcome=Outcome.FAILURE) -> AuditEvent:
    # The editor and the API propose (four eyes): the refusal is the proposal's.
    actions = ("policy.publish", "change_request.propose")
    return AuditEvent.objects.filter(action__in=actions, outcome=outcome).order_by("-seq").first()


@pytest.mark.parametrize(
    ("cases", "missing", "says"),
    [
        ([], ["deny", "pass"], "it has no case that denies (expect.deny"),
        ([PASSES], ["deny"], "no case that denies (expect.deny: the messages, or a count above 0"),
        ([DENIES], ["pass"], "it has no case that passes (expect.deny: [] or 0"),
        # expecting an error is neither: it fails closed
        ([{**DENIES, "expect": {"error": True}}, PASSES], ["deny"], "no case that denies"),
    ],
    ids=["no-cases", "no-denying-case", "no-passing-case", "error-case-is-not-a-deny"],
)
def test_publish_is_refused_and_audited(policy_admin, cases, missing, says):
    policy = make(policy_admin, cases)
    with pytest.raises(policies.PolicyTestsMissing) as refused:
        policies.publish_policy(policy, actor=policy_admin)
    message = str(refused.value)
    assert refused.value.missing == missing
    assert message.startswith("branch was not published: it needs at least one test case")
    assert says in message and "then publish again" in message
    assert "Start from a real gate's input" in message
    event = refusal()
    assert event.outcome == Outcome.FAILURE
    assert event.details["reason"] == "test cases missing"
    assert event.details["missing"] == missing
    assert event.target_id == str(policy.pk)
    policy.refresh_from_db()
    assert policy.current_version is None
    assert not PolicyVersion.objects.exists()


def test_both_kinds_publish(policy_admin):
    policy = make(policy_admin, [DENIES, {**PASSES, "expect": {"deny": 0}}])
    version = policies.publish_policy(policy, actor=policy_admin)
    assert version.number == 1
    assert refusal(Outcome.SUCCESS).action == "policy.publish"


def test_a_policy_that_only_warns_needs_a_warning_case(policy_admin):
    assert not rego.defines_deny(WARN_ONLY) and rego.defines_deny(SOURCE)
    policy = make(policy_admin, [PASSES], source=WARN_ONLY, name="hint")
    with pytest.raises(policies.PolicyTestsMissing) as refused:
        policies.publish_policy(policy, actor=policy_admin)
    assert refused.value.missing == ["warn"]
    assert "this policy defines no deny rule" in str(refused.value)
    policies.save_draft(policy, actor=policy_admin, test_cases=[WARNS, PASSES])
    assert policies.publish_policy(policy, actor=policy_admin).number == 1


def test_missing_cases_are_refused_before_the_tests_run(policy_admin, monkeypatch):
    policy = make(policy_admin, [DENIES])

    def no_run(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the test cases ran")

    monkeypatch.setattr(rego, "run_test_suite", no_run)
    with pytest.raises(policies.PolicyTestsMissing):
        policies.publish_policy(policy, actor=policy_admin)


def test_the_editor_shows_the_refusal(policy_admin, production):
    import json

    from django.test import Client

    policy = make(policy_admin, [DENIES])
    client = Client()
    client.force_login(policy_admin)
    response = client.post(
        f"/policies/{policy.pk}/",
        {
            "action": "publish",
            "description": "",
            "enforcement": "hard-mandatory",
            "environments": ["production"],
            "enabled": "on",
            "source": SOURCE,
            "test_cases": json.dumps([DENIES]),
            "days": "30",
        },
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="publish-refused"' in page
    assert "it has no case that passes" in page
    assert refusal().details["missing"] == ["pass"]
    assert not PolicyVersion.objects.exists()


def test_the_api_refuses_with_the_message(policy_admin, api):
    policy = make(policy_admin, [PASSES])
    response = api(policy_admin).post(f"/api/v1/policies/{policy.pk}/publish/")
    assert response.status_code == 400
    body = response.json()
    assert "it has no case that denies" in body["message"] and body["missing"] == ["deny"]
    assert body["errors"][0]["path"] == "test_cases"
    assert refusal().outcome == Outcome.FAILURE

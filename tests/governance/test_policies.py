"""The policy verbs (governance.policies): create, save a draft, publish, disable."""

from __future__ import annotations

import copy
import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from governance import audit, policies, rego
from governance.models import AuditEvent, Outcome, Policy, PolicyVersion

pytestmark = pytest.mark.django_db

BASE_INPUT = rego.demo_policies()[0]["tests"][0]["input"]

SOURCE = """package clearway.branch

import rego.v1

deny contains msg if {
	input.run.parameters.branch != "main"
	msg := sprintf("branch %s is not main", [input.run.parameters.branch])
}
"""

SOURCE_V2 = """package clearway.branch

import rego.v1

deny contains msg if {
	not input.run.parameters.branch in {"main", "release"}
	msg := sprintf("branch %s is not main or release", [input.run.parameters.branch])
}

warn contains "release branch" if input.run.parameters.branch == "release"
"""

SYNTAX_ERROR = """package clearway.broken

import rego.v1

deny contains msg if {
	msg := "x")
}
"""

V0_SOURCE = """package clearway.old

deny[msg] {
	input.run.parameters.branch != "main"
	msg := "not main"
}
"""


def doc(branch: str) -> dict:
    data = copy.deepcopy(BASE_INPUT)
    data["run"]["parameters"]["branch"] = branch
    return data


CASES = [
    {"name": "main passes", "input": doc("main"), "expect": {"deny": 0}},
    {
        "name": "feature denies",
        "input": doc("feature-x"),
        "expect": {"deny": ["branch feature-x is not main"]},
    },
]


@pytest.fixture
def admin_user(policy_admin):
    return policy_admin


@pytest.fixture
def prod(production):
    return production


def make(actor, **kwargs) -> Policy:
    args = {"name": "branch", "source": SOURCE, "enforcement": "hard-mandatory"}
    args.update(kwargs)
    return policies.create_policy(actor=actor, **args)


def last_event() -> AuditEvent:
    return AuditEvent.objects.order_by("-seq").first()


# --- create -------------------------------------------------------------------------------


def test_create_saves_a_draft_and_audits_it(admin_user, prod):
    at = timezone.now() - timedelta(days=3)
    policy = make(
        admin_user,
        environments=["production"],
        tiers=["staging"],
        test_cases=CASES,
        description="branch rule",
        now=at,
    )
    assert policy.current_version is None
    assert policy.has_unpublished_changes
    assert list(policy.environments.all()) == [prod]
    assert policy.tiers == ["staging"]
    assert policy.test_cases == CASES
    assert policy.created_at == at and policy.updated_by == admin_user
    event = last_event()
    assert (event.action, event.actor_name, event.target_type) == (
        "policy.create",
        "paula",
        "policy",
    )
    assert event.target_id == str(policy.pk) and event.at == at
    assert event.details["sha256"] == hashlib.sha256(SOURCE.encode()).hexdigest()
    assert event.details["environments"] == ["production"]
    assert event.details["test_cases"] == 2
    assert audit.verify().ok


def test_a_syntax_error_is_refused_with_line_and_column_and_nothing_is_saved(admin_user):
    events = AuditEvent.objects.count()
    with pytest.raises(policies.PolicyCompileError) as excinfo:
        make(admin_user, source=SYNTAX_ERROR)
    first = excinfo.value.errors[0]
    assert (first.line, first.column) == (6, 12)
    assert first.message == "rego_parse_error: unexpected ) token: expected \\n or ; or }"
    assert Policy.objects.count() == 0
    assert AuditEvent.objects.count() == events


def test_a_v0_policy_is_refused_with_the_v1_hint(admin_user):
    with pytest.raises(policies.PolicyCompileError) as excinfo:
        make(admin_user, source=V0_SOURCE)
    message = str(excinfo.value)
    assert "Rego v0" in message and "deny contains msg if" in message
    assert excinfo.value.errors[0].line == 3
    assert not Policy.objects.exists()


@pytest.mark.parametrize(
    "kwargs, field, text",
    [
        ({"enforcement": "strict"}, "enforcement", "unknown enforcement"),
        ({"name": "no spaces please"}, "name", "not a valid policy name"),
        ({"environments": ["moon"]}, "environments", "unknown environment(s): moon"),
        ({"tiers": ["galaxy"]}, "tiers", "unknown tier(s) galaxy"),
        ({"test_cases": [{"name": "x"}]}, "test_cases", "needs an input object"),
        ({"test_cases": {"name": "x"}}, "test_cases", "must be a list"),
        (
            {"test_cases": [{"input": {}, "expect": {"deny": "yes"}}]},
            "test_cases",
            "expect.deny must be a list of messages or a count",
        ),
        (
            {"test_cases": [{"input": {}, "expect": {"allow": 1}}]},
            "test_cases",
            "unknown expect key",
        ),
    ],
)
def test_invalid_fields_are_refused(admin_user, prod, kwargs, field, text):
    with pytest.raises(policies.PolicyInvalid) as excinfo:
        make(admin_user, **kwargs)
    assert excinfo.value.field == field
    assert text in str(excinfo.value)
    assert not Policy.objects.exists()


def test_names_are_unique(admin_user):
    make(admin_user)
    with pytest.raises(policies.PolicyInvalid, match="already exists"):
        make(admin_user)


# --- drafts -------------------------------------------------------------------------------


def test_saving_a_draft_does_not_change_the_published_version(admin_user, prod):
    policy = make(admin_user, test_cases=CASES)
    v1 = policies.publish_policy(policy, actor=admin_user)
    policies.save_draft(policy, actor=admin_user, source=SOURCE_V2, enforcement="advisory")
    policy.refresh_from_db()
    assert policy.current_version == v1
    assert policy.current_version.source == SOURCE
    assert policy.current_version.enforcement == "hard-mandatory"
    assert policy.source == SOURCE_V2 and policy.enforcement == "advisory"
    assert policy.has_unpublished_changes
    event = last_event()
    assert event.action == "policy.update"
    assert event.details["changes"]["enforcement"] == {"from": "hard-mandatory", "to": "advisory"}
    assert event.details["changes"]["source"]["sha256"] == policies.source_sha256(SOURCE_V2)


def test_a_draft_that_does_not_compile_is_not_saved(admin_user):
    policy = make(admin_user)
    events = AuditEvent.objects.count()
    with pytest.raises(policies.PolicyCompileError):
        policies.save_draft(policy, actor=admin_user, source=SYNTAX_ERROR, enforcement="advisory")
    policy.refresh_from_db()
    assert policy.source == SOURCE and policy.enforcement == "hard-mandatory"
    assert AuditEvent.objects.count() == events


def test_saving_nothing_new_writes_nothing(admin_user):
    policy = make(admin_user)
    events = AuditEvent.objects.count()
    policies.save_draft(policy, actor=admin_user, source=SOURCE, enforcement="hard-mandatory")
    assert AuditEvent.objects.count() == events


def test_scope_changes_are_audited(admin_user, prod, staging):
    policy = make(admin_user, environments=[prod])
    policies.save_draft(policy, actor=admin_user, environments=["staging"], tiers=["production"])
    assert list(policy.environments.all()) == [staging]
    assert policy.tiers == ["production"]
    changes = last_event().details["changes"]
    assert changes["environments"] == {"from": ["production"], "to": ["staging"]}
    assert changes["tiers"] == {"from": [], "to": ["production"]}


def test_disable_keeps_the_policy_and_its_versions(admin_user):
    policy = make(admin_user, test_cases=CASES)
    policies.publish_policy(policy, actor=admin_user)
    policies.disable_policy(policy, actor=admin_user)
    policy.refresh_from_db()
    assert not policy.enabled
    assert policy.versions.count() == 1
    assert last_event().action == "policy.disable"
    policies.save_draft(policy, actor=admin_user, enabled=True)
    assert last_event().action == "policy.enable"


def test_in_scope_by_environment_and_by_tier(admin_user, prod, staging):
    by_env = make(admin_user, name="by-env", environments=["production"])
    by_tier = make(admin_user, name="by-tier", tiers=["staging", "production"])
    make(admin_user, name="nowhere")
    assert set(policies.in_scope(prod)) == {by_env, by_tier}
    assert set(policies.in_scope(staging)) == {by_tier}


# --- publish ------------------------------------------------------------------------------


def test_publish_creates_an_immutable_version_and_audits_a_diff(admin_user):
    policy = make(admin_user, test_cases=CASES)
    at = timezone.now() - timedelta(days=1)
    v1 = policies.publish_policy(policy, actor=admin_user, now=at)
    assert (v1.number, v1.source, v1.enforcement, v1.author) == (
        1,
        SOURCE,
        "hard-mandatory",
        admin_user,
    )
    assert v1.sha256 == hashlib.sha256(SOURCE.encode()).hexdigest()
    assert v1.created_at == at
    assert [r["passed"] for r in v1.test_results] == [True, True]
    policy.refresh_from_db()
    assert policy.current_version == v1 and not policy.has_unpublished_changes
    event = last_event()
    assert event.action == "policy.publish" and event.outcome == Outcome.SUCCESS
    assert event.details["version"] == 1
    assert event.details["diff"] == {"added": len(SOURCE.splitlines()), "removed": 0}
    assert event.details["tests"] == {"passed": 2, "total": 2}

    cases_v2 = [*CASES, {"name": "release warns", "input": doc("release"), "expect": {"warn": 1}}]
    cases_v2[1] = {
        "name": "feature denies",
        "input": doc("feature-x"),
        "expect": {"deny": ["branch feature-x is not main or release"]},
    }
    policies.save_draft(policy, actor=admin_user, source=SOURCE_V2, test_cases=cases_v2)
    v2 = policies.publish_policy(policy, actor=admin_user)
    assert v2.number == 2
    policy.refresh_from_db()
    assert policy.current_version == v2
    details = last_event().details
    assert details["version"] == 2 and details["previous_version"] == 1
    assert details["diff"] == {"added": 4, "removed": 2}
    v1.refresh_from_db()
    assert v1.source == SOURCE  # the old version is untouched


def test_a_failing_test_case_blocks_publishing(admin_user):
    broken_cases = [
        CASES[0],
        {"name": "expects the wrong text", "input": doc("dev"), "expect": {"deny": ["nope"]}},
    ]
    policy = make(admin_user, test_cases=broken_cases)
    with pytest.raises(policies.PolicyTestFailure) as excinfo:
        policies.publish_policy(policy, actor=admin_user)
    failure = excinfo.value
    assert [r["name"] for r in failure.failed] == ["expects the wrong text"]
    assert len(failure.results) == 2
    assert "1 of 2 test case(s) failed" in str(failure)
    assert "expects the wrong text" in str(failure) and "branch dev is not main" in str(failure)
    assert not PolicyVersion.objects.exists()
    policy.refresh_from_db()
    assert policy.current_version is None
    event = last_event()
    assert (event.action, event.outcome) == ("policy.publish", Outcome.FAILURE)
    assert event.details["failed"] == ["expects the wrong text"]


def test_publishing_an_unchanged_draft_is_refused(admin_user):
    policy = make(admin_user, test_cases=CASES)
    policies.publish_policy(policy, actor=admin_user)
    with pytest.raises(policies.PolicyUnchanged, match="same as version 1"):
        policies.publish_policy(policy, actor=admin_user)
    policies.save_draft(policy, actor=admin_user, enforcement="soft-mandatory")
    v2 = policies.publish_policy(policy, actor=admin_user)
    assert (v2.number, v2.enforcement) == (2, "soft-mandatory")
    assert last_event().details["diff"] == {"added": 0, "removed": 0}


# A policy without a denying and a passing case is not published:
# tests/governance/test_policy_publish_requires_cases.py.

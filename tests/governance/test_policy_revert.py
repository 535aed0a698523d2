"""Revert to an earlier version: on the policy page (recent versions) and the version
history, "Revert to vN" makes the draft equal to version N (source and enforcement; test
cases are not versioned and stay), audited as policy.revert. Publishing it stays the normal
publish path. Refusals are audited too."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from governance import policies, rego
from governance.models import AuditEvent, Outcome, Policy

pytestmark = pytest.mark.django_db

V1 = """package clearway.version

import rego.v1

deny contains msg if {
	input.run.parameters.version == "2.0.0"
	msg := "version 2.0.0 is withdrawn"
}
"""

V2 = V1.replace('== "2.0.0"', 'in {"2.0.0", "2.0.1"}')


def case(name, version, deny):
    doc = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    doc["run"]["parameters"]["version"] = version
    return {"name": name, "input": doc, "expect": {"deny": deny}}


CASES = [
    case("2.0.0 is refused", "2.0.0", ["version 2.0.0 is withdrawn"]),
    case("1.0.0 passes", "1.0.0", []),
]


@pytest.fixture
def policy(make_policy, publish_version, production):
    policy = make_policy("version", V1, "soft-mandatory")
    publish_version(policy, V2, "hard-mandatory")
    Policy.objects.filter(pk=policy.pk).update(test_cases=CASES)
    policy.refresh_from_db()
    return policy


@pytest.fixture
def editor(policy_admin) -> Client:
    client = Client()
    client.force_login(policy_admin)
    return client


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()


def test_the_policy_page_offers_revert_for_other_versions(editor, policy):
    page = editor.get(f"/policies/{policy.pk}/").content.decode()
    assert "Revert to v1" in page
    assert "Revert to v2" not in page and "the draft is v2" in page
    history = editor.get(f"/policies/{policy.pk}/versions/").content.decode()
    assert "Revert to v1" in history and "the draft is v2" in history


def test_revert_makes_the_draft_equal_to_that_version_and_is_audited(editor, policy):
    response = editor.post(f"/policies/{policy.pk}/revert/", {"version": "1"}, follow=True)
    assert response.status_code == 200
    assert "The draft is now version 1" in response.content.decode()
    policy.refresh_from_db()
    v1 = policy.versions.get(number=1)
    assert (policy.source, policy.enforcement) == (v1.source, v1.enforcement)
    assert policy.test_cases == CASES  # not versioned: unchanged
    assert policy.current_version.number == 2  # gates keep v2 until the draft is published
    event = last("policy.revert")
    assert event.outcome == Outcome.SUCCESS and event.actor_name == "paula"
    assert event.details["version"] == 1 and event.details["sha256"] == v1.sha256
    assert event.details["enforcement"] == {"from": "hard-mandatory", "to": "soft-mandatory"}
    assert event.details["current_version"] == 2
    assert audit_chain_ok()
    # the page now says the draft is v1
    page = editor.get(f"/policies/{policy.pk}/").content.decode()
    assert "the draft is v1" in page and "Revert to v2" in page


def test_publishing_the_reverted_draft_is_the_normal_publish(editor, policy, policy_admin):
    policies.revert_to_version(policy, 1, actor=policy_admin)
    version = policies.publish_policy(policy, actor=policy_admin)
    assert version.number == 3 and version.source == V1 and version.enforcement == "soft-mandatory"
    assert last("policy.publish").details["previous_version"] == 2


def test_reverting_to_the_draft_itself_or_an_unknown_version_is_refused_and_audited(editor, policy):
    page = editor.post(f"/policies/{policy.pk}/revert/", {"version": "2"}, follow=True)
    assert "nothing to revert" in page.content.decode()
    refused = last("policy.revert")
    assert refused.outcome == Outcome.FAILURE and refused.details["version"] == 2
    page = editor.post(f"/policies/{policy.pk}/revert/", {"version": "9"}, follow=True)
    assert "has no version 9" in page.content.decode()
    assert last("policy.revert").details["version"] == 9
    policy.refresh_from_db()
    assert policy.source == V2
    assert editor.post(f"/policies/{policy.pk}/revert/", {"version": "v1"}).status_code == 400


def test_readers_may_not_revert(client, viewer, policy):
    client.force_login(viewer)
    assert client.post(f"/policies/{policy.pk}/revert/", {"version": "1"}).status_code == 403
    assert "Revert to v1" not in client.get(f"/policies/{policy.pk}/").content.decode()
    policy.refresh_from_db()
    assert policy.source == V2
    assert client.get(f"/policies/{policy.pk}/revert/").status_code == 405


def audit_chain_ok() -> bool:
    from governance import audit

    return audit.verify().ok

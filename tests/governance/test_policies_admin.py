"""The Policy admin saves through the policy verbs: compile errors show in the form with line
and column and nothing is saved; saves are audited; policies are never deleted."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from governance import policies
from governance.models import AuditEvent, Environment, Policy, Tier

pytestmark = pytest.mark.django_db

SOURCE = """package clearway.branch

import rego.v1

deny contains "not main" if input.run.parameters.branch != "main"
"""

BROKEN = """package clearway.branch

import rego.v1

deny contains msg if {
	msg := "x")
}
"""


def _case(name: str, branch: str, deny: list[str]) -> dict:
    from governance import rego

    doc = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    doc["run"]["parameters"]["branch"] = branch
    return {"name": name, "input": doc, "expect": {"deny": deny}}


# Publishing needs a case that denies and one that passes.
CASES = [_case("feature denies", "feature", ["not main"]), _case("main passes", "main", [])]

INLINE = {
    "versions-TOTAL_FORMS": "0",
    "versions-INITIAL_FORMS": "0",
    "versions-MIN_NUM_FORMS": "0",
    "versions-MAX_NUM_FORMS": "1000",
}


@pytest.fixture
def prod():
    return Environment.objects.create(name="production", tier=Tier.PRODUCTION, protected=True)


@pytest.fixture
def policy_admin(client):
    user = get_user_model().objects.create_user("paula", is_staff=True)
    user.groups.add(Group.objects.get(name="policy-admin"))
    client.force_login(user)
    return user


def form_data(prod, **overrides) -> dict:
    data = {
        "name": "branch",
        "description": "main only",
        "enforcement": "hard-mandatory",
        "environments": [str(prod.pk)],
        "tiers": ["staging"],
        "enabled": "on",
        "source": SOURCE,
        "test_cases": "[]",
        **INLINE,
    }
    data.update(overrides)
    return data


def test_a_compile_error_is_shown_with_line_and_column_and_nothing_is_saved(
    client, policy_admin, prod
):
    events = AuditEvent.objects.count()
    response = client.post("/admin/governance/policy/add/", form_data(prod, source=BROKEN))
    assert response.status_code == 200  # the form again, with errors
    errors = response.context["adminform"].form.errors["source"]
    assert (
        "line 6, column 12: rego_parse_error: unexpected ) token: expected \\n or ; or }" in errors
    )
    assert "line 6, column 12" in response.content.decode()
    assert not Policy.objects.exists()
    assert AuditEvent.objects.count() == events


def test_bad_test_cases_are_shown_on_their_field(client, policy_admin, prod):
    data = form_data(prod, test_cases=json.dumps([{"name": "no input"}]))
    response = client.post("/admin/governance/policy/add/", data)
    assert response.status_code == 200
    assert "needs an input object" in str(response.context["adminform"].form.errors)
    assert not Policy.objects.exists()


def test_adding_creates_the_policy_through_the_verb(client, policy_admin, prod):
    response = client.post("/admin/governance/policy/add/", form_data(prod))
    assert response.status_code == 302, (
        response.context and response.context["adminform"].form.errors
    )
    policy = Policy.objects.get(name="branch")
    assert policy.source == SOURCE and policy.tiers == ["staging"]
    assert list(policy.environments.all()) == [prod]
    assert policy.current_version is None
    event = AuditEvent.objects.filter(action="policy.create").get()
    assert event.actor_name == "paula" and event.details["environments"] == ["production"]


def test_changing_saves_a_draft_and_keeps_the_published_version(client, policy_admin, prod):
    policy = policies.create_policy(
        actor=policy_admin,
        name="branch",
        source=SOURCE,
        enforcement="hard-mandatory",
        test_cases=CASES,
    )
    v1 = policies.publish_policy(policy, actor=policy_admin)
    new_source = SOURCE.replace('"not main"', '"only main"')
    data = form_data(prod, source=new_source, enforcement="advisory", test_cases=json.dumps(CASES))
    data.pop("name")
    data.update({"versions-TOTAL_FORMS": "1", "versions-INITIAL_FORMS": "1"})
    response = client.post(f"/admin/governance/policy/{policy.pk}/change/", data)
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.source == new_source and policy.enforcement == "advisory"
    assert policy.current_version == v1
    assert AuditEvent.objects.filter(action="policy.update").count() == 1


def test_a_broken_change_is_not_saved(client, policy_admin, prod):
    policy = policies.create_policy(
        actor=policy_admin, name="branch", source=SOURCE, enforcement="hard-mandatory"
    )
    data = form_data(prod, source=BROKEN)
    data.pop("name")
    response = client.post(f"/admin/governance/policy/{policy.pk}/change/", data)
    assert response.status_code == 200
    assert "line 6, column 12" in str(response.context["adminform"].form.errors["source"])
    policy.refresh_from_db()
    assert policy.source == SOURCE


def test_policies_cannot_be_deleted_in_the_admin(client, prod):
    root = get_user_model().objects.create_superuser("root")
    client.force_login(root)
    policy = policies.create_policy(
        actor=root, name="branch", source=SOURCE, enforcement="advisory"
    )
    response = client.post(f"/admin/governance/policy/{policy.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Policy.objects.filter(pk=policy.pk).exists()


def test_the_publish_action_proposes_a_change_request(
    client, policy_admin, second_policy_admin, prod
):
    from governance import change_requests

    policy = policies.create_policy(
        actor=policy_admin, name="branch", source=SOURCE, enforcement="advisory", test_cases=CASES
    )
    response = client.post(
        "/admin/governance/policy/",
        {"action": "publish_selected", "_selected_action": [str(policy.pk)]},
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.current_version is None  # waits for a second policy admin
    change_requests.approve(
        change_requests.pending_for(second_policy_admin).get(), actor=second_policy_admin
    )
    policy.refresh_from_db()
    assert policy.current_version.number == 1


def test_the_change_page_shows_the_versions(client, policy_admin, prod):
    policy = policies.create_policy(
        actor=policy_admin, name="branch", source=SOURCE, enforcement="advisory", test_cases=CASES
    )
    policies.publish_policy(policy, actor=policy_admin)
    root = get_user_model().objects.create_superuser("root")
    client.force_login(root)
    page = client.get(f"/admin/governance/policy/{policy.pk}/change/")
    assert page.status_code == 200
    assert policy.current_version.sha256 in page.content.decode()

"""Who may see and do what on the governance pages (policies, environments, audit log): a
role × page table, allowed and denied. Everyone signed in reads policies and environments;
changing them needs the policy-admin role (or change_environment) and is 403 otherwise; the
audit log is for compliance managers (403 for others); missing objects are 404; anonymous
visitors are sent to the login page."""

from __future__ import annotations

import pytest
from django.test import Client

from governance.models import ApprovalRule, AuditEvent, Policy

pytestmark = pytest.mark.django_db

SOURCE = """package clearway.ticket

import rego.v1

deny contains "no change ticket" if { not input.run.parameters.ticket }
"""

ROLES = [
    "viewer",
    "developer",
    "approver",
    "outsider",
    "policy_admin",
    "compliance_manager",
    "superuser",
]
EDITORS = {"policy_admin", "superuser"}  # can_edit_policies; also change_environment
AUDITORS = {"compliance_manager", "superuser"}  # can_view_audit


def everyone(role: str) -> int:
    return 200


def editors(ok: int):
    return lambda role: ok if role in EDITORS else 403


def auditors(role: str) -> int:
    return 200 if role in AUDITORS else 403


def policy_form(action: str, **extra) -> dict:
    return {
        "action": action,
        "description": "Deploys need a change ticket.",
        "enforcement": "soft-mandatory",
        "environments": ["production"],
        "enabled": "on",
        "source": SOURCE,
        "test_cases": "[]",
        "days": "30",
        **extra,
    }


def environment_form(**changes) -> dict:
    """The production edit form as the page posts it (the stored rules as initial rows, one
    blank extra row), with `changes` applied."""
    rules = list(ApprovalRule.objects.filter(environment__name="production").order_by("pk"))
    data = {
        "env-tier": "production",
        "env-protected": "on",
        "env-timezone": "UTC",
        "env-approval_ttl_hours": "12",
        "env-reminder_minutes": "60",
        "env-notify_webhook_url": "",
        "rules-TOTAL_FORMS": str(len(rules) + 1),
        "rules-INITIAL_FORMS": str(len(rules)),
        "freeze-TOTAL_FORMS": "0",
        "freeze-INITIAL_FORMS": "0",
        "change-TOTAL_FORMS": "0",
        "change-INITIAL_FORMS": "0",
    }
    for i, rule in enumerate(rules):
        data[f"rules-{i}-group"] = str(rule.group_id)
        data[f"rules-{i}-required_count"] = str(rule.required_count)
    data[f"rules-{len(rules)}-group"] = ""
    data[f"rules-{len(rules)}-required_count"] = ""
    return {**data, **changes}


# name: (method, url, data, htmx, expectation by role). Run in this order for each role.
ACTIONS = {
    "policies": ("get", "/policies/", None, False, everyone),
    "policy": ("get", "/policies/{policy}/", None, False, everyone),
    "policy_versions": ("get", "/policies/{policy}/versions/", None, False, everyone),
    "policy_missing": ("get", "/policies/999999/", None, False, lambda role: 404),
    "versions_missing": ("get", "/policies/{policy}/versions/?to=7", None, False, lambda r: 404),
    "policy_new": ("get", "/policies/new/", None, False, editors(200)),
    "policy_create": (
        "post",
        "/policies/new/",
        policy_form("save", name="created-on-page"),
        False,
        editors(302),
    ),
    "policy_test": ("post", "/policies/{policy}/", policy_form("test"), True, editors(200)),
    "policy_dry_run": ("post", "/policies/{policy}/", policy_form("dry-run"), True, editors(200)),
    "policy_save": ("post", "/policies/{policy}/", policy_form("save"), False, editors(302)),
    "policy_publish": ("post", "/policies/{policy}/", policy_form("publish"), False, editors(302)),
    "environments": ("get", "/environments/", None, False, everyone),
    "environment": ("get", "/environments/production/", None, False, everyone),
    "environment_missing": ("get", "/environments/nowhere/", None, False, lambda role: 404),
    "environment_edit": (
        "post",
        "/environments/production/",
        environment_form,
        False,
        editors(302),
    ),
    "audit": ("get", "/audit/", None, False, auditors),
    "audit_filtered": ("get", "/audit/?action=policy.*", None, False, auditors),
    "audit_verify": ("get", "/audit/verify/", None, True, auditors),
}


@pytest.fixture
def people(users, superuser) -> dict:
    return {**users, "superuser": superuser}


@pytest.fixture
def policy(make_policy):
    return make_policy("ticket", SOURCE, "soft-mandatory")


def request(client: Client, method: str, url: str, data, htmx: bool):
    headers = {"HX-Request": "true"} if htmx else {}
    if callable(data):
        data = data()
    if method == "get":
        return client.get(url, headers=headers)
    return client.post(url, data, headers=headers)


@pytest.mark.parametrize("role", ROLES)
def test_role_table(role, people, policy, environments):
    """Every page and action for one role (one set-up per role keeps the table fast)."""
    client = Client()
    client.force_login(people[role])
    got, wanted = {}, {}
    for name, (method, url, data, htmx, expected) in ACTIONS.items():
        response = request(client, method, url.format(policy=policy.pk), data, htmx)
        got[name] = response.status_code
        wanted[name] = expected(role)
    assert got == wanted


@pytest.mark.parametrize("role", [r for r in ROLES if r not in EDITORS])
def test_refused_changes_change_nothing(role, people, policy, production):
    client = Client()
    client.force_login(people[role])
    client.post(f"/policies/{policy.pk}/", policy_form("save", enforcement="advisory"))
    client.post("/environments/production/", environment_form())
    policy.refresh_from_db()
    production.refresh_from_db()
    assert policy.enforcement == "soft-mandatory"
    assert production.approval_ttl_hours == 24
    assert production.approval_rules.count() == 2
    assert not AuditEvent.objects.filter(action="environment.update").exists()


def test_readers_get_a_read_only_policy_page(viewer, policy_admin, policy):
    reader, editor = Client(), Client()
    reader.force_login(viewer)
    editor.force_login(policy_admin)
    page = reader.get(f"/policies/{policy.pk}/").content.decode()
    assert 'id="policy-form"' not in page and "no change ticket" in page
    assert 'id="policy-form"' in editor.get(f"/policies/{policy.pk}/").content.decode()


def test_environment_form_only_for_admins(viewer, policy_admin, environments):
    reader, admin = Client(), Client()
    reader.force_login(viewer)
    admin.force_login(policy_admin)
    assert 'id="environment-form"' not in reader.get("/environments/production/").content.decode()
    assert 'id="environment-form"' in admin.get("/environments/production/").content.decode()


@pytest.mark.parametrize(
    "url",
    ["/policies/", "/policies/new/", "/environments/", "/environments/production/", "/audit/"],
)
def test_anonymous_goes_to_login(url, environments):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_navigation_links(viewer, compliance_manager, environments):
    reader, auditor = Client(), Client()
    reader.force_login(viewer)
    auditor.force_login(compliance_manager)
    page = reader.get("/policies/").content.decode()
    assert 'href="/policies/"' in page and 'href="/environments/"' in page
    assert 'href="/audit/"' not in page
    assert 'href="/audit/"' in auditor.get("/policies/").content.decode()


def test_created_policy_exists_only_for_editors(people, policy_admin, viewer, environments):
    editor, reader = Client(), Client()
    editor.force_login(policy_admin)
    reader.force_login(viewer)
    reader.post("/policies/new/", policy_form("save", name="by-viewer"))
    editor.post("/policies/new/", policy_form("save", name="by-admin"))
    assert set(Policy.objects.values_list("name", flat=True)) == {"by-admin"}

"""The environment pages: the list, the detail (rules, windows, who may approve), and the
admin's edit form: validated, saved in one transaction, audited as "environment.update" with
what changed."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from guardian.shortcuts import assign_perm

from governance import change_requests
from governance.forms import fingerprint
from governance.models import ApprovalRule, AuditEvent, Environment

pytestmark = pytest.mark.django_db


class FourEyesClient(Client):
    """paula's browser, with pierre approving each change request her save proposes (an
    environment edit takes effect only on a second admin's approval)."""

    reviewer = None

    def post(self, *args, **kwargs):
        response = super().post(*args, **kwargs)
        for proposed in change_requests.pending_for(self.reviewer):
            change_requests.approve(proposed, actor=self.reviewer)
        return response


@pytest.fixture
def admin(policy_admin, second_policy_admin) -> Client:
    client = FourEyesClient()
    client.reviewer = second_policy_admin
    client.force_login(policy_admin)
    return client


def test_a_save_is_proposed_and_waits_for_a_second_admin(policy_admin, production):
    client = Client()
    client.force_login(policy_admin)
    response = client.post(
        "/environments/production/", edit_form(production, approval_ttl_hours="1"), follow=True
    )
    assert "Your change waits for a second environment admin" in response.content.decode()
    production.refresh_from_db()
    assert production.approval_ttl_hours == 24
    assert not AuditEvent.objects.filter(action="environment.update").exists()


def edit_form(env: Environment, *, rules=None, freeze=(), change=(), **settings) -> dict:
    """The form as the page posts it for `env`: its stored values with `settings` applied,
    `rules` ({group name: count}; default: as stored), freeze and change windows."""
    if rules is None:
        rules = {r.group.name: r.required_count for r in env.approval_rules.all()}
    data = {
        "env-loaded": fingerprint(env),
        "env-tier": env.tier,
        "env-timezone": env.timezone,
        "env-approval_ttl_hours": str(env.approval_ttl_hours),
        "env-reminder_minutes": str(env.reminder_minutes),
        "env-notify_webhook_url": env.notify_webhook_url,
    }
    if env.protected:
        data["env-protected"] = "on"
    data.update({f"env-{k}": v for k, v in settings.items()})
    stored = env.approval_rules.count()
    rows = [(Group.objects.get(name=g).pk, n) for g, n in rules.items()]
    data["rules-TOTAL_FORMS"] = str(max(len(rows), stored) + 1)
    data["rules-INITIAL_FORMS"] = str(stored)
    for i in range(max(len(rows), stored) + 1):
        group, count = rows[i] if i < len(rows) else ("", "")
        data[f"rules-{i}-group"], data[f"rules-{i}-required_count"] = str(group), str(count)
        if i < stored and i >= len(rows):
            data[f"rules-{i}-DELETE"] = "on"
    for prefix, rows in (("freeze", freeze), ("change", change)):
        data[f"{prefix}-TOTAL_FORMS"] = str(len(rows))
        data[f"{prefix}-INITIAL_FORMS"] = "0"
        for i, row in enumerate(rows):
            for key, value in row.items():
                data[f"{prefix}-{i}-{key}"] = value
    return data


def test_list_shows_protection_and_rules(admin, environments):
    page = admin.get("/environments/").content.decode()
    row = re.search(r'<tr data-environment="production">.*?</tr>', page, re.S).group(0)
    assert "protected" in row
    assert "1 from security <strong>and</strong> 2 from sre" in row
    assert "after 24 h" in row


def test_detail_shows_who_may_approve_and_override(client, viewer, production, make_user):
    someone = make_user("ursula")
    assign_perm("governance.approve_environment", someone, production)
    client.force_login(viewer)
    page = client.get("/environments/production/").content.decode()
    approve = re.search(r"<dt>Approve</dt>\s*<dd>(.*?)</dd>", page, re.S).group(1)
    override = re.search(r"<dt>Override \(break-glass\)</dt>\s*<dd>(.*?)</dd>", page, re.S)
    assert "groups security, sre" in approve and "users ursula" in approve
    assert "groups sre" in override.group(1) and "security" not in override.group(1)
    assert "cannot be met" not in page
    assert 'id="environment-form"' not in page


def test_rule_without_approvers_is_flagged(client, viewer, production, roles):
    ApprovalRule.objects.create(environment=production, group=roles["developer"])
    client.force_login(viewer)
    page = client.get("/environments/production/").content.decode()
    assert "“1 from developer” cannot be met" in page


def test_edit_is_saved_and_audited_with_a_diff(admin, production, policy_admin):
    freeze = {"start": "2026-12-20T00:00", "end": "2027-01-03T23:59", "reason": "Year end"}
    change = {"days": ["0", "1", "2"], "start": "08:00", "end": "18:00"}
    data = edit_form(
        production,
        rules={"sre": 1, "security": 1},
        freeze=[freeze],
        change=[change],
        approval_ttl_hours="8",
        timezone="Europe/Berlin",
    )
    response = admin.post("/environments/production/", data)
    assert response.status_code == 302
    production.refresh_from_db()
    assert production.approval_ttl_hours == 8 and production.timezone == "Europe/Berlin"
    assert production.freeze_windows == [
        {
            "start": "2026-12-20T00:00:00+00:00",
            "end": "2027-01-03T23:59:00+00:00",
            "reason": "Year end",
        }
    ]
    assert production.change_windows == [{"days": [0, 1, 2], "start": "08:00", "end": "18:00"}]
    assert {r.group.name: r.required_count for r in production.approval_rules.all()} == {
        "sre": 1,
        "security": 1,
    }
    event = AuditEvent.objects.get(action="environment.update")
    assert event.details["proposed_by"] == policy_admin.username
    assert event.actor_name == event.details["approved_by"] == "pierre"
    assert (event.target_type, event.target_name) == ("environment", "production")
    changes = event.details["changes"]
    assert changes["approval_ttl_hours"] == {"from": 24, "to": 8}
    assert changes["timezone"] == {"from": "UTC", "to": "Europe/Berlin"}
    assert changes["approval_rules"] == {
        "from": {"security": 1, "sre": 2},
        "to": {"security": 1, "sre": 1},
    }
    assert changes["freeze_windows"]["from"] == [] and len(changes["freeze_windows"]["to"]) == 1
    assert "tier" not in changes and "protected" not in changes


def test_rules_can_be_added_and_removed(admin, production, roles):
    admin.post("/environments/production/", edit_form(production, rules={"security": 1}))
    assert list(production.approval_rules.values_list("group__name", flat=True)) == ["security"]
    production.refresh_from_db()
    admin.post(
        "/environments/production/", edit_form(production, rules={"security": 1, "approver": 3})
    )
    rules = {r.group.name: r.required_count for r in production.approval_rules.all()}
    assert rules == {"approver": 3, "security": 1}
    assert AuditEvent.objects.filter(action="environment.update").count() == 2


def test_webhook_url_is_not_written_to_the_log(admin, production):
    url = "https://hooks.example.test/T000/secret-token"
    admin.post("/environments/production/", edit_form(production, notify_webhook_url=url))
    production.refresh_from_db()
    assert production.notify_webhook_url == url
    event = AuditEvent.objects.get(action="environment.update")
    assert "secret-token" not in str(event.details)
    assert event.details["changes"]["notify_webhook_url"] == {"changed": True, "set": True}


def test_saving_without_changes_records_nothing(admin, production):
    response = admin.post("/environments/production/", edit_form(production), follow=True)
    assert "No changes." in response.content.decode()
    assert not AuditEvent.objects.filter(action="environment.update").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"timezone": "Mars/Olympus"}, "is not a time zone"),
        ({"approval_ttl_hours": "-1"}, "greater than or equal to 0"),
        (
            {"freeze": [{"start": "2026-12-20T00:00", "end": "2026-12-19T00:00", "reason": "x"}]},
            "The end must be after the start.",
        ),
        (
            {"freeze": [{"start": "next week", "end": "2026-12-19T00:00", "reason": "x"}]},
            "Enter a date and time",
        ),
        (
            {"freeze": [{"start": "2026-12-20T00:00", "end": "2026-12-21T00:00", "reason": ""}]},
            "This field is required.",
        ),
        ({"change": [{"days": ["0"], "start": "8", "end": "18:00"}]}, "Use HH:MM"),
        ({"change": [{"start": "08:00", "end": "18:00"}]}, "This field is required."),
        ({"change": [{"days": ["0"], "start": "08:00", "end": "08:00"}]}, "are the same"),
        ({"rules": {"sre": 0}}, "greater than or equal to 1"),
    ],
)
def test_invalid_edits_show_errors_and_save_nothing(admin, production, change, message):
    before = (fingerprint(production), AuditEvent.objects.count())
    response = admin.post("/environments/production/", edit_form(production, **change))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="environment-errors"' in page and message in page
    production.refresh_from_db()
    assert (fingerprint(production), AuditEvent.objects.count()) == before


def test_same_group_twice_is_refused(admin, production, roles):
    data = edit_form(production)
    data["rules-2-group"], data["rules-2-required_count"] = str(roles["sre"].pk), "1"
    response = admin.post("/environments/production/", data)
    assert response.status_code == 200
    assert "sre already has a rule" in response.content.decode()
    assert production.approval_rules.count() == 2


def test_a_stale_form_does_not_undo_a_newer_change(admin, production, roles):
    stale = edit_form(production, approval_ttl_hours="6")
    ApprovalRule.objects.create(environment=production, group=roles["approver"])  # meanwhile
    response = admin.post("/environments/production/", stale)
    assert response.status_code == 200
    assert "changed by someone else" in response.content.decode()
    production.refresh_from_db()
    assert production.approval_ttl_hours == 24 and production.approval_rules.count() == 3
    assert not AuditEvent.objects.filter(action="environment.update").exists()


def test_list_query_count_does_not_grow(admin, environments, django_assert_max_num_queries):
    admin.get("/environments/")
    with django_assert_max_num_queries(12) as small:
        admin.get("/environments/")
    for n in range(15):
        env = Environment.objects.create(name=f"region-{n}", protected=True)
        ApprovalRule.objects.create(environment=env, group=Group.objects.get(name="sre"))
    with django_assert_max_num_queries(len(small)):
        admin.get("/environments/")


def test_malformed_windows_do_not_break_the_page(admin, production):
    """Windows edited by hand in the admin's raw JSON: the page still renders (gates fail
    closed on them, and the page says so)."""
    Environment.objects.filter(pk=production.pk).update(
        freeze_windows=["not a window", {"start": "soon", "end": None}],
        change_windows=[{"days": [9, "x"], "start": "25:00", "end": "08:00"}, 7],
    )
    response = admin.get("/environments/production/")
    assert response.status_code == 200
    assert "its windows are malformed" in response.content.decode()
    assert admin.get("/environments/").status_code == 200


def test_saving_keeps_the_seconds_of_a_freeze_window(admin, production):
    """Issue 18 point 7: the year-end freeze ends at 23:59:59; saving the form for another
    change (the reminder) must leave the window exactly as stored, and the audit event
    mentions only the reminder."""
    stored = {
        "start": "2026-12-20T00:00:00+00:00",
        "end": "2026-12-31T23:59:59+00:00",
        "reason": "Year end",
    }
    production.freeze_windows = [stored]
    production.save(update_fields=["freeze_windows"])
    page = admin.get("/environments/production/").content.decode()
    assert 'value="2026-12-31T23:59:59"' in page and 'step="1"' in page
    shown = {"start": "2026-12-20T00:00:00", "end": "2026-12-31T23:59:59", "reason": "Year end"}
    response = admin.post(
        "/environments/production/", edit_form(production, freeze=[shown], reminder_minutes="90")
    )
    assert response.status_code == 302
    production.refresh_from_db()
    assert production.freeze_windows == [stored]
    assert production.reminder_minutes == 90
    event = AuditEvent.objects.filter(action="environment.update").get()
    assert set(event.details["changes"]) == {"reminder_minutes"}

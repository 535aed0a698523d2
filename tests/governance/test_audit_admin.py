"""The audit log's admin is strictly read-only, even for a superuser."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import RequestFactory

from governance import audit
from governance.models import AuditChainHead, AuditEvent, Gate, PolicyDecision, PolicyVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(client):
    user = get_user_model().objects.create_superuser("root")
    client.force_login(user)
    return user


@pytest.fixture
def event():
    return audit.record("dana", "policy.publish", ("policy", 1, "freeze"), version=1)


def test_no_add_change_or_delete_permission(root):
    request = RequestFactory().get("/admin/")
    request.user = root
    for model in (AuditEvent, AuditChainHead, PolicyVersion, PolicyDecision, Gate):
        model_admin = admin.site._registry[model]
        assert not model_admin.has_add_permission(request), model
        assert not model_admin.has_change_permission(request), model
        assert not model_admin.has_delete_permission(request), model
    audit_admin = admin.site._registry[AuditEvent]
    assert set(audit_admin.get_readonly_fields(request)) >= {
        f.name for f in AuditEvent._meta.fields
    }
    assert not audit_admin.get_actions(request)  # no bulk delete


def test_pages_show_but_never_save(client, root, event):
    assert client.get("/admin/governance/auditevent/").status_code == 200
    page = client.get(f"/admin/governance/auditevent/{event.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert event.hash in html and 'name="_save"' not in html
    assert 'name="details"' not in html  # shown as text, not as an input
    count = AuditEvent.objects.count()
    changed = client.post(
        f"/admin/governance/auditevent/{event.pk}/change/",
        {"action": "forged", "details": "{}", "actor_name": "mallory"},
    )
    assert changed.status_code == 403
    assert client.get("/admin/governance/auditevent/add/").status_code == 403
    assert client.post("/admin/governance/auditevent/add/", {"action": "x"}).status_code == 403
    deleted = client.post(f"/admin/governance/auditevent/{event.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 403
    bulk = client.post(
        "/admin/governance/auditevent/",
        {"action": "delete_selected", "_selected_action": [str(event.pk)]},
    )
    assert bulk.status_code in (200, 302)
    assert AuditEvent.objects.count() == count
    assert AuditEvent.objects.get(pk=event.pk).action == "policy.publish"
    assert audit.verify().ok


def test_staff_without_the_audit_permission_see_nothing(client):
    staff = get_user_model().objects.create_user("paula", is_staff=True)
    staff.groups.add(Group.objects.get(name="policy-admin"))
    client.force_login(staff)
    assert client.get("/admin/governance/auditevent/").status_code == 403


def test_the_compliance_manager_may_read(client, event):
    carl = get_user_model().objects.create_user("carl", is_staff=True)
    carl.groups.add(Group.objects.get(name="compliance-manager"))
    client.force_login(carl)
    listing = client.get("/admin/governance/auditevent/")
    assert listing.status_code == 200 and "policy.publish" in listing.content.decode()
    assert client.post(f"/admin/governance/auditevent/{event.pk}/change/", {}).status_code == 403


@pytest.mark.parametrize(
    "model",
    [
        "auditevent",
        "auditchainhead",
        "policy",
        "policyversion",
        "policydecision",
        "environment",
        "gate",
        "approval",
        "override",
        "reportjob",
    ],
)
def test_every_governance_admin_page_renders(client, root, event, model):
    assert client.get(f"/admin/governance/{model}/").status_code == 200

"""The Delegation section of the preferences page (set, refuse with the verb's message,
revoke) and the notification kinds listed there."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance import notifications
from governance.models import AuditEvent, Delegation, Outcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def tom(make_user):
    return make_user("tom", "approver")


def _period(days=3):
    start = timezone.now().replace(second=0, microsecond=0)
    fmt = "%Y-%m-%dT%H:%M"
    return start.strftime(fmt), (start + timedelta(days=days)).strftime(fmt)


def test_the_preference_page_lists_every_kind(approver, client):
    client.force_login(approver)
    html = client.get("/notifications/").content.decode()
    for kind in ("escalated", "timed_out", "run_failed", *notifications.KINDS):
        assert f'value="{kind}"' in html, kind
    assert notifications.KIND_LABELS["run_failed"] in html


def test_an_approver_delegates_and_revokes_on_the_page(approver, tom, production, client):
    client.force_login(approver)
    start, end = _period()
    page = client.post(
        "/notifications/delegation/",
        {"delegate": "tom", "starts_at": start, "ends_at": end, "reason": "on leave"},
    )
    assert page.status_code == 302
    row = Delegation.objects.get()
    assert (row.delegator, row.delegate, row.reason) == (approver, tom, "on leave")
    html = client.get("/notifications/").content.decode()
    assert 'id="delegations-given"' in html and f'data-delegation-id="{row.pk}"' in html

    client.force_login(tom)
    assert (
        "You stand in for: <strong>sam</strong>" in client.get("/notifications/").content.decode()
    )
    assert client.post(f"/notifications/delegation/{row.pk}/revoke/").status_code == 404

    client.force_login(approver)
    assert client.post(f"/notifications/delegation/{row.pk}/revoke/").status_code == 302
    row.refresh_from_db()
    assert row.revoked_at is not None and row.revoked_by == approver


def test_self_delegation_is_refused_on_the_page(approver, production, client):
    client.force_login(approver)
    start, end = _period()
    page = client.post(
        "/notifications/delegation/", {"delegate": "sam", "starts_at": start, "ends_at": end}
    )
    assert page.status_code == 400
    assert "sam cannot delegate to themselves" in page.content.decode()
    assert not Delegation.objects.exists()
    assert AuditEvent.objects.filter(action="delegation.create", outcome=Outcome.DENIED).exists()


def test_an_unknown_colleague_is_a_form_error(approver, production, client):
    client.force_login(approver)
    start, end = _period()
    page = client.post(
        "/notifications/delegation/", {"delegate": "nobody", "starts_at": start, "ends_at": end}
    )
    assert page.status_code == 400 and "no active user is called" in page.content.decode()

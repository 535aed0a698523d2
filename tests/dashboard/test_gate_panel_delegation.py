"""The run page's gate panel for a delegate: tom stands in for sam, gets the "Approve for
sam" button, and his decision reads "tom for sam" on the panel and in the change report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models.functions import Coalesce
from django.utils import timezone

from governance.delegation import create_delegation
from governance.models import Approval
from governance.reports import flatten_change
from governance.reports.rows import iter_changes
from orchestrator.models import StageRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def tom(make_user, approver, production):
    tom = make_user("tom", "viewer")
    now = timezone.now()
    create_delegation(
        actor=approver,
        delegate=tom,
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=2),
        now=now,
    )
    return tom


def test_a_delegate_approves_from_the_panel_and_it_reads_tom_for_sam(run_at_gate, tom, client):
    run, gate = run_at_gate()
    client.force_login(tom)
    html = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="acting-for"' in html and "Approve for sam" in html

    response = client.post(
        f"/runs/{run.pk}/gates/{gate.pk}/decide/", {"decision": "approve", "comment": "ok"}
    )
    assert response.status_code == 302
    approval = Approval.objects.get()
    assert (approval.user, approval.on_behalf_of.username) == (tom, "sam")
    html = client.get(f"/runs/{run.pk}/").content.decode()
    assert '<strong>tom</strong> <span data-role="on-behalf-of">for <strong>sam</strong>' in html

    (row,) = [
        r
        for r in iter_changes(
            StageRun.objects.filter(pk=gate.stage_run_id).annotate(
                requested_at=Coalesce("gate__created_at", "started_at")
            )
        )
        if r["gate_id"] == gate.pk
    ]
    assert row["approvals"][0]["user"] == "tom" and row["approvals"][0]["on_behalf_of"] == "sam"
    assert flatten_change(row)["approvals"].startswith("tom for sam (sre) approve")


def test_without_a_delegation_a_viewer_gets_no_button(run_at_gate, make_user, client):
    run, gate = run_at_gate()
    client.force_login(make_user("vera", "viewer"))
    html = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="approve-form"' not in html and "acting-for" not in html

"""The audit log export and the exporter's scope. A custom role with export rights but a
team-scoped view of pipelines once got the whole audit log. The audit log is exported whole
or not at all (docs/reports.md), so its export needs the installation-wide audit permission
(governance.view_auditevent) on top of export rights; a refusal is audited."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from governance.models import AuditEvent

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    api_for,
    people_fixture,
)


@pytest.fixture
def team_exporter(people, make_user):
    """Export rights, and the developer role's team-scoped view of pipelines."""
    role, _ = Group.objects.get_or_create(name="team-reporter")
    role.permissions.add(Permission.objects.get(codename="export_reports"))
    user = make_user("tina", "team-reporter", *[g.name for g in people["developer"].groups.all()])
    return user


def test_export_rights_alone_do_not_export_the_audit_log(team_exporter):
    response = api_for(team_exporter).get("/api/v1/reports/audit?format=ndjson")
    assert response.status_code == 403
    assert "installation-wide audit permission" in response.json()["message"]
    refusal = AuditEvent.objects.filter(action="report.export", actor_name="tina").get()
    assert refusal.outcome == "denied" and refusal.target_id == "audit-log"


def test_the_change_report_stays_open_to_them(team_exporter):
    response = api_for(team_exporter).get("/api/v1/reports/changes?format=json")
    assert response.status_code == 200
    b"".join(response.streaming_content)


def test_the_page_refuses_it_too_and_does_not_offer_it(team_exporter):
    client = Client()
    client.force_login(team_exporter)
    assert client.get("/reports/export/?kind=audit&format=csv").status_code == 403
    page = client.get("/reports/").content.decode()
    assert "needs the installation-wide audit permission" in page
    assert 'value="audit-csv"' not in page


def test_the_compliance_manager_still_exports_it(people):
    response = api_for(people["compliance-manager"]).get("/api/v1/reports/audit?format=ndjson")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)

"""Who may export: every role against every report endpoint and page. Only compliance
managers and superusers; everyone else 403 (anonymous: 401/403 or the login page); another
person's PDF job is 404 even for a compliance manager."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent, ReportJob

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    ROLES,
    api_for,
    people_fixture,
)

ALLOWED = {"compliance-manager", "superuser"}

API = [
    ("get", "/api/v1/reports/changes?format=csv"),
    ("get", "/api/v1/reports/changes?format=json"),
    ("get", "/api/v1/reports/audit?format=csv"),
    ("get", "/api/v1/reports/audit?format=ndjson"),
    ("get", "/api/v1/reports/access?date=2026-01-31"),
    ("get", "/api/v1/reports/pdf/"),
    ("post", "/api/v1/reports/pdf/"),
]
PAGES = ["/reports/", "/reports/jobs/", "/reports/access/", "/reports/export/?format=csv"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "url"), API)
def test_api_permission_table(people, role, method, url):
    response = (
        getattr(api_for(people[role]), method)(url, {}, format="json")
        if method == "post"
        else api_for(people[role]).get(url)
    )
    if role in ALLOWED:
        assert response.status_code in (200, 202), (role, url, response.status_code)
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
    else:
        assert response.status_code == 403, (role, url, response.status_code)
        assert "compliance-manager" in response.json()["message"]


@pytest.mark.parametrize(("method", "url"), API)
def test_api_anonymous_is_refused(db, method, url):
    response = getattr(api_for(None), method)(url)
    assert response.status_code in (401, 403)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("url", PAGES)
def test_page_permission_table(client, people, role, url):
    client.force_login(people[role])
    response = client.get(url)
    if role in ALLOWED:
        assert response.status_code == 200, (role, url)
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
    else:
        assert response.status_code == 403, (role, url)


def test_pages_need_a_login(client, db):
    response = client.get("/reports/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_refused_exports_are_not_audited_as_exports(people):
    api_for(people["developer"]).get("/api/v1/reports/changes")
    assert not AuditEvent.objects.filter(action="report.export").exists()


@pytest.mark.parametrize("role", ["compliance-manager", "superuser", "developer"])
def test_other_peoples_pdf_jobs_are_404(people, role):
    job = ReportJob.objects.create(requested_by=people["compliance-manager"], filters={})
    other = {"compliance-manager": "superuser", "superuser": "compliance-manager"}
    owner = ReportJob.objects.create(requested_by=people[other.get(role, "superuser")], filters={})
    client = api_for(people[role])
    for url in (f"/api/v1/reports/pdf/{owner.pk}/", f"/api/v1/reports/pdf/{owner.pk}/download/"):
        expected = 403 if role == "developer" else 404
        assert client.get(url).status_code == expected
    if role == "compliance-manager":
        assert client.get(f"/api/v1/reports/pdf/{job.pk}/").status_code == 200
        listed = client.get("/api/v1/reports/pdf/").json()["results"]
        assert [j["id"] for j in listed] == [job.pk]


def test_other_peoples_pdf_download_page_is_404(client, people):
    job = ReportJob.objects.create(requested_by=people["superuser"], filters={})
    client.force_login(people["compliance-manager"])
    assert client.get(f"/reports/jobs/{job.pk}/download/").status_code == 404

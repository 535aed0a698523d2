"""What compliance managers asked for (issue 18, point 9): period presets, filters kept after
"Generate PDF", a single-table CSV with its evidence header in a sidecar (one SHA-256 over
both), a readable PDF header, and the audit seq on override and rejection rows."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import date

import pytest

from governance import pdf, report_presets
from governance.models import AuditEvent

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    PERIOD,
    api_for,
    parse_json,
    people_fixture,
    scenario_fixture,
)


@pytest.fixture
def carl(people):
    return people["compliance-manager"]


def test_presets_cover_7_30_90_days_and_the_last_quarter():
    today = date(2026, 5, 14)
    got = {key: (start, end) for key, _label, start, end in report_presets.periods(today)}
    assert got["7d"] == (date(2026, 5, 8), today)
    assert got["30d"] == (date(2026, 4, 15), today)
    assert got["90d"] == (date(2026, 2, 14), today)
    assert got["quarter"] == (date(2026, 1, 1), date(2026, 3, 31))
    assert report_presets.last_quarter(date(2026, 1, 2)) == (date(2025, 10, 1), date(2025, 12, 31))


def test_a_preset_link_fills_the_form_and_keeps_the_other_filters(client, carl, scenario):
    client.force_login(carl)
    page = client.get("/reports/", {"environment": "production"}).content.decode()
    assert 'data-preset="quarter"' in page and "environment=production" in page
    page = client.get("/reports/", {"from": "2026-01-01", "to": "2026-03-31"}).content.decode()
    assert 'value="2026-01-01"' in page and 'value="2026-03-31"' in page


def test_override_and_rejection_rows_carry_their_audit_seq(scenario, carl):
    response = api_for(carl).get("/api/v1/reports/changes", {**PERIOD, "format": "json"})
    doc = parse_json(b"".join(response.streaming_content))
    rows = {e["kind"]: e for e in doc["exceptions"]}
    override = AuditEvent.objects.get(action="gate.override").seq
    reject = AuditEvent.objects.get(action="gate.reject").seq
    assert rows["override"]["audit_seq"] == override
    assert rows["gate-rejected"]["audit_seq"] == reject


def test_the_spreadsheet_zip_is_one_table_and_a_sidecar_covered_by_one_hash(client, carl, scenario):
    client.force_login(carl)
    response = client.post("/reports/", {**PERIOD, "export": "table"})
    assert response.status_code == 302
    download = client.get(response["Location"])
    assert download["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    names = sorted(archive.namelist())
    assert names == [
        "clearway-changes-20260101-20260131.csv",
        "clearway-changes-20260101-20260131.evidence.json",
    ]  # noqa: E501
    table = archive.read(names[0])
    rows = list(csv.reader(io.StringIO(table.decode("utf-8-sig"))))
    assert rows[0][0] == "change_id" and not any(r and r[0].startswith("#") for r in rows)
    assert len(rows) == 1 + 5  # the header row and the five changes, nothing else
    sidecar = archive.read(names[1])
    doc = json.loads(sidecar)
    assert doc["header"]["rows"] == {"changes": 5}
    assert doc["header"]["filters"]["from"] == "2026-01-01T00:00:00Z"
    assert doc["table"] == {
        "file": names[0],
        "rows": 5,
        "sha256": hashlib.sha256(table).hexdigest(),
    }
    before, last = sidecar.rstrip(b"\n").rsplit(b"\n", 1)
    assert last.startswith(b'"sha256":')
    assert doc["sha256"] == hashlib.sha256(table + before + b"\n").hexdigest()
    assert doc["chain_verification"]["ok"] is True
    event = AuditEvent.objects.filter(action="report.export").latest("seq")
    assert event.details["format"] == "table"


def test_the_pdf_header_is_readable():
    filters = {
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-02-01T00:00:00Z",
        "environment": "production",
        "exceptions_only": True,
        "pipeline": None,
    }
    text = pdf.readable_filters(filters)
    assert text == (
        "from 2026-01-01 00:00:00 UTC · to (exclusive) 2026-02-01 00:00:00 UTC · "
        "environment production · exceptions only"
    )
    rows = {"changes": 5, "exceptions": 3, "exceptions.override": 1, "exceptions.gate-rejected": 2}
    assert (
        pdf.readable_rows(rows)
        == "5 changes · 3 exceptions (1 override (break-glass), 2 gate rejected)"
    )  # noqa: E501
    assert "{" not in text and "{" not in pdf.readable_rows(rows)

"""Issue 18, point 9, in Chromium: carl picks "Last 30 days", narrows to production and
generates a PDF: the form keeps his filters; he downloads the spreadsheet ZIP (a plain table
and its evidence sidecar, one SHA-256 over both)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_presets_kept_filters_and_the_spreadsheet_zip(world, login, shot, compliance_manager):
    carl = login(compliance_manager)
    carl.goto("/reports/")
    carl.locator('#period-presets [data-preset="30d"]').click()
    today = timezone.now().date()
    expect(carl.locator("#chg-from")).to_have_value((today - timedelta(days=29)).isoformat())
    expect(carl.locator("#chg-to")).to_have_value(today.isoformat())
    carl.locator("#chg-env").select_option("production")
    carl.get_by_role("button", name="Generate PDF").click()
    carl.wait_for_url("**/reports/?*#jobs")
    expect(carl.locator("#chg-from")).to_have_value((today - timedelta(days=29)).isoformat())
    expect(carl.locator("#chg-env")).to_have_value("production")
    expect(carl.locator('#period-presets [data-preset="30d"]')).to_have_attribute(
        "aria-current", "true"
    )
    expect(carl.locator("#report-jobs")).to_contain_text("environment=production")
    shot(carl, "16-reports-filters-kept")

    with carl.expect_download() as info:
        carl.get_by_role("button", name="Download spreadsheet (ZIP)").click()
    download = info.value
    assert download.suggested_filename.endswith(".zip")
    archive = zipfile.ZipFile(download.path())
    table_name = next(n for n in archive.namelist() if n.endswith(".csv"))
    table = archive.read(table_name)
    rows = list(csv.reader(io.StringIO(table.decode("utf-8-sig"))))
    assert rows[0][0] == "change_id" and len(rows) == 1  # no deployments yet: the header only
    sidecar = archive.read(table_name.removesuffix(".csv") + ".evidence.json")
    doc = json.loads(sidecar)
    assert doc["header"]["filters"]["environment"] == "production"
    assert doc["table"]["sha256"] == hashlib.sha256(table).hexdigest()
    before = sidecar.rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n"
    assert doc["sha256"] == hashlib.sha256(table + before).hexdigest()

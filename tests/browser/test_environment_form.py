"""Issue 18, point 7: saving the environment form changes only what the person changed.
paula changes production's reminder in Chromium; the year-end freeze still ends at 23:59:59
(the form used to drop the seconds and move it to 23:59:00)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

YEAR_END = {
    "start": "2026-12-20T00:00:00+00:00",
    "end": "2026-12-31T23:59:59+00:00",
    "reason": "Year-end freeze",
}


def test_a_save_changes_only_what_was_changed(world, login, shot):
    from governance.models import AuditEvent

    world.production.freeze_windows = [YEAR_END]
    world.production.save(update_fields=["freeze_windows"])

    paula = login(world.paula)
    paula.goto("/environments/production/")
    end = paula.locator("input[name='freeze-0-end']")
    expect(end).to_have_value("2026-12-31T23:59:59")
    paula.locator("input[name='env-reminder_minutes']").fill("45")
    paula.get_by_role("button", name="Save production").click()
    expect(paula.locator(".alert-success, .messages")).to_contain_text("production")

    world.production.refresh_from_db()
    assert world.production.reminder_minutes == 45
    assert world.production.freeze_windows == [YEAR_END]
    event = AuditEvent.objects.filter(action="environment.update").latest("seq")
    assert set(event.details["changes"]) == {"reminder_minutes"}

"""Issue 18, point 7: saving the environment form changes only what the person changed.
paula changes production's reminder in Chromium; the year-end freeze still ends at 23:59:59
(the form used to drop the seconds and move it to 23:59:00). Issue 16: her save is a change
request that waits for a second environment admin; pierre reviews it on its page (the diff)
and approves it, and only then does it take effect."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

YEAR_END = {
    "start": "2026-12-20T00:00:00+00:00",
    "end": "2026-12-31T23:59:59+00:00",
    "reason": "Year-end freeze",
}


def test_a_save_changes_only_what_was_changed(world, login, shot, second_policy_admin):
    from governance.models import AuditEvent

    world.production.freeze_windows = [YEAR_END]
    world.production.save(update_fields=["freeze_windows"])

    paula = login(world.paula)
    paula.goto("/environments/production/")
    end = paula.locator("input[name='freeze-0-end']")
    expect(end).to_have_value("2026-12-31T23:59:59")
    paula.locator("input[name='env-reminder_minutes']").fill("45")
    paula.get_by_role("button", name="Propose changes to production").click()
    expect(paula.locator("#cr-waits")).to_contain_text("waits for a second environment admin")
    world.production.refresh_from_db()
    assert world.production.reminder_minutes == 60  # not yet: four eyes
    review_url = paula.url

    pierre = login(second_policy_admin)
    pierre.goto(review_url)
    expect(pierre.locator("#cr-diff")).to_contain_text("reminder_minutes")
    expect(pierre.locator("#cr-proposer")).to_have_text(world.paula.username)
    shot(pierre, "change-request-review")
    pierre.get_by_role("button", name="Approve and apply").click()
    expect(pierre.locator("#cr-status")).to_have_text("applied")

    world.production.refresh_from_db()
    assert world.production.reminder_minutes == 45
    assert world.production.freeze_windows == [YEAR_END]
    event = AuditEvent.objects.filter(action="environment.update").latest("seq")
    assert set(event.details["changes"]) == {"reminder_minutes"}
    assert (event.details["proposed_by"], event.details["approved_by"]) == (
        world.paula.username,
        second_policy_admin.username,
    )

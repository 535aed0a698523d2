"""A policy admin saves a policy that does not compile: the editor shows the error at its
line (list and gutter), keeps the text, and nothing is saved."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

BROKEN_LINE = 21
GOOD = "\tcount(sre_approvers) < required_approvals\n"
BAD = "\tcount(sre_approvers) < < required_approvals\n"


def test_broken_policy_shows_its_line_and_saves_nothing(world, login, shot):
    from governance.models import AuditEvent, Policy

    policy = Policy.objects.get(name="prod-approvals")
    source = policy.source
    assert source.split("\n")[BROKEN_LINE - 1] + "\n" == GOOD
    broken = source.replace(GOOD, BAD)

    page = login(world.paula)
    page.goto("/policies/")
    expect_live(page)
    page.get_by_role("link", name="prod-approvals", exact=True).click()
    page.wait_for_url(f"**/policies/{policy.pk}/")
    editor = page.locator("form#policy-form textarea[name=source]")
    expect(editor).to_have_value(source)
    expect(page.locator(".line-errors")).to_have_count(0)

    before = (policy.updated_at, policy.versions.count(), AuditEvent.objects.count())
    editor.fill(broken)
    page.locator("form#policy-form button[name=action][value=save]").click()
    page.wait_for_load_state()

    # The error, at its line: in the list above the editor...
    errors = page.locator("#source-errors li")
    expect(errors.first).to_contain_text(f"line {BROKEN_LINE}, column")
    expect(page.locator("#source-errors-title")).to_contain_text("nothing was saved")
    for n in range(errors.count()):
        expect(errors.nth(n)).to_contain_text(f"line {BROKEN_LINE}")
    # ...and in the gutter, that line only.
    gutter = page.locator("#source-gutter")
    expect(gutter.locator(".error-line")).to_have_text([str(BROKEN_LINE)])
    expect(gutter.locator("span").nth(BROKEN_LINE - 1)).to_have_class("error-line")
    # The broken text is still in the editor, to be fixed.
    expect(editor).to_have_value(broken)
    expect(editor).to_have_attribute("aria-invalid", "true")
    expect_live(page)
    shot(page, "08-policy-editor-error")

    # A click on the error puts the cursor at its line and column.
    link = page.locator("#source-errors a[data-line]").first
    column = int(link.get_attribute("data-column"))
    link.click()
    expect(editor).to_be_focused()
    offset = sum(len(line) + 1 for line in broken.split("\n")[: BROKEN_LINE - 1]) + column - 1
    assert editor.evaluate("el => el.selectionStart") == offset

    # Nothing was saved: same draft, same versions, nothing audited.
    policy.refresh_from_db()
    assert policy.source == source
    assert (policy.updated_at, policy.versions.count(), AuditEvent.objects.count()) == before

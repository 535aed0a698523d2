"""Issue 18, point 3: at 390 px the navigation is a menu (nothing falls off-screen), and an
approver on call works from a phone: the inbox's Review button, the gate panel's policy
Result column and the approve form are on screen without side-scrolling, and approving
works."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
GATE_TIMEOUT = 30_000


def _no_side_scroll(page) -> None:
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide at {PHONE['width']} px"


def _on_screen(page, locator) -> None:
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1, box
    # No ancestor scrolls it sideways (a table-wrap with overflow-x).
    hidden = locator.evaluate(
        """(el) => { for (let p = el.parentElement; p; p = p.parentElement) {
             if (p.scrollWidth > p.clientWidth + 1 && getComputedStyle(p).overflowX !== 'visible')
               return p.className || p.tagName; } return null; }"""
    )
    assert hidden is None, f"inside a side-scrolling {hidden}"


def test_an_approver_on_call_works_from_a_phone(world, login, shot):
    from governance.models import Approval
    from orchestrator import actions

    run = actions.trigger_run(world.pipeline, actor=world.dana, parameters={"version": "3.0.0"})
    sam = login(world.sam)
    sam.set_viewport_size(PHONE)
    sam.goto("/approvals/")
    expect_live(sam)

    # The navigation: a menu, nothing off-screen.
    menu = sam.locator("#nav-menu-button")
    expect(menu).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(sam.locator("#nav-links")).to_be_hidden()
    _no_side_scroll(sam)
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    for name in ("Overview", "Board", "Pipelines", "Approvals", "Policies", "API docs"):
        link = sam.locator("#nav-links").get_by_role("link", name=name, exact=False).first
        expect(link).to_be_visible()
        _on_screen(sam, link)
    shot(sam, "19-phone-menu-open")
    menu.click()
    expect(sam.locator("#nav-links")).to_be_hidden()

    # The inbox: the Review button is on screen.
    review = sam.locator("#approvals tr[data-gate-id]").get_by_role("link", name="Review")
    expect(review).to_be_visible(timeout=GATE_TIMEOUT)
    _on_screen(sam, review)
    _no_side_scroll(sam)
    shot(sam, "20-phone-inbox")
    review.click()
    sam.wait_for_url(f"**/runs/{run.pk}/**")
    expect_live(sam)

    # The gate panel: policy results with their Result, the approve form, all on screen.
    panel = sam.locator("#gate-panel")
    result = panel.locator('[data-role="result"]').first
    expect(result).to_be_visible()
    _on_screen(sam, result)
    approve = sam.locator("form#approve-form button[value=approve]")
    _on_screen(sam, approve)
    _no_side_scroll(sam)
    sam.locator("form#approve-form textarea[name=comment]").fill("From the phone")
    approve.click()
    expect(panel).to_contain_text("You approved")
    shot(sam, "21-phone-gate-panel")
    assert Approval.objects.filter(gate__stage_run__run=run, user=world.sam).exists()

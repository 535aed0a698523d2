"""Issue 18, point 1 (approvers), at desktop width and at 390 px: the gate panel says when
approvals expire, when the gate resumes, who may override and why an override is possible;
a button appears only when the action can succeed, otherwise the panel says why not; the
override's 20-character minimum is the server's, with a confirmation step naming the denial;
after an override the run header and the board flag it; a rejection reads as a decision
("rejected by sofia"), not as a red "blocked" failure."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import expect_live, mark_document, same_document

pytestmark = pytest.mark.browser

GATE_TIMEOUT = 30_000
WIDTHS = {"desktop": 1360, "phone": 390}
SOFT_DENY = """package clearway.hold

deny contains "the incident hold is on" if { true }
"""


def _sized(page, width: int):
    page.set_viewport_size({"width": width, "height": 844 if width < 500 else 900})
    return page


def _fits(page, selector: str, width: int) -> None:
    """The element is shown within the viewport's width (no side-scrolling to reach it)."""
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (selector, box)


def _api_approve(base_url: str, user, gate, comment: str) -> None:
    from tests.conftest import api_token

    key = api_token(user)
    response = httpx.post(
        f"{base_url}/api/v1/gates/{gate.pk}/approve/",
        json={"comment": comment},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("size", list(WIDTHS))
def test_the_gate_panel_explains_itself(size, world, login, shot, stack, make_policy):
    from governance.models import Gate
    from orchestrator import actions

    width = WIDTHS[size]
    make_policy("incident-hold", SOFT_DENY, "soft-mandatory", environments=[world.production])
    run = actions.trigger_run(
        world.pipeline, actor=world.dana, parameters={"version": "2.16.0", "author": "dana"}
    )
    dana = _sized(login(world.dana), width)
    dana.goto(f"/runs/{run.pk}/")
    expect_live(dana)
    mark_document(dana)
    article = dana.locator("#gate-panel [data-gate-id]")
    expect(article).to_have_attribute("data-status", "waiting", timeout=GATE_TIMEOUT)
    gate = Gate.objects.get(stage_run__run=run)
    # dana triggered it and may not approve: no buttons, and the panel says why.
    expect(dana.locator("#approve-form")).to_have_count(0)
    expect(dana.locator("#override-form")).to_have_count(0)
    expect(dana.locator("#approve-refusal")).to_contain_text("You may not approve")

    _api_approve(stack, world.sara, gate, "SRE is fine with it")

    # sofia (security) may approve but not override.
    sofia = _sized(login(world.sofia), width)
    sofia.goto(f"/runs/{run.pk}/")
    expect_live(sofia)
    panel = sofia.locator("#gate-panel")
    expect(panel.locator('[data-role="expiry-note"]')).to_contain_text("counts for 24 h")
    expect(panel.locator('[data-role="expires"]')).to_contain_text("expires")
    expect(panel.locator('[data-role="resume-note"]')).to_contain_text("re-checked every 30 s")
    expect(panel.locator("#override-info")).to_contain_text("An override is possible")
    expect(panel.locator("#override-info")).to_contain_text("incident-hold")
    expect(panel.locator("#overriders")).to_contain_text("sam, sara")
    expect(panel.locator("#overriders")).to_contain_text("You do not hold it")
    expect(panel.locator("#override-form")).to_have_count(0)
    expect(panel.locator("#approve-form")).to_be_visible()
    _fits(sofia, "#approve-form button[value=approve]", width)
    _fits(sofia, "#approve-form button[value=reject]", width)

    # sam overrides: too short is refused by the server with a clear message...
    sam = _sized(login(world.sam), width)
    sam.goto(f"/runs/{run.pk}/")
    expect_live(sam)
    form = sam.locator("form#override-form")
    expect(form).to_be_visible()
    assert form.locator("textarea").get_attribute("minlength") is None  # the server decides
    form.locator("textarea[name=justification]").fill("too short")
    form.locator("button[type=submit]").click()
    expect(sam.locator("#override-error")).to_contain_text(
        "at least 20 characters (this one has 9)"
    )
    assert not gate.overrides.exists()
    # ...then a confirmation step names the denial being overridden.
    form = sam.locator("form#override-form")
    form.locator("textarea[name=justification]").fill("Hotfix for INC-4711, agreed with on-call.")
    form.locator("button[type=submit]").click()
    confirm = sam.locator("form#override-confirm-form")
    expect(confirm).to_contain_text("incident-hold")
    expect(confirm).to_contain_text("the incident hold is on")
    expect(confirm).to_contain_text("Hotfix for INC-4711")
    assert not gate.overrides.exists()
    _fits(sam, "#override-confirm", width)
    shot(sam, f"13-gate-override-confirm-{size}")
    sam.locator("#override-confirm").click()
    expect(sam.locator("#gate-panel .flag-override").first).to_contain_text("Break-glass")
    # The run header flags it, in sam's page and live in dana's.
    expect(sam.locator("#run-override-flag")).to_contain_text("overridden by sam")
    expect(dana.locator("#run-override-flag")).to_contain_text("overridden by sam")
    assert gate.overrides.count() == 1

    board = _sized(sam.context.new_page(), width)
    board.goto("/board/")
    tile = board.locator('#board-live [data-pipeline="payments-api"]')
    expect(tile.locator('[data-role="override-flag"]')).to_have_text("overridden")

    # sofia rejects: a decision, not a red failure.
    sofia.reload()
    expect_live(sofia)
    approve = sofia.locator("form#approve-form")
    approve.locator("textarea[name=comment]").fill("Not during the incident")
    approve.locator("button[name=decision][value=reject]").click()
    for page in (sofia, dana):
        status = page.locator("#run-status")
        expect(status).to_have_text("rejected")
        expect(status).to_have_attribute("data-status", "blocked")
        expect(status).to_have_class(re.compile(r"(^|\s)status-rejected(\s|$)"))
        expect(page.locator("#run-decision")).to_have_text("rejected by sofia")
        expect(page.locator("#run-reason")).to_contain_text("rejected by sofia: Not during")
        expect(page.locator("#gate-panel")).not_to_contain_text("rejectd")
        expect(page.locator("#gate-panel")).to_contain_text("rejected")
    assert same_document(dana), "dana's run page reloaded"
    shot(dana, f"14-run-rejected-{size}")
    board.reload()
    expect(tile).to_contain_text("rejected by sofia")
    expect(tile).to_have_class(re.compile(r"(^|\s)status-rejected(\s|$)"))


def test_the_superuser_who_triggered_a_run_is_offered_no_approval(
    world, login, superuser, make_policy
):
    from orchestrator import actions

    run = actions.trigger_run(world.pipeline, actor=superuser, parameters={"version": "2.16.1"})
    page = login(superuser)
    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#gate-panel [data-gate-id]")).to_have_attribute(
        "data-status", "waiting", timeout=GATE_TIMEOUT
    )
    expect(page.locator("#approve-form")).to_have_count(0)
    expect(page.locator("#approve-refusal")).to_contain_text(
        "ada is not in an approval group of production"
    )

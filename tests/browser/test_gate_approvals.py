"""The production gate in the browser: the approvers' inbox fills live, approvals given in
the gate panel (and one through the API) open the gate, and the developer's run page, the
approver's badge and the wallboard follow without a reload. Separation of duties is shown
in the panel, never as an error page."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.browser.conftest import expect_live, mark_document, same_document

pytestmark = pytest.mark.browser

GATE_TIMEOUT = 30_000  # ms: the run reaches its gate after ~4 s of steps


def _trigger(world, **parameters):
    from orchestrator import actions

    return actions.trigger_run(
        world.pipeline, actor=world.dana, parameters={"version": "2.15.0", **parameters}
    )


def _approve_in_panel(page, comment: str) -> None:
    form = page.locator("form#approve-form")
    form.locator("textarea[name=comment]").fill(comment)
    form.locator("button[name=decision][value=approve]").click()


# The gate panel re-fetches itself (htmx) on gate events: no such request / one in flight.
PANEL_IDLE = "() => !document.getElementById('gate-panel').classList.contains('htmx-request')"
PANEL_BUSY = "() => document.getElementById('gate-panel').classList.contains('htmx-request')"


def _api_approve(base_url: str, user, gate, comment: str) -> None:
    """Approve through the REST API (token auth, over HTTP to the live server)."""
    from tests.conftest import api_token

    key = api_token(user)
    response = httpx.post(
        f"{base_url}/api/v1/gates/{gate.pk}/approve/",
        json={"comment": comment},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_approvers_open_the_production_gate_live(world, login, shot, stack):
    from governance.models import Approval, Gate, GateStatus
    from orchestrator.models import RunStatus

    # sam watches his inbox, and the wallboard, before anything waits for him.
    sam = login(world.sam)
    sam.goto("/approvals/")
    expect_live(sam)
    badge = sam.locator("#inbox-badge")
    expect(badge).to_have_attribute("data-count", "0")
    expect(sam.locator("#approvals tr[data-gate-id]")).to_have_count(0)
    mark_document(sam)
    board = sam.context.new_page()
    board.goto("/board/")
    expect_live(board)
    mark_document(board)
    tile = board.locator('#board-live [data-pipeline="payments-api"]')
    expect(tile).to_contain_text("never run")

    # dana's run; she watches it from the start.
    run = _trigger(world, author="dana")
    dana = login(world.dana)
    dana.goto(f"/runs/{run.pk}/")
    expect_live(dana)
    mark_document(dana)

    # The gate opens for approval: sam's badge and list change without a reload.
    expect(badge).to_have_attribute("data-count", "1", timeout=GATE_TIMEOUT)
    expect(badge).to_be_visible()
    row = sam.locator("#approvals tr[data-gate-id]")
    expect(row).to_have_count(1)
    gate = Gate.objects.get(stage_run__run=run)
    expect(row).to_have_attribute("data-gate-id", str(gate.pk))
    expect(row).to_contain_text("production")
    expect(row).to_contain_text("dana")
    assert same_document(sam), "the inbox reloaded"
    shot(sam, "05-inbox")
    expect(dana.locator("#run-status")).to_have_attribute("data-status", "waiting")
    expect(board.locator("#board-live")).to_contain_text("approval · production")

    # sam reviews and approves in the gate panel.
    row.get_by_role("link", name="Review").click()
    sam.wait_for_url(re.compile(rf"/runs/{run.pk}/"))
    expect_live(sam)
    gate_article = sam.locator(f'#gate-panel [data-gate-id="{gate.pk}"]')
    expect(gate_article).to_have_attribute("data-status", "waiting")
    _approve_in_panel(sam, "Canary metrics look good")
    # "You approved." (the answer), or "You approved this deployment at …" once the panel
    # has re-fetched itself on the gate event that the approval sends.
    expect(sam.locator("#gate-panel")).to_contain_text("You approved")
    expect(sam.locator('#gate-panel tr[data-rule-group="sre"]')).to_contain_text("1 more")
    # Decided: nothing left for sam to act on, so his badge empties (issue 16).
    expect(sam.locator("#inbox-badge")).to_have_attribute("data-count", "0")
    assert Approval.objects.filter(gate=gate, user=world.sam, decision="approve").exists()

    # sara approves through the REST API.
    _api_approve(stack, world.sara, gate, "LGTM from SRE")
    # sam's panel follows: both sre approvals counted, security still missing.
    expect(sam.locator('#gate-panel tr[data-rule-group="sre"] .result-pass')).to_have_text("2")
    expect(dana.locator("#run-status")).to_have_attribute("data-status", "waiting")

    # sofia (security) approves in her own browser; that is the last approval needed.
    sofia = login(world.sofia)
    sofia.goto(f"/runs/{run.pk}/")
    expect_live(sofia)
    _approve_in_panel(sofia, "No security concerns")
    expect(sofia.locator("#gate-panel")).to_contain_text("You approved")

    # dana's page shows the gate open and the run finishing, without a reload.
    expect(dana.locator(f'#gate-panel [data-gate-id="{gate.pk}"]')).to_have_attribute(
        "data-status", "open"
    )
    expect(dana.locator('[data-stage-name="deploy-production"]')).to_have_attribute(
        "data-status", "succeeded"
    )
    expect(dana.locator("#run-status")).to_have_attribute("data-status", "succeeded")
    production_log = dana.locator('[data-stage-name="deploy-production"] [data-graph-step]')
    expect(production_log).to_have_attribute("data-status", "succeeded")
    expect(dana.locator("#retry-run")).to_be_visible()
    expect(dana.locator("#cancel-run")).to_be_hidden()
    expect(dana.locator("#gate-panel")).to_contain_text("Canary metrics look good")
    expect(dana.locator("#gate-panel")).to_contain_text("LGTM from SRE")
    expect_live(dana)
    shot(dana, "06-run-finished")
    assert same_document(dana), "the run page reloaded"

    # sam's badge stays empty; the wallboard shows the success.
    expect(sam.locator("#inbox-badge")).to_have_attribute("data-count", "0")
    expect(tile).to_have_class(re.compile(r"(^|\s)status-succeeded(\s|$)"))
    expect(tile).to_contain_text("succeeded")
    expect(board.locator("#board-clock")).to_be_visible()
    shot(board, "07-board")
    assert same_document(board), "the wallboard reloaded"

    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    assert run.status == RunStatus.SUCCEEDED


def test_self_approval_is_not_offered_and_answers_survive_a_refresh(
    world, login, shot, make_user, stack
):
    from governance.models import Approval, Gate, GateStatus

    # The change is sam's (run parameter author): he may not approve its deployment. A third
    # SRE keeps the gate waiting: with sam excluded, sara alone could never give the two SRE
    # approvals prod-approvals wants, and the gate would be blocked as not curable.
    make_user("sven", "approver", "sre", first_name="Sven")
    run = _trigger(world, author="sam")
    sam = login(world.sam)
    sam.goto(f"/runs/{run.pk}/")
    expect_live(sam)
    mark_document(sam)
    expect(sam.locator("#run-status")).to_have_attribute(
        "data-status", "waiting", timeout=GATE_TIMEOUT
    )
    expect(sam.locator('[data-stage-name="deploy-production"]')).to_have_attribute(
        "data-status", "waiting"
    )
    gate = Gate.objects.get(stage_run__run=run)
    expect(sam.locator(f'#gate-panel [data-gate-id="{gate.pk}"]')).to_have_attribute(
        "data-status", "waiting"
    )
    sam.wait_for_function(PANEL_IDLE)
    # The panel says why (sam is struck through in the sre row), and offers no button that
    # would be refused (issue 18).
    expect(sam.locator('#gate-panel tr[data-rule-group="sre"] s')).to_have_text("sam")
    expect(sam.locator("form#approve-form")).to_have_count(0)
    refusal = sam.locator("#approve-refusal")
    expect(refusal).to_contain_text("Separation of duties")
    expect(refusal).to_contain_text("sam is the author of the change")
    expect_live(sam)
    shot(sam, "09-gate-self-approval-refused")
    assert same_document(sam)

    # sofia decides just as her panel re-fetches itself: sara approves through the API, the
    # gate event makes sofia's panel re-fetch itself, and sofia clicks while that GET is on
    # its way. The test holds both requests to force the losing order: the refresh lands
    # first and replaces the panel, then the decision's answer arrives. It must still be
    # shown (the forms answer into #gate-panel-slot, not into the panel the refresh replaced).
    sofia = login(world.sofia)
    sofia.goto(f"/runs/{run.pk}/")
    expect_live(sofia)
    mark_document(sofia)
    sofia.wait_for_function(PANEL_IDLE)
    held: dict[str, list] = {"get": [], "post": []}
    sofia.route("**/gate-panel/", lambda route: held["get"].append(route))
    sofia.route("**/decide/", lambda route: held["post"].append(route))
    _api_approve(stack, world.sara, gate, "SRE approval")
    sofia.wait_for_function(PANEL_BUSY)
    sofia.locator("form#approve-form textarea[name=comment]").fill("Security is fine")
    with sofia.expect_request("**/decide/"):
        sofia.locator("form#approve-form button[name=decision][value=approve]").click()
    for route in held["get"]:
        try:
            route.continue_()
        except PlaywrightError:  # aborted by the page: the decision replaced it
            pass
    for route in held["post"]:
        route.continue_()
    sofia.unroute("**/gate-panel/")
    sofia.unroute("**/decide/")
    # The answer is in the page, in a panel that counts sara's approval.
    answered = sofia.locator(
        '#gate-panel:has(tr[data-rule-group="sre"]:has-text("1 more")):has-text("You approved")'
    )
    expect(answered).to_be_visible(timeout=5_000)
    assert same_document(sofia), "the decision reloaded the page"

    assert not Approval.objects.filter(gate=gate, user=world.sam).exists()
    assert sorted(Approval.objects.filter(gate=gate).values_list("user__username", flat=True)) == [
        "sara",
        "sofia",
    ]
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING

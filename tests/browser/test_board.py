"""Issue 18, point 4: the wallboard, at desktop width and at 390 px. It shows the DORA and
governance tiles; tile text has a contrast of at least 4.5:1 (axe-core's color-contrast rule
over tiles of every run status and the metric tiles); the
"live" ring honours prefers-reduced-motion and pauses while the tab is hidden."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import expect

from tests.browser.axe import serious_violations
from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": 1360, "phone": 390}
STATUSES = ["succeeded", "failed", "running", "waiting", "canceled", "blocked", "queued"]
ONE_STAGE = """name: {name}
stages:
  - name: build
    steps:
      - name: compile
        run: echo hi
"""

HIDE = """() => {
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  document.dispatchEvent(new Event("visibilitychange"));
}"""
RING = """() => {
  const s = getComputedStyle(document.getElementById("live-indicator"), "::after");
  return { name: s.animationName, state: s.animationPlayState, display: s.display };
}"""


def _tiles(world, make_pipeline):
    """One pipeline per run status, its last run in that status (rows written directly)."""
    from django.utils import timezone

    from orchestrator.models import Run

    for i, status in enumerate(STATUSES):
        pipeline = make_pipeline(f"svc-{status}", definition=ONE_STAGE.format(name=f"Svc {status}"))
        at = timezone.now() - timedelta(hours=i + 1)
        ended = status in ("succeeded", "failed", "canceled", "blocked")
        Run.objects.create(
            pipeline=pipeline, version=pipeline.current_version, number=1, status=status,
            reason=f"stage build: {status}", created_at=at, started_at=at,
            finished_at=at + timedelta(minutes=5) if ended else None,
        )  # fmt: skip


@pytest.mark.parametrize("size", list(WIDTHS))
def test_board_tiles_have_enough_contrast(size, world, login, shot, make_pipeline):
    _tiles(world, make_pipeline)
    board = login(world.dana)
    board.set_viewport_size({"width": WIDTHS[size], "height": 900})
    board.goto("/board/")
    expect_live(board)
    for status in STATUSES:
        expect(board.locator(f'#board-live [data-pipeline="svc-{status}"]')).to_be_visible()
    # The DORA and governance tiles, in the same contrast check.
    for metric in ("deploy-frequency", "lead-time", "change-failure-rate", "override-rate"):
        expect(board.locator(f'#board-metrics [data-metric="{metric}"]')).to_be_visible()
    shot(board, f"22-board-{size}")
    assert serious_violations(board, rules=["color-contrast"]) == []


def test_the_live_ring_honours_reduced_motion_and_hidden_tabs(world, login, chromium, stack):
    board = login(world.dana)
    board.goto("/board/")
    expect_live(board)
    ring = board.evaluate(RING)
    assert (ring["name"], ring["state"]) == ("live-ping", "running")
    board.evaluate(HIDE)
    assert board.evaluate("() => document.documentElement.classList.contains('page-hidden')")
    assert board.evaluate(RING)["state"] == "paused"

    calm = board.context.browser.new_context(base_url=stack, reduced_motion="reduce")
    try:
        from tests.browser.conftest import session_cookie

        calm.add_cookies([session_cookie(world.dana)])
        page = calm.new_page()
        page.goto("/board/")
        expect_live(page)
        ring = page.evaluate(RING)
        assert ring["name"] == "none" or ring["display"] == "none", ring
    finally:
        calm.close()

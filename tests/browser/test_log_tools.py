"""Issue 18, point 2 (in part): the run page's log tools in Chromium — search with
highlighted matches and next/previous, collapse per step (a match inside a collapsed step
opens it), wrap / no wrap, a link to a line, and the raw download."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import BUILD_LOG_LINES, expect_live

pytestmark = pytest.mark.browser


def test_search_collapse_wrap_link_and_raw_download(world, login, shot):
    from orchestrator import actions
    from orchestrator.models import StepRun

    run = actions.trigger_run(world.pipeline, actor=world.dana, parameters={"version": "5.0.0"})
    step = StepRun.objects.get(stage__run=run, name="compile")
    dana = login(world.dana)
    dana.goto(f"/runs/{run.pk}/")
    expect_live(dana)
    section = dana.locator(f'[data-step-id="{step.pk}"]')
    expect(section).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(section.locator(".log-line")).to_have_count(BUILD_LOG_LINES)

    # Search: six "compiling" lines, highlighted, stepped through both ways.
    dana.locator("#log-search-input").fill("compiling")
    count = dana.locator("#log-search-count")
    expect(count).to_have_text("1 of 6")
    expect(dana.locator("mark.log-match")).to_have_count(6)
    current = dana.locator("mark.log-match-current")
    expect(current).to_have_count(1)
    expect(current).to_be_in_viewport()
    dana.locator("#log-search-next").click()
    expect(count).to_have_text("2 of 6")
    dana.locator("#log-search-prev").click()
    dana.locator("#log-search-prev").click()
    expect(count).to_have_text("6 of 6")
    expect(section.locator(".log-line", has=current)).to_contain_text("compiling reporting")
    shot(dana, "23-log-search")

    # Collapse the step; stepping to a match inside it opens it again.
    collapse = section.locator("[data-role=collapse]")
    collapse.click()
    expect(section.locator(".log")).to_be_hidden()
    expect(collapse).to_have_attribute("aria-expanded", "false")
    dana.locator("#log-search-next").click()
    expect(count).to_have_text("1 of 6")
    expect(section.locator(".log")).to_be_visible()

    # Wrap / no wrap.
    dana.locator("#log-wrap").uncheck()
    expect(dana.locator("#logs")).to_have_class(re.compile(r"(^|\s)log-nowrap(\s|$)"))
    white = section.locator(".log-line").first.evaluate("(el) => getComputedStyle(el).whiteSpace")
    assert white == "pre"
    dana.locator("#log-wrap").check()

    # A link to a line.
    section.locator(".log-line").nth(2).locator(".log-lineno").click()
    assert dana.url.endswith(f"#s{step.pk}-L3")
    dana.reload()
    expect(dana.locator(f"#s{step.pk}-L3")).to_be_in_viewport()

    # The raw log.
    with dana.expect_download() as info:
        section.locator("[data-role=raw-log]").click()
    text = open(info.value.path(), encoding="utf-8").read().splitlines()
    assert len(text) == BUILD_LOG_LINES
    assert text[1].endswith("Building payments-api 5.0.0 from main")


# A build whose production gate opens a few seconds after the build: the gate panel appears
# above the logs while someone is reading a match.
LATE_GATE_PIPELINE = """\
name: Late gate
stages:
  - name: build
    steps:
      - name: compile
        run: |
          for module in core ledger settlement; do printf 'compiling %s ...\\n' "$module"; done
  - name: soak
    needs: [build]
    steps:
      - name: wait
        run: sleep 4
  - name: deploy-production
    needs: [soak]
    environment: production
    steps:
      - name: rollout
        run: echo "Deployment complete"
"""


def test_the_current_match_stays_in_view_when_the_gate_panel_appears(world, login, make_pipeline):
    from orchestrator import actions
    from orchestrator.models import StepRun

    pipeline = make_pipeline("late-gate", definition=LATE_GATE_PIPELINE)
    run = actions.trigger_run(pipeline, actor=world.dana, parameters={})
    step = StepRun.objects.get(stage__run=run, name="compile")
    dana = login(world.dana)
    dana.goto(f"/runs/{run.pk}/")
    expect_live(dana)
    section = dana.locator(f'[data-step-id="{step.pk}"]')
    expect(section).to_have_attribute("data-status", "succeeded", timeout=30_000)
    gate = dana.locator("#gate-panel [data-gate-id]")
    expect(gate).to_have_count(0)  # the soak step is still sleeping

    dana.locator("#log-search-input").fill("compiling")
    expect(dana.locator("#log-search-count")).to_have_text("1 of 3")
    current = dana.locator("mark.log-match-current")
    expect(current).to_be_in_viewport()
    # The gate panel is inserted above the logs; the match being read does not move away.
    expect(gate).to_have_count(1, timeout=30_000)
    expect(gate).to_be_visible()
    expect(current).to_be_in_viewport()


def _long_log(step, n: int) -> None:
    from orchestrator.models import LogChunk

    LogChunk.objects.filter(step=step).delete()
    LogChunk.objects.bulk_create(
        [
            LogChunk(
                step=step,
                offset=i,
                line_count=min(500, n - i),
                text="\n".join(f"row {j}" for j in range(i, min(i + 500, n))),
            )
            for i in range(0, n, 500)
        ],
        batch_size=200,
    )
    step.log_lines = n
    step.save(update_fields=["log_lines"])


def test_a_long_log_is_shown_in_windows(world, login, shot):
    from orchestrator import actions
    from orchestrator.models import StepRun

    run = actions.trigger_run(world.pipeline, actor=world.dana, parameters={"version": "5.1.0"})
    dana = login(world.dana)
    dana.goto(f"/runs/{run.pk}/")
    step = StepRun.objects.get(stage__run=run, name="compile")
    section = dana.locator(f'[data-step-id="{step.pk}"]')
    expect(section).to_have_attribute("data-status", "succeeded", timeout=30_000)
    _long_log(step, 100_000)

    response = dana.goto(f"/runs/{run.pk}/")
    expect_live(dana)
    assert len(response.body()) < 400_000  # the last 1,000 lines of each step, not 100,000
    lines = section.locator(".log-line")
    expect(lines).to_have_count(1000)
    expect(dana.locator(f"#s{step.pk}-L100000")).to_contain_text("row 99999")
    earlier = section.locator("[data-role=earlier]")
    expect(earlier).to_contain_text("99000 before these")
    earlier.click()
    expect(lines).to_have_count(2000)
    expect(dana.locator(f"#s{step.pk}-L99001")).to_contain_text("row 99000")
    expect(earlier).to_contain_text("98000 before these")

    # A link to a line before the loaded windows loads what it needs (here: 3,000 lines).
    _long_log(step, 3_000)
    dana.goto("/approvals/")
    dana.goto(f"/runs/{run.pk}/#s{step.pk}-L5")
    expect(dana.locator(f"#s{step.pk}-L5")).to_be_in_viewport()
    expect(dana.locator(f"#s{step.pk}-L5")).to_have_class(re.compile(r"highlight"))
    expect(section.locator("[data-role=earlier]")).to_have_count(0)
    shot(dana, "24-log-windows")

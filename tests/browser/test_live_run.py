"""A developer starts a run from the pipeline page and watches it live: stage statuses and
log lines arrive over the websocket, the page is never reloaded."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    BUILD_LOG,
    BUILD_LOG_LINES,
    expect_live,
    mark_document,
    same_document,
)

pytestmark = pytest.mark.browser

# The log section of a step: its status and how many lines it shows, read in one go in the
# page so that "still running" and "N lines" describe the same moment.
RUNNING_WITH_MORE_THAN = """([stepId, shown, total]) => {
  const section = document.querySelector(`[data-step-id="${stepId}"]`);
  if (!section || section.dataset.status !== "running") return false;
  const lines = section.querySelectorAll(".log .log-line").length;
  return lines > shown && lines < total ? lines : false;
}"""


def test_developer_triggers_a_run_and_watches_it_live(world, login, shot):
    from orchestrator.models import Run, RunStatus, StepRun

    page = login(world.dana)

    page.goto("/")
    expect_live(page)
    expect(page.locator('#overview-live tr[data-pipeline="payments-api"]')).to_be_visible()
    shot(page, "01-overview")

    page.goto("/pipelines/payments-api/")
    expect_live(page)
    for stage in ("build", "unit-tests", "lint", "deploy-staging", "deploy-production"):
        expect(page.locator(f'[data-stage-name="{stage}"]')).to_be_visible()
    form = page.locator("form#trigger-form")
    form.locator("[name=version]").fill("2.15.0")
    form.locator("[name=commit]").fill("9f1c2ab")
    shot(page, "02-pipeline")
    form.locator("button[type=submit]").click()

    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run = Run.objects.get(pipeline=world.pipeline)
    assert page.url.endswith(f"/runs/{run.pk}/")
    assert run.parameters["version"] == "2.15.0" and run.triggered_by == world.dana
    mark_document(page)
    expect_live(page)
    expect(page.locator("#run")).to_have_attribute("data-run-id", str(run.pk))

    # The build step's log grows while the step runs: two readings, both while the page
    # shows the step running, the second with more lines than the first, neither complete.
    compile_step = StepRun.objects.get(stage__run=run, stage__name="build", name="compile")
    first = page.wait_for_function(
        RUNNING_WITH_MORE_THAN, arg=[compile_step.pk, 0, BUILD_LOG_LINES]
    ).json_value()
    expect(page.locator('[data-stage-name="build"]')).to_have_attribute("data-status", "running")
    shot(page, "03-run-running")
    second = page.wait_for_function(
        RUNNING_WITH_MORE_THAN, arg=[compile_step.pk, first, BUILD_LOG_LINES]
    ).json_value()
    assert 0 < first < second < BUILD_LOG_LINES

    # Stages turn green as they finish; the run stops at the production gate.
    for stage in ("build", "unit-tests", "lint", "deploy-staging"):
        expect(page.locator(f'[data-stage-name="{stage}"]')).to_have_attribute(
            "data-status", "succeeded"
        )
    expect(page.locator('[data-stage-name="deploy-production"]')).to_have_attribute(
        "data-status", "waiting"
    )
    expect(page.locator("#run-status")).to_have_attribute("data-status", "waiting")
    expect(page.locator("#gate-panel [data-gate-id]")).to_have_attribute("data-status", "waiting")

    # The whole log arrived, each line once, in order.
    log = page.locator(f'[data-step-id="{compile_step.pk}"]')
    expect(log).to_have_attribute("data-status", "succeeded")
    expect(log.locator(".log")).to_have_attribute("data-next-offset", str(BUILD_LOG_LINES))
    expected = [line.format(version="2.15.0") for line in BUILD_LOG]
    # Each line: its number, the executor's time (HH:MM:SS), the text.
    shown = [
        re.sub(r"^\d+\s*\d\d:\d\d:\d\d\s*", "", text)
        for text in log.locator(".log-line").all_inner_texts()
    ]
    assert shown == expected
    expect_live(page)
    shot(page, "04-run-at-gate")

    assert same_document(page), "the run page reloaded"
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING

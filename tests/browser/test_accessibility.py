"""axe-core on the pages people use all day (issue 18): the overview, a run page with its gate
panel, the approvals inbox, the policy editor, the reports page and the wallboard — no serious
or critical violation, at desktop width and at 390 px."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.axe import serious_violations
from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

GATE_TIMEOUT = 30_000


@pytest.mark.parametrize("width", [1360, 390])
def test_no_serious_accessibility_violations(width, world, login, compliance_manager):
    from governance.models import Policy
    from orchestrator import actions

    run = actions.trigger_run(world.pipeline, actor=world.dana, parameters={"version": "4.0.0"})
    policy = Policy.objects.get(name="prod-approvals")
    pages = [
        (world.dana, "/", "#overview-live"),
        (world.sam, f"/runs/{run.pk}/", "#gate-panel [data-gate-id]"),
        (world.sam, "/approvals/", "#approvals tr[data-gate-id]"),
        (world.paula, f"/policies/{policy.pk}/", "#policy-form"),
        (compliance_manager, "/reports/", "#change-report-form"),
        (world.dana, "/board/", "#board-live"),
    ]
    found = {}
    for user, url, ready in pages:
        page = login(user)
        page.set_viewport_size({"width": width, "height": 900})
        # A live swap flashes the new content in (.htmx-added); axe must not judge colours
        # half-way through that fade: reduced motion makes it instant (app.css honours it).
        page.emulate_media(reduced_motion="reduce")
        page.goto(url)
        expect_live(page)
        expect(page.locator(ready).first).to_be_visible(timeout=GATE_TIMEOUT)
        violations = serious_violations(page)
        if violations:
            found[url] = violations
        page.context.close()
    assert not found, json.dumps(found, indent=1)

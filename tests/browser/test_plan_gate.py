"""The approver sees the terraform plan on the production gate: the demo's infra-network
run stops at its gate, and sam's run page (open before the gate) shows "3 to add, 1 to
change, 1 to destroy" with the resources, above the approve form, without a reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import expect_live, mark_document, same_document

pytestmark = pytest.mark.browser

GATE_TIMEOUT = 45_000  # ms: plan, apply-staging, then the gate (~5 s of steps)
DEMO_PIPELINE = Path(__file__).resolve().parents[2] / "dashboard/demo/infra-network.yaml"


@pytest.fixture
def infra(world, make_pipeline, make_user, other_team):
    from guardian.shortcuts import assign_perm

    omar = make_user("omar", "developer", other_team.group.name)
    pipeline = make_pipeline(
        "infra-network", definition=DEMO_PIPELINE.read_text(encoding="utf-8"), team=other_team
    )
    # sam reviews platform changes too (he is not in team platform).
    assign_perm("orchestrator.view_pipeline", world.sam.groups.get(name="sre"), pipeline)
    return omar, pipeline


def test_the_approver_sees_the_plan_summary_on_the_gate(world, infra, login, shot):
    from orchestrator import actions

    omar, pipeline = infra
    run = actions.trigger_run(pipeline, actor=omar, parameters={"change": "CHG-2301: subnet c"})
    sam = login(world.sam)
    sam.goto(f"/runs/{run.pk}/")
    expect_live(sam)
    mark_document(sam)

    summary = sam.locator('#gate-panel [data-role="plan-summary"]')
    expect(summary).to_be_visible(timeout=GATE_TIMEOUT)
    expect(summary.locator('[data-role="plan-headline"]')).to_have_text(
        "3 to add, 1 to change, 1 to destroy"
    )
    items = summary.locator('[data-role="plan-resources"] li')
    expect(items).to_have_text(
        [
            "- aws_security_group_rule.legacy_ssh destroy",
            "~ aws_security_group.payments_api update in place",
            "+ aws_subnet.payments_private_c create",
            "+ aws_route_table_association.payments_private_c create",
            "+ aws_security_group_rule.payments_https_ingress create",
        ]
    )
    expect(summary).to_contain_text("artifact plan (tfplan.json) of stage plan")
    # He can decide from there: the approve form is under the plan.
    expect(sam.locator("form#approve-form")).to_be_visible()
    box_plan = summary.bounding_box()
    box_form = sam.locator("form#approve-form").bounding_box()
    assert box_plan and box_form and box_plan["y"] < box_form["y"]
    assert same_document(sam), "the run page reloaded"
    shot(sam, "13-gate-plan-summary")

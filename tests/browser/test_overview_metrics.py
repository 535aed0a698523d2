"""Issue 18, point 5, in Chromium: the overview's "Blocks per policy" counts gates whose final
outcome was blocked (or overridden) because of the policy, as a count and as a rate of the
gates it evaluated, and says so; denials that approvals later lifted are not blocks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def _gate_with_decisions(world, number, status, results):
    from django.utils import timezone

    from governance.models import Gate, Policy, PolicyDecision
    from orchestrator.models import Run, StageRun

    version = Policy.objects.get(name="prod-approvals").current_version
    at = timezone.now() - timedelta(days=2, hours=number)
    run = Run.objects.create(
        pipeline=world.pipeline,
        version=world.pipeline.current_version,
        number=900 + number,
        status="blocked" if status == "blocked" else "succeeded",
        created_at=at,
        finished_at=at + timedelta(hours=1),
    )
    stage = StageRun.objects.create(
        run=run,
        name="deploy-production",
        position=4,
        environment=world.production,
        status="blocked" if status == "blocked" else "succeeded",
        started_at=at,
        finished_at=at + timedelta(hours=1),
    )
    gate = Gate.objects.create(
        stage_run=stage, environment=world.production, status=status, created_at=at,
        decided_at=at + timedelta(minutes=30),
    )  # fmt: skip
    for result, current in results:
        PolicyDecision.objects.create(
            gate=gate, policy_version=version, enforcement=version.enforcement,
            input_hash="h", result=result, current=current,
        )  # fmt: skip


def test_blocks_per_policy_counts_final_outcomes(world, login, shot):
    # Blocked for good by prod-approvals.
    _gate_with_decisions(world, 1, "blocked", [("deny", True)])
    # Denied three times while approvals were missing, then opened: no block.
    _gate_with_decisions(world, 2, "open", [("deny", False), ("deny", False), ("pass", True)])

    dana = login(world.dana)
    dana.goto("/")
    tile = dana.locator("#metric-blocks-per-policy")
    expect(tile.locator("#blocks-definition")).to_contain_text(
        "final outcome was blocked or overridden"
    )
    row = tile.locator('tr[data-policy="prod-approvals"]')
    expect(row.locator('[data-role="blocks"]')).to_have_text("1")
    expect(row.locator('[data-role="rate"]')).to_contain_text("50%")
    expect(row.locator('[data-role="rate"]')).to_contain_text("of 2")
    shot(dana, "18-overview-blocks-per-policy")

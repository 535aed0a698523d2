"""The demo's plan policies at a real gate (evaluated by OPA): a platform deployment without
a plan is blocked, an open ingress in the plan blocks production with the policy's message,
and the plan the policies judged is what the gate shows."""

from __future__ import annotations

import pytest
from guardian.shortcuts import assign_perm

from governance import rego
from governance.models import Gate, GateStatus

from .plan_support import PLAN_PIPELINE, finish_plan, plan_bytes

pytestmark = pytest.mark.django_db

DEMO = {p["name"]: p for p in rego.demo_policies()}


@pytest.fixture
def platform_pipeline(make_pipeline, other_team, developer):
    pipeline = make_pipeline("infra-network", definition=PLAN_PIPELINE, team=other_team)
    for perm in ("view_pipeline", "run_pipeline"):
        assign_perm(f"orchestrator.{perm}", developer, pipeline)
    return pipeline


@pytest.fixture
def plan_policies(make_policy):
    for name in ("plan-required", "plan-no-open-ingress", "plan-max-destroy"):
        make_policy(name, DEMO[name]["source"], DEMO[name]["enforcement"])


def gate_of(run) -> Gate:
    return Gate.objects.get(stage_run__run=run)


def test_a_platform_deployment_without_a_plan_is_blocked(
    platform_pipeline, plan_policies, make_run, artifact_storage, t0
):
    run = make_run(platform_pipeline, now=t0)
    finish_plan(run, None, now=t0)  # the plan step stored nothing
    gate = gate_of(run)
    assert gate.input["artifacts"] == {}
    assert gate.status == GateStatus.BLOCKED
    assert (
        "plan-required: infra-network deploys infrastructure to production without a plan"
        in gate.reason
    )


def test_the_same_deployment_with_its_plan_waits_for_approvals(
    platform_pipeline, plan_policies, make_run, artifact_storage, t0
):
    run = make_run(platform_pipeline, now=t0)
    finish_plan(run, plan_bytes(), now=t0)
    gate = gate_of(run)
    assert gate.status == GateStatus.WAITING
    assert gate.reason.startswith("waiting for approvals")
    assert all(d.result == "pass" for d in gate.decisions.filter(current=True))


def test_an_open_ingress_blocks_production_with_the_policys_message(
    platform_pipeline, plan_policies, make_run, artifact_storage, t0
):
    run = make_run(platform_pipeline, now=t0)
    finish_plan(run, plan_bytes(cidr="0.0.0.0/0"), now=t0)
    gate = gate_of(run)
    assert gate.status == GateStatus.BLOCKED
    message = (
        "aws_security_group_rule.payments_https_ingress opens tcp 443 to the whole internet "
        "(0.0.0.0/0) in production: allow only the networks that need it"
    )
    assert gate.reason == f"blocked by hard-mandatory policy plan-no-open-ingress: {message}"
    decision = gate.decisions.get(current=True, policy_version__policy__name="plan-no-open-ingress")
    assert decision.deny == [message]

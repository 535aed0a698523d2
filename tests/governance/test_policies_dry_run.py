"""Dry runs: a draft replayed against the recorded inputs of past gates."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from guardian.shortcuts import assign_perm

from governance import policies, rego
from governance.models import (
    AuditEvent,
    Environment,
    Gate,
    Policy,
    PolicyDecision,
    PolicyVersion,
)
from orchestrator.models import Pipeline, PipelineVersion, Run, StageRun, Team

pytestmark = pytest.mark.django_db

BASE_INPUT = rego.demo_policies()[0]["tests"][0]["input"]

# Deny any branch but main.
MAIN_ONLY = """package clearway.main_only

import rego.v1

deny contains msg if {
	input.run.parameters.branch != "main"
	msg := sprintf("branch %s is not main", [input.run.parameters.branch])
}
"""

# What was published before: deny only hotfix branches.
NO_HOTFIX = """package clearway.main_only

import rego.v1

deny contains "hotfix" if startswith(input.run.parameters.branch, "hotfix")
"""


def branch_input(branch: str) -> dict:
    doc = copy.deepcopy(BASE_INPUT)
    doc["run"]["parameters"]["branch"] = branch
    return doc


def pipeline_row(slug: str, team: str = "payments") -> Pipeline:
    group, _ = Group.objects.get_or_create(name=f"team-{team}")
    team_obj, _ = Team.objects.get_or_create(slug=team, defaults={"name": team, "group": group})
    pipeline = Pipeline.objects.create(slug=slug, name=slug, team=team_obj)
    version = PipelineVersion.objects.create(pipeline=pipeline, number=1, definition="", spec={})
    pipeline.current_version = version
    pipeline.save()
    return pipeline


def gate_with_input(pipeline: Pipeline, env: Environment, branch: str, *, created_at) -> Gate:
    number = pipeline.runs.count() + 1
    run = Run.objects.create(
        pipeline=pipeline,
        version=pipeline.current_version,
        number=number,
        parameters={"branch": branch},
        created_at=created_at,
    )
    stage = StageRun.objects.create(run=run, name=f"deploy-{env.name}", position=0, environment=env)
    doc = copy.deepcopy(BASE_INPUT)
    doc["run"]["parameters"]["branch"] = branch
    doc["run"]["number"] = number
    doc["environment"]["name"] = env.name
    return Gate.objects.create(
        stage_run=stage,
        environment=env,
        input=doc,
        input_hash=rego.input_hash(doc),
        created_at=created_at,
    )


@pytest.fixture
def world(environments, policy_admin):
    now = timezone.now()
    prod, staging = environments["production"], environments["staging"]
    payments = pipeline_row("payments-api")
    infra = pipeline_row("infra-network", team="platform")
    gates = {
        "main-1": gate_with_input(payments, prod, "main", created_at=now - timedelta(days=1)),
        "main-2": gate_with_input(payments, prod, "main", created_at=now - timedelta(days=5)),
        "feature": gate_with_input(
            payments, prod, "feature-x", created_at=now - timedelta(days=10)
        ),
        "hotfix": gate_with_input(infra, prod, "hotfix-7", created_at=now - timedelta(days=20)),
        "main-3": gate_with_input(infra, prod, "main", created_at=now - timedelta(days=29)),
        # outside the 30 days
        "old": gate_with_input(payments, prod, "old-branch", created_at=now - timedelta(days=40)),
        # outside the policy's scope (staging)
        "staging": gate_with_input(payments, staging, "wip", created_at=now - timedelta(days=2)),
    }
    # A gate that never got an input (never evaluated) is not a release to replay.
    run = Run.objects.create(
        pipeline=payments, version=payments.current_version, number=99, created_at=now
    )
    stage = StageRun.objects.create(run=run, name="deploy", position=0, environment=prod)
    Gate.objects.create(stage_run=stage, environment=prod, created_at=now - timedelta(hours=1))
    user = policy_admin
    policy = policies.create_policy(
        actor=user,
        name="main-only",
        source=NO_HOTFIX,
        enforcement="hard-mandatory",
        environments=["production"],
        test_cases=[  # publishing needs a case that denies and one that passes
            {"name": "hotfix denies", "input": branch_input("hotfix-1"), "expect": {"deny": 1}},
            {"name": "main passes", "input": branch_input("main"), "expect": {"deny": []}},
        ],
    )
    v1 = policies.publish_policy(policy, actor=user)
    # What v1 decided at the time, for two of the gates.
    for key, result, deny in (("hotfix", "deny", ["hotfix"]), ("main-1", "pass", [])):
        PolicyDecision.objects.create(
            gate=gates[key],
            policy_version=v1,
            enforcement="hard-mandatory",
            input_hash=gates[key].input_hash,
            result=result,
            deny=deny,
        )
    policies.save_draft(policy, actor=user, source=MAIN_ONLY)
    return {"now": now, "gates": gates, "policy": policy, "user": user, "payments": payments}


def test_dry_run_counts_what_the_draft_would_have_blocked(world):
    policy = world["policy"]
    counts = (Policy.objects.count(), PolicyVersion.objects.count(), PolicyDecision.objects.count())
    events = AuditEvent.objects.count()
    report = policies.dry_run(policy.source, days=30, policy=policy, now=world["now"])
    assert report["gates"] == 5
    assert report["would_block"] == 2
    assert report["would_warn"] == 0
    assert report["summary"] == "would have blocked 2 of 5 releases in 30 days"
    # hotfix: v1 denied and the draft denies too → unchanged; feature: newly denied.
    changed = {c["gate"]: c for c in report["changed"]}
    feature = world["gates"]["feature"]
    assert set(changed) == {feature.pk}
    entry = changed[feature.pk]
    assert entry["before"] is None and entry["after"] == "deny"
    assert entry["messages"] == ["branch feature-x is not main"]
    assert entry["pipeline"] == "payments-api"
    assert entry["run"] == feature.stage_run.run_id
    # Nothing is written but one audit event.
    assert counts == (
        Policy.objects.count(),
        PolicyVersion.objects.count(),
        PolicyDecision.objects.count(),
    )
    assert AuditEvent.objects.count() == events + 1
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.action == "policy.dry_run"
    assert event.details["would_block"] == 2 and event.details["gates"] == 5


def test_a_shorter_window_replays_fewer_gates(world):
    report = policies.dry_run(
        world["policy"].source, days=7, policy=world["policy"], now=world["now"]
    )
    assert report["gates"] == 2
    assert report["summary"] == "would have blocked 0 of 2 releases in 7 days"


def test_without_a_policy_every_gate_is_replayed(world):
    report = policies.dry_run(MAIN_ONLY, days=30, now=world["now"])
    assert report["gates"] == 6  # + the staging gate
    assert report["would_block"] == 3
    # no policy: nothing was recorded before, so every non-pass is a change
    assert report["changed_count"] == 3


def test_advisory_enforcement_warns_instead_of_blocking(world):
    report = policies.dry_run(
        MAIN_ONLY, days=30, enforcement="advisory", policy=world["policy"], now=world["now"]
    )
    assert (report["would_block"], report["would_warn"]) == (0, 2)
    assert report["summary"] == "would have blocked 0 of 5 releases in 30 days and warned on 2"


def test_a_draft_that_stops_denying_shows_as_changed(world):
    lenient = MAIN_ONLY.replace('!= "main"', '== "never"')
    report = policies.dry_run(lenient, days=30, policy=world["policy"], now=world["now"])
    assert report["would_block"] == 0
    hotfix = world["gates"]["hotfix"]
    assert report["changed"] == [
        {
            "gate": hotfix.pk,
            "run": hotfix.stage_run.run_id,
            "run_number": hotfix.stage_run.run.number,
            "pipeline": "infra-network",
            "stage": "deploy-production",
            "environment": "production",
            "at": hotfix.created_at.isoformat(),
            "before": "deny",
            "after": "pass",
            "messages": [],
        }
    ]


def test_only_gates_the_actor_may_view_are_replayed(world, outsider):
    developer = outsider  # no role; may view one pipeline
    assign_perm("orchestrator.view_pipeline", developer, world["payments"])
    report = policies.dry_run(
        MAIN_ONLY, days=30, policy=world["policy"], now=world["now"], actor=developer
    )
    assert report["gates"] == 3  # the payments-api gates in production within 30 days
    assert AuditEvent.objects.order_by("-seq").first().actor_name == "olga"


def test_a_dry_run_of_a_broken_draft_is_a_compile_error(world):
    with pytest.raises(policies.PolicyCompileError):
        policies.dry_run("package x\n\ndeny contains msg if {", policy=world["policy"])


@pytest.mark.parametrize("days", [0, -1, 10_000, "many"])
def test_days_must_be_reasonable(world, days):
    with pytest.raises(policies.PolicyInvalid) as excinfo:
        policies.dry_run(MAIN_ONLY, days=days)
    assert excinfo.value.field == "days"

"""Shared fixtures for the report tests: users by role and a scenario of deployments built
directly from model rows (plus audit.record for the trail), so the reports are tested
independently of the gate verbs. Imported by the test_reports_*.py modules."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from governance import audit
from governance.models import (
    Approval,
    ApprovalRule,
    Environment,
    Gate,
    GateStatus,
    Outcome,
    Override,
    Policy,
    PolicyDecision,
    PolicyVersion,
    Tier,
)
from orchestrator.models import Pipeline, PipelineVersion, Run, StageRun, StageStatus, Team

User = get_user_model()

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday
PERIOD = {"from": "2026-01-01", "to": "2026-01-31"}
ROLES = [
    "viewer",
    "developer",
    "approver",
    "outsider",
    "policy-admin",
    "compliance-manager",
    "superuser",
]


def make_user(username: str, *groups: str, superuser: bool = False):
    user = User.objects.create_user(username=username, password="x", is_superuser=superuser)
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


@pytest.fixture(name="people")
def people_fixture(db) -> dict:
    """One user per role (keys of ROLES) plus the scenario's actors."""
    return {
        "viewer": make_user("vic", "viewer"),
        "developer": make_user("dana", "developer"),
        "approver": make_user("zoë.ångström", "approver", "sre"),
        "approver2": make_user("李雷", "approver", "sre"),
        "security": make_user("sofia", "approver", "security"),
        "outsider": make_user("otto"),
        "policy-admin": make_user("paula", "policy-admin"),
        "compliance-manager": make_user("carl", "compliance-manager"),
        "superuser": make_user("admin", superuser=True),
        "oncall": make_user("olga", "sre"),
    }


def api_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@dataclass
class Scenario:
    """What the scenario built, to compare report rows with."""

    people: dict
    prod: Environment
    staging: Environment
    pipeline: Pipeline
    other_pipeline: Pipeline
    stages: dict = field(default_factory=dict)  # label -> StageRun
    gates: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)


def _run(pipeline, number, user, at, *, params=None, retry_of=None, status="succeeded"):
    return Run.objects.create(
        pipeline=pipeline,
        version=pipeline.current_version,
        number=number,
        triggered_by=user,
        parameters=params or {},
        status=status,
        retry_of=retry_of,
        created_at=at,
        started_at=at,
        finished_at=at + timedelta(minutes=30),
    )


def _stage(run, env, at, status, *, name="deploy-production", position=3):
    return StageRun.objects.create(
        run=run,
        name=name,
        position=position,
        environment=env,
        status=status,
        started_at=None if status == StageStatus.BLOCKED else at + timedelta(minutes=10),
        finished_at=at + timedelta(minutes=20),
    )


def _gate(stage, env, at, status):
    return Gate.objects.create(
        stage_run=stage,
        environment=env,
        status=status,
        created_at=at + timedelta(minutes=1),
        decided_at=at + timedelta(minutes=9),
        reason="" if status == GateStatus.OPEN else f"gate {status}",
    )


def _approve(gate, user, at, group, comment="", decision="approve", **extra):
    return Approval.objects.create(
        gate=gate,
        user=user,
        decision=decision,
        comment=comment,
        groups=[group],
        attributed_group=group,
        seen_hash="h",
        created_at=at,
        **extra,
    )


@pytest.fixture(name="scenario")
def scenario_fixture(people) -> Scenario:
    """January 2026, payments-api and claims-service:

    A  #1 prod   open      3 approvals, a refused self-approval by dana, freeze pass
    B  #2 prod   overridden by olga (justification starts with "="), the stage FAILED
    C  #3 prod   rejected by sofia (comment starts with "@"), stage blocked
    D  #4 prod   retry of #2, succeeded, unicode reason
    E  claims #1 staging (protected), succeeded
    F  #5 prod   December 2025: outside the period
    plus a policy published in the period."""
    p = people
    team = Team.objects.create(slug="payments", name="Payments", group=make_group("team-payments"))
    other_team = Team.objects.create(slug="claims", name="Claims", group=make_group("team-claims"))
    prod = Environment.objects.create(name="production", tier=Tier.PRODUCTION, protected=True)
    staging = Environment.objects.create(name="staging", tier=Tier.STAGING, protected=True)
    ApprovalRule.objects.create(
        environment=prod, group=Group.objects.get(name="sre"), required_count=2
    )
    ApprovalRule.objects.create(
        environment=prod, group=Group.objects.get(name="security"), required_count=1
    )
    ApprovalRule.objects.create(
        environment=staging, group=Group.objects.get(name="sre"), required_count=1
    )
    pipeline = _pipeline("payments-api", "Payments API", team, p["developer"])
    other = _pipeline("claims-service", "Claims service", other_team, p["developer"])
    policy = Policy.objects.create(
        name="freeze", source="package clearway.freeze", enforcement="soft-mandatory"
    )
    pv1 = PolicyVersion.objects.create(
        policy=policy,
        number=1,
        source="a",
        sha256="1" * 64,
        enforcement="soft-mandatory",
        created_at=T0 - timedelta(days=30),
    )
    s = Scenario(p, prod, staging, pipeline, other)

    # A: a clean change, with a refused self-approval attempt.
    at = T0
    run = _run(
        pipeline,
        1,
        p["developer"],
        at,
        params={
            "version": "2.14.0",
            "commit": "abc1234",
            "branch": "main",
            "reason": "CHG-42 quarterly release",
        },
    )
    stage = _stage(run, prod, at, StageStatus.SUCCEEDED)
    gate = _gate(stage, prod, at, GateStatus.OPEN)
    audit.record(p["developer"], "run.trigger", run, at=at)
    audit.record(
        p["developer"],
        "gate.approve",
        gate,
        outcome=Outcome.DENIED,
        at=at + timedelta(minutes=2),
        reason="separation of duties: dana triggered this run and may not approve it",
    )
    _approve(gate, p["approver"], at + timedelta(minutes=3), "sre", "looks good, Zoë")
    _approve(gate, p["approver2"], at + timedelta(minutes=4), "sre", "同意")
    _approve(gate, p["security"], at + timedelta(minutes=5), "security")
    for who in ("approver", "approver2", "security"):
        audit.record(p[who], "gate.approve", gate, at=at + timedelta(minutes=5))
    PolicyDecision.objects.create(
        gate=gate,
        policy_version=pv1,
        enforcement="soft-mandatory",
        input_hash="x",
        result="deny",
        deny=["old"],
        current=False,
    )
    PolicyDecision.objects.create(
        gate=gate,
        policy_version=pv1,
        enforcement="soft-mandatory",
        input_hash="y",
        result="pass",
        current=True,
    )
    audit.record(None, "stage.succeeded", stage, at=at + timedelta(minutes=20))
    s.stages["A"], s.gates["A"], s.runs["A"] = stage, gate, run

    # B: break-glass override, then the deployment failed.
    at = T0 + timedelta(days=2)
    run = _run(
        pipeline,
        2,
        p["developer"],
        at,
        status="failed",
        params={"version": "2.14.1", "commit": "def5678", "branch": "hotfix"},
    )
    stage = _stage(run, prod, at, StageStatus.FAILED)
    stage.reason = "step rollout failed"
    stage.save(update_fields=["reason"])
    gate = _gate(stage, prod, at, GateStatus.OVERRIDDEN)
    PolicyDecision.objects.create(
        gate=gate,
        policy_version=pv1,
        enforcement="soft-mandatory",
        input_hash="z",
        result="deny",
        deny=["freeze in effect"],
    )
    Override.objects.create(
        gate=gate,
        user=p["oncall"],
        policies=["freeze"],
        justification='=HYPERLINK("http://evil") incident INC-7 outage',
        created_at=at + timedelta(minutes=8),
    )
    audit.record(p["oncall"], "gate.override", gate, at=at + timedelta(minutes=8))
    s.stages["B"], s.gates["B"], s.runs["B"] = stage, gate, run

    # C: rejected.
    at = T0 + timedelta(days=3)
    run = _run(pipeline, 3, p["developer"], at, status="blocked", params={"version": "2.15.0"})
    stage = _stage(run, prod, at, StageStatus.BLOCKED)
    gate = _gate(stage, prod, at, GateStatus.REJECTED)
    _approve(
        gate,
        p["security"],
        at + timedelta(minutes=6),
        "security",
        "@risk: no rollback plan",
        decision="reject",
    )
    audit.record(p["security"], "gate.reject", gate, at=at + timedelta(minutes=6))
    s.stages["C"], s.gates["C"], s.runs["C"] = stage, gate, run

    # D: the retry of B, succeeded.
    at = T0 + timedelta(days=4)
    run = _run(
        pipeline,
        4,
        p["developer"],
        at,
        retry_of=s.runs["B"],
        params={"version": "2.14.1", "commit": "def5678", "change": "Zoë Ångström 李雷 fix"},
    )
    stage = _stage(run, prod, at, StageStatus.SUCCEEDED)
    gate = _gate(stage, prod, at, GateStatus.OPEN)
    _approve(gate, p["approver"], at + timedelta(minutes=2), "sre")
    _approve(
        gate,
        p["oncall"],
        at + timedelta(minutes=2),
        "sre",
        "-1 day old",
        void=True,
        void_reason="expired",
    )
    s.stages["D"], s.gates["D"], s.runs["D"] = stage, gate, run

    # E: another pipeline, another protected environment.
    at = T0 + timedelta(days=5)
    run = _run(other, 1, p["superuser"], at, params={"version": "0.9"})
    stage = _stage(run, staging, at, StageStatus.SUCCEEDED, name="deploy-staging")
    gate = _gate(stage, staging, at, GateStatus.OPEN)
    _approve(gate, p["approver"], at + timedelta(minutes=2), "sre")
    s.stages["E"], s.gates["E"], s.runs["E"] = stage, gate, run

    # F: outside the period.
    at = datetime(2025, 12, 20, 12, 0, tzinfo=UTC)
    run = _run(pipeline, 5, p["developer"], at)
    stage = _stage(run, prod, at, StageStatus.SUCCEEDED)
    s.stages["F"], s.gates["F"] = stage, _gate(stage, prod, at, GateStatus.OPEN)

    # A policy change in the period.
    PolicyVersion.objects.create(
        policy=policy,
        number=2,
        source="b",
        sha256="2" * 64,
        enforcement="hard-mandatory",
        created_at=T0 + timedelta(days=1),
    )
    audit.record(
        p["policy-admin"],
        "policy.publish",
        policy,
        at=T0 + timedelta(days=1),
        version=2,
        previous_version=1,
        enforcement="hard-mandatory",
        previous_enforcement="soft-mandatory",
        diff={"added": 3, "removed": 1},
        sha256="2" * 64,
    )
    return s


def make_group(name: str) -> Group:
    return Group.objects.get_or_create(name=name)[0]


def _pipeline(slug, name, team, author) -> Pipeline:
    pipeline = Pipeline.objects.create(slug=slug, name=name, team=team)
    version = PipelineVersion.objects.create(
        pipeline=pipeline, number=1, definition="name: x", spec={"stages": []}, author=author
    )
    pipeline.current_version = version
    pipeline.save(update_fields=["current_version"])
    for perm in ("view_pipeline", "run_pipeline", "change_pipeline"):
        assign_perm(f"orchestrator.{perm}", team.group, pipeline)
    return pipeline


# --- reading exports --------------------------------------------------------------------


def body_of(response) -> bytes:
    return b"".join(response.streaming_content)


def split_trailer(data: bytes) -> tuple[bytes, bytes]:
    """(everything before the last line, the last line)."""
    assert data.endswith(b"\n")
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    return data[:cut], data[cut:]


def parse_csv(data: bytes) -> dict:
    """{"header": {key: value}, "<section>": [row dicts], "trailer": {key: value}}."""
    text = data.decode("utf-8").removeprefix("\ufeff")
    out: dict = {"header": {}, "trailer": {}}
    section = None
    columns = None
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        if row[0] == "#":
            target = out["trailer"] if section else out["header"]
            if len(row) >= 3:
                target[row[1]] = row[2]
            continue
        if row[0].startswith("## "):
            section, columns = row[0][3:], None
            out[section] = []
            continue
        if columns is None:
            columns = row
            continue
        out[section].append(dict(zip(columns, row, strict=True)))
    return out


def parse_json(data: bytes) -> dict:
    return json.loads(data)

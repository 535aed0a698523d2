"""The change report over a history made by the real verbs: runs triggered with
orchestrator.actions.trigger_run (the engine calls the gate hook), decided with
governance.actions.approve_gate / reject_gate / override_gate, steps claimed and finished
as a worker would. Expected rows and exceptions in CSV, JSON and PDF."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm
from pypdf import PdfReader

from governance import actions as gate_actions
from governance import audit, policies
from governance.models import ApprovalRule, Environment, Gate, GateStatus, ReportJob, Tier
from governance.tasks import generate_report_pdf
from orchestrator import actions as run_actions
from orchestrator.models import StageStatus, StepRun, Team

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    api_for,
    body_of,
    make_group,
    parse_csv,
    people_fixture,
)

PIPELINE = """
name: Payments API
parameters:
  - name: version
    required: true
  - name: commit
    default: "0000000"
  - name: reason
    default: ""
stages:
  - name: deploy-production
    environment: production
    steps:
      - name: rollout
        run: echo rolling out
"""


def freeze_cases() -> list[dict]:
    """Publishing needs a case that denies and one that passes."""
    from governance import rego

    prod = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    prod["environment"]["tier"] = "production"
    staging = json.loads(json.dumps(prod))
    staging["environment"]["tier"] = "staging"
    return [
        {"name": "production denies", "input": prod, "expect": {"deny": 1}},
        {"name": "staging passes", "input": staging, "expect": {"deny": []}},
    ]


DENY_ALL = """package clearway.change_freeze

import rego.v1

deny contains "change freeze in effect" if {
	input.environment.tier == "production"
}
"""


def finish(run, *, succeeded: bool) -> None:
    """Play the worker: claim the queued step and report its outcome."""
    step = StepRun.objects.get(stage__run=run)
    assert run_actions.claim_step(step.pk, step.attempt, worker="test") is not None
    run_actions.finish_step(
        step.pk, step.attempt, succeeded=succeeded, exit_code=0 if succeeded else 1
    )


def gate_of(run) -> Gate:
    return Gate.objects.get(stage_run__run=run)


@pytest.fixture
def history(people, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    p = people
    prod = Environment.objects.create(name="production", tier=Tier.PRODUCTION, protected=True)
    sre = Group.objects.get(name="sre")
    ApprovalRule.objects.create(environment=prod, group=sre, required_count=1)
    assign_perm("governance.approve_environment", sre, prod)
    assign_perm("governance.override_environment", p["oncall"], prod)
    p["oncall"].groups.add(Group.objects.get(name="approver"))  # sees every pipeline
    team = Team.objects.create(slug="payments", name="Payments", group=make_group("team-payments"))
    pipeline = run_actions.create_pipeline(
        actor=p["developer"], slug="payments-api", definition=PIPELINE, team=team
    )

    # 1: Zoë triggers and tries to approve her own change (refused), 李雷 approves.
    run1 = run_actions.trigger_run(
        pipeline, actor=p["approver"], parameters={"version": "1.0.0", "reason": "CHG-1 Zoë"}
    )
    gate1 = gate_of(run1)
    assert gate1.status == GateStatus.WAITING
    with pytest.raises(gate_actions.GateRefused):
        gate_actions.approve_gate(gate1, actor=p["approver"], comment="mine")
    gate_actions.approve_gate(gate1, actor=p["approver2"], comment="LGTM — 李雷")
    finish(run1, succeeded=True)

    # 2: 李雷 rejects.
    run2 = run_actions.trigger_run(pipeline, actor=p["developer"], parameters={"version": "1.1.0"})
    gate_actions.reject_gate(gate_of(run2), actor=p["approver2"], comment="no rollback plan")

    # 3: a soft-mandatory freeze; olga breaks glass, Zoë approves, the deployment fails.
    policy = policies.create_policy(
        actor=p["policy-admin"],
        name="change-freeze",
        source=DENY_ALL,
        enforcement="soft-mandatory",
        tiers=["production"],
        test_cases=freeze_cases(),
    )
    policies.publish_policy(policy, actor=p["policy-admin"])
    run3 = run_actions.trigger_run(pipeline, actor=p["developer"], parameters={"version": "1.2.0"})
    gate3 = gate_of(run3)
    gate_actions.override_gate(
        gate3, actor=p["oncall"], justification="=SUM(1) customer outage INC-9, fix must ship"
    )
    gate_actions.approve_gate(gate3, actor=p["approver"], comment="ok with the override")
    finish(run3, succeeded=False)
    runs = {"1": run1, "2": run2, "3": run3}
    for run in runs.values():
        run.refresh_from_db()
    return runs


def test_report_from_real_actions(history, people):
    r1, r2, r3 = history["1"], history["2"], history["3"]
    assert r1.status == "succeeded" and r2.status == "blocked" and r3.status == "failed"
    carl = people["compliance-manager"]
    response = api_for(carl).get("/api/v1/reports/changes", {"format": "json"})
    doc = json.loads(body_of(response))
    rows = doc["changes"]
    assert [r["run_number"] for r in rows] == [1, 2, 3]
    one, two, three = rows
    assert one["outcome"] == StageStatus.SUCCEEDED and one["gate_status"] == "open"
    assert one["separation_of_duties"].startswith("self-approval attempt refused: zoë.ångström — ")
    assert "triggered this run" in one["separation_of_duties"]
    assert one["requested_by"] == "zoë.ångström"
    assert [(a["user"], a["decision"]) for a in one["approvals"]] == [("李雷", "approve")]
    assert (one["approvals_required"], one["approvals_given"]) == (1, 1)
    assert one["reason"] == "CHG-1 Zoë" and one["exceptions"] == ["refused-approval"]
    assert two["gate_status"] == "rejected" and two["outcome"] == "blocked"
    assert two["exceptions"] == ["gate-rejected"]
    assert three["gate_status"] == "overridden" and three["outcome"] == "failed"
    assert three["overrides"][0]["user"] == "olga"
    assert three["policy_decisions"][0]["policy"] == "change-freeze"
    assert three["policy_decisions"][0]["result"] == "deny"
    assert three["exceptions"] == ["override", "failed-deployment"]
    assert three["related_run"] is None
    for row in rows:
        assert row["audit_seq_first"] < row["audit_seq_last"]

    kinds = [(e["kind"], e["change_id"]) for e in doc["exceptions"]]
    assert kinds == [
        ("override", three["change_id"]),
        ("gate-rejected", two["change_id"]),
        ("failed-deployment", three["change_id"]),
        ("refused-approval", one["change_id"]),
        ("policy-change", ""),
    ]
    rejected = doc["exceptions"][1]
    assert rejected["actor"] == "李雷" and "no rollback plan" in rejected["detail"]
    assert doc["chain_verification"]["ok"] and audit.verify().ok

    csv_doc = parse_csv(body_of(api_for(carl).get("/api/v1/reports/changes", {"format": "csv"})))
    assert [r["change_id"] for r in csv_doc["changes"]] == [r["change_id"] for r in rows]
    override = next(e for e in csv_doc["exceptions"] if e["kind"] == "override")
    assert override["detail"].startswith("'=SUM(1)")

    job = ReportJob.objects.create(requested_by=carl, filters={})
    generate_report_pdf(job.pk)
    job.refresh_from_db()
    from django.conf import settings

    reader = PdfReader(io.BytesIO((settings.MEDIA_ROOT / job.file).read_bytes()))
    text = " ".join(" ".join(p.extract_text() for p in reader.pages).split())
    for needle in (
        "self-approval attempt refused: zoë.ångström",
        "李雷",
        "no rollback plan",
        "INC-9",
        "change-freeze",
        three["change_id"],
        "Failed production deployment",
    ):
        assert needle in text, needle

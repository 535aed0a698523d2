"""A terraform plan that opens ingress from 0.0.0.0/0 blocks the production gate, on
PostgreSQL + Redis with a real `celery worker`: the demo's infra-network plan step writes
tfplan.json in the sandbox, the worker stores it as the policy-input artifact `plan`, the
production gate's plan policies (evaluated by OPA) read it as `input.artifacts.plan`, and
the gate panel shows the plan's summary and resources."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.test import Client

from governance import audit, rego
from governance.models import Gate, GateStatus
from orchestrator import actions
from orchestrator.models import Artifact, RunStatus

from .conftest import start_worker, wait_for

pytestmark = pytest.mark.integration

DEMO_PIPELINE = Path(__file__).resolve().parents[2] / "dashboard/demo/infra-network.yaml"
DEMO = {p["name"]: p for p in rego.demo_policies()}
MESSAGE = (
    "aws_security_group_rule.payments_https_ingress opens tcp 443 to the whole internet "
    "(0.0.0.0/0) in production: allow only the networks that need it"
)


@pytest.fixture
def live_worker(live_db, log_dir):
    proc = start_worker(live_db, log_dir, name="plan-worker")
    yield proc
    proc.stop()


@pytest.fixture
def infra(make_pipeline, make_policy, other_team, superuser, environments):
    for name in ("plan-no-open-ingress", "plan-required", "plan-required-tags"):
        make_policy(name, DEMO[name]["source"], DEMO[name]["enforcement"])
    return make_pipeline(
        "infra-network", definition=DEMO_PIPELINE.read_text(encoding="utf-8"), team=other_team
    )


def _run_to_gate(pipeline, actor, **parameters):
    run = actions.trigger_run(pipeline, actor=actor, parameters={"change": "CHG-1", **parameters})

    def at_gate():
        run.refresh_from_db()
        gate = Gate.objects.filter(stage_run__run=run).first()
        return gate if gate is not None and run.status != RunStatus.RUNNING else None

    gate = wait_for(at_gate, 90, what=f"run {run.pk} to reach its production gate")
    return run, gate


def test_an_open_ingress_in_the_plan_blocks_production(infra, superuser, approver, live_worker):
    run, gate = _run_to_gate(infra, superuser, ingress_cidr="0.0.0.0/0")
    assert run.status == RunStatus.BLOCKED, (run.status, gate.reason, live_worker.output()[-3000:])
    assert gate.status == GateStatus.BLOCKED
    assert gate.reason == f"blocked by hard-mandatory policy plan-no-open-ingress: {MESSAGE}"
    decision = gate.decisions.get(current=True, policy_version__policy__name="plan-no-open-ingress")
    assert decision.deny == [MESSAGE]

    # The worker stored the file the step wrote; the gate read exactly those bytes.
    row = Artifact.objects.get(stage_run__run=run, name="plan")
    assert (row.path, row.policy_input) == ("tfplan.json", True)
    with storages["artifacts"].open(row.storage_key, "rb") as fh:
        stored = fh.read()
    assert hashlib.sha256(stored).hexdigest() == row.sha256
    [listed] = gate.input["artifact_files"]
    assert listed["sha256"] == row.sha256 and listed["error"] == ""
    plan = gate.input["artifacts"]["plan"]
    assert plan["format_version"] == "1.2"
    rule = next(
        rc
        for rc in plan["resource_changes"]
        if rc["type"] == "aws_security_group_rule" and rc["change"]["actions"] == ["create"]
    )
    assert rule["change"]["after"]["cidr_blocks"] == ["0.0.0.0/0"]

    # The approver's gate panel shows the plan's summary and the resources.
    client = Client()
    client.force_login(approver)
    body = client.get(f"/runs/{run.pk}/gate-panel/").content.decode()
    headline = re.search(r'data-role="plan-headline"><strong>([^<]+)</strong>', body)
    assert headline and headline.group(1) == "3 to add, 1 to change, 1 to destroy"
    for address in (
        "aws_subnet.payments_private_c",
        "aws_route_table_association.payments_private_c",
        "aws_security_group_rule.payments_https_ingress",
        "aws_security_group.payments_api",
        "aws_security_group_rule.legacy_ssh",
    ):
        assert f'<span class="mono">{address}</span>' in body
    assert MESSAGE in body
    assert audit.verify().ok


def test_the_same_plan_inside_the_network_waits_for_approvals(infra, superuser, live_worker):
    run, gate = _run_to_gate(infra, superuser)
    assert run.status == RunStatus.WAITING, (run.status, gate.reason)
    assert gate.status == GateStatus.WAITING
    assert gate.reason.startswith("waiting for approvals")
    assert {d.result for d in gate.decisions.filter(current=True)} == {"pass"}

"""The gate detail API gives the plan summary an approver sees in the panel."""

from __future__ import annotations

import pytest

from governance.models import Gate

from .plan_support import PLAN_PIPELINE, finish_plan, plan_bytes

pytestmark = pytest.mark.django_db


def test_the_gate_detail_has_the_plan_summary(
    make_pipeline, make_run, artifact_storage, approver, api, t0
):
    run = make_run(make_pipeline("infra-network", definition=PLAN_PIPELINE), now=t0)
    finish_plan(run, plan_bytes(), now=t0)
    gate = Gate.objects.get(stage_run__run=run)
    response = api(approver).get(f"/api/v1/gates/{gate.pk}/")
    assert response.status_code == 200, response.content
    [plan] = response.json()["plans"]
    assert plan["artifact"] == "plan" and plan["stage"] == "plan" and plan["error"] == ""
    assert plan["sha256"] == gate.input["artifact_files"][0]["sha256"]
    summary = plan["summary"]
    assert summary["headline"] == "3 to add, 1 to change, 1 to destroy"
    assert summary["counts"] == {"add": 3, "change": 1, "destroy": 1, "replace": 0, "forget": 0}
    assert summary["resources"]["destroy"] == ["aws_security_group_rule.legacy_ssh"]


def test_a_gate_without_artifacts_has_no_plans(gate, approver, api):
    response = api(approver).get(f"/api/v1/gates/{gate.pk}/")
    assert response.json()["plans"] == []

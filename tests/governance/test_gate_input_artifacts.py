"""Schema 2 of the gate input: a policy-input artifact of an earlier stage is parsed and given
to the policies as `input.artifacts.<name>`, every earlier artifact is listed with its
digest, and an artifact that cannot be a policy input blocks the gate with the reason."""

from __future__ import annotations

import json

import jsonschema
import pytest

from governance import rego
from governance.models import Gate, GateStatus
from orchestrator.models import RunStatus, StageRun

from .plan_support import PLAN_PIPELINE, finish_plan, plan_bytes, store_artifact

pytestmark = pytest.mark.django_db

SEES_PLAN = """package clearway.sees_plan

import rego.v1

deny contains msg if {
	some rc in input.artifacts.plan.resource_changes
	"delete" in rc.change.actions
	msg := sprintf("destroys %s", [rc.address])
}
"""


@pytest.fixture
def infra(make_pipeline):
    return make_pipeline("infra-network", definition=PLAN_PIPELINE)


def gate_of(run) -> Gate:
    return Gate.objects.select_related("stage_run").get(stage_run__run=run)


def test_the_plan_is_parsed_into_the_input_and_listed_with_its_digest(
    infra, make_run, make_policy, artifact_storage, t0
):
    make_policy("sees-plan", SEES_PLAN, "advisory")
    run = make_run(infra, now=t0)
    content = plan_bytes()
    finish_plan(run, content, now=t0)
    gate = gate_of(run)
    doc = gate.input
    assert doc["schema_version"] == 2
    assert doc["artifacts"]["plan"] == json.loads(content)
    [entry] = doc["artifact_files"]
    row = StageRun.objects.get(run=run, name="plan").artifacts.get()
    assert entry == {
        "name": "plan",
        "stage": "plan",
        "path": "tfplan.json",
        "sha256": row.sha256,
        "size": len(content),
        "policy_input": True,
        "error": "",
    }
    jsonschema.validate(doc, rego.INPUT_SCHEMA)
    # The policy saw the plan: it denied the destroyed rule.
    [decision] = gate.decisions.filter(current=True)
    assert decision.deny == ["destroys aws_security_group_rule.legacy_ssh"]


def test_an_artifact_that_is_not_a_policy_input_is_listed_but_not_parsed(
    infra, make_run, artifact_storage, t0
):
    run = make_run(infra, now=t0)
    finish_plan(run, b"not json at all", now=t0, name="log", path="plan.log", policy_input=False)
    doc = gate_of(run).input
    assert doc["artifacts"] == {}
    assert [(f["name"], f["policy_input"], f["error"]) for f in doc["artifact_files"]] == [
        ("log", False, "")
    ]
    assert gate_of(run).status == GateStatus.WAITING  # nothing wrong with it


def test_invalid_json_blocks_the_gate_with_the_parse_error(
    infra, make_run, make_policy, artifact_storage, t0
):
    make_policy("sees-plan", SEES_PLAN, "advisory")
    run = make_run(infra, now=t0)
    finish_plan(run, b'{\n  "format_version": "1.2",\n  "resource_changes": [\n', now=t0)
    gate = gate_of(run)
    run.refresh_from_db()
    assert gate.status == GateStatus.BLOCKED
    assert run.status == RunStatus.BLOCKED
    assert gate.reason == (
        "blocked: policy-input artifact plan of stage plan (tfplan.json): it is not valid "
        "JSON (line 4, column 1: Expecting value)"
    )
    assert "plan" not in gate.input["artifacts"]
    assert gate.input["artifact_files"][0]["error"].startswith("it is not valid JSON (line 4")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("oversize", "over the policy-input limit of 64 bytes"),
        ("tampered", "does not match the SHA-256 recorded when the step stored it"),
        ("purged", "it was purged (past its retention)"),
        ("not-utf8", "it is not UTF-8 text"),
        ("nan", "it is not valid JSON (NaN is not a JSON number)"),
        ("nul", "it contains a NUL character (\\u0000)"),
    ],
)
def test_an_unusable_policy_input_fails_closed(
    damage, fragment, infra, make_run, artifact_storage, settings, t0
):
    run = make_run(infra, now=t0)
    stage = StageRun.objects.get(run=run, name="plan")
    step = stage.steps.get()
    content = {
        "not-utf8": b"\xff\xfe{}",
        "nan": b'{"format_version": "1.2", "resource_changes": [], "cost": NaN}',
        "nul": b'{"format_version": "1.2", "note": "a\\u0000b"}',
    }.get(damage) or plan_bytes()
    row = store_artifact(step, content)
    if damage == "oversize":
        settings.CLEARWAY = {**settings.CLEARWAY, "POLICY_INPUT_MAX_BYTES": 64}
    elif damage == "tampered":
        with open(artifact_storage.path(row.storage_key), "wb") as fh:
            fh.write(content.replace(b"10.20.0.0/16", b"0.0.0.0/0"))
    elif damage == "purged":
        row.purged_at = t0
        row.save(update_fields=["purged_at"])
    finish_plan(run, None, now=t0)  # the step finishes; its file is stored already
    gate = gate_of(run)
    assert gate.status == GateStatus.BLOCKED
    assert gate.reason.startswith("blocked: policy-input artifact plan of stage plan")
    assert fragment in gate.reason


def test_several_files_under_one_policy_input_name_are_refused(
    infra, make_run, artifact_storage, t0
):
    run = make_run(infra, now=t0)
    step = StageRun.objects.get(run=run, name="plan").steps.get()
    store_artifact(step, b"{}", path="a/tfplan.json")
    finish_plan(run, b"{}", now=t0, path="b/tfplan.json")
    gate = gate_of(run)
    assert gate.status == GateStatus.BLOCKED
    assert "a policy input is one file, and 2 files are named plan" in gate.reason
    assert "(plan:a/tfplan.json, plan:b/tfplan.json)" in gate.reason


def test_unreadable_storage_makes_the_gate_wait_not_open(infra, make_run, artifact_storage, t0):
    run = make_run(infra, now=t0)
    step = StageRun.objects.get(run=run, name="plan").steps.get()
    row = store_artifact(step, plan_bytes())
    artifact_storage.delete(row.storage_key)  # the storage lost it (or is down)
    finish_plan(run, None, now=t0)
    gate = gate_of(run)
    assert gate.status == GateStatus.WAITING
    assert gate.reason.startswith("cannot evaluate the policies: the artifact storage cannot")


def test_building_the_input_costs_one_query_for_the_artifacts(
    infra, make_run, artifact_storage, django_assert_max_num_queries, t0
):
    from governance.gate_input import artifact_input

    run = make_run(infra, now=t0)
    finish_plan(run, plan_bytes(), now=t0)
    stage = StageRun.objects.get(run=run, name="apply-production")
    with django_assert_max_num_queries(1):
        parsed, files = artifact_input(stage)
    assert list(parsed) == ["plan"] and len(files) == 1

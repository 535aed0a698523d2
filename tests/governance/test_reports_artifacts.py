"""The change report names each deployment's artifacts with their digests: those its stage
received from the stages it needs (what was applied) and those it stored itself."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.models import Artifact, StageRun, StepRun

from .test_reports_changes import export
from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    people_fixture,
    scenario_fixture,
)


@pytest.fixture
def carl(people):
    return people["compliance-manager"]


def _artifact(stage: StageRun, name: str, path: str, digest: str) -> Artifact:
    step = stage.steps.first() or StepRun.objects.create(stage=stage, name="s", position=0)
    return Artifact.objects.create(
        stage_run=stage,
        step_run=step,
        name=name,
        path=path,
        size=42,
        sha256=digest,
        content_type="application/json",
        storage_key=f"k/{stage.pk}/{name}",
        expires_at=stage.run.created_at + timedelta(days=90),
    )


def test_a_deployment_lists_the_artifacts_it_received_and_stored(scenario, carl):
    _, _, doc = export(carl, "json")
    first = doc["changes"][0]
    assert first["artifacts"] == []
    deploy = StageRun.objects.get(pk=int(first["change_id"].removeprefix("CHG-")))
    plan = StageRun.objects.create(run=deploy.run, name="plan-x", position=99)
    StageRun.objects.filter(pk=deploy.pk).update(needs=[*deploy.needs, "plan-x"])
    unrelated = StageRun.objects.create(run=deploy.run, name="docs-x", position=98)
    _artifact(plan, "plan", "tfplan.json", "a" * 64)
    _artifact(deploy, "receipt", "out/receipt.txt", "b" * 64)
    _artifact(unrelated, "site", "site.tar", "c" * 64)
    _, _, doc = export(carl, "json")
    row = next(r for r in doc["changes"] if r["change_id"] == first["change_id"])
    assert [
        (a["role"], a["stage"], a["name"], a["path"], a["sha256"]) for a in row["artifacts"]
    ] == [
        ("received", "plan-x", "plan", "tfplan.json", "a" * 64),
        ("produced", deploy.name, "receipt", "out/receipt.txt", "b" * 64),
    ] or [(a["role"], a["stage"], a["name"]) for a in row["artifacts"]] == [
        ("produced", deploy.name, "receipt"),
        ("received", "plan-x", "plan"),
    ]
    _, text, _ = export(carl, "csv")
    assert f"received plan-x/plan: tfplan.json sha256:{'a' * 64}".encode() in text

"""Helpers for the plan-policy tests: a pipeline whose plan stage stores `tfplan.json` as a
policy input before a production deploy, and a way to play its plan step with a given file
(the Artifact row and the stored file are written as the executor stores them)."""

from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import timedelta
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from orchestrator import actions
from orchestrator.models import Artifact, StageRun, StepStatus

PLANS = Path(__file__).parent / "plans"

PLAN_PIPELINE = textwrap.dedent(
    """\
    name: Infra Network
    stages:
      - name: plan
        steps:
          - name: terraform-plan
            run: terraform show -json tfplan > tfplan.json
            artifacts:
              - {name: plan, path: tfplan.json, policy_input: true}
      - name: apply-production
        needs: [plan]
        environment: production
        steps:
          - name: terraform-apply
            run: terraform apply tfplan
    """
)


def plan_bytes(name: str = "network.json", **changes) -> bytes:
    """A fixture plan, optionally with the payments_https_ingress rule's CIDRs replaced."""
    doc = json.loads((PLANS / name).read_text(encoding="utf-8"))
    if "cidr" in changes:
        for rc in doc["resource_changes"]:
            if rc["address"] == "aws_security_group_rule.payments_https_ingress":
                rc["change"]["after"]["cidr_blocks"] = [changes["cidr"]]
    return json.dumps(doc, indent=2).encode()


def store_artifact(step, content: bytes, *, name="plan", path="tfplan.json", policy_input=True):
    """Store `content` as the step's artifact, like the executor does when the step succeeds."""
    key = f"runs/{step.stage.run_id}/{step.pk}/{path}"
    stored = storages["artifacts"].save(key, ContentFile(content))
    return Artifact.objects.create(
        stage_run=step.stage,
        step_run=step,
        name=name,
        path=path,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content_type="application/json",
        storage_key=stored,
        policy_input=policy_input,
        expires_at=timezone.now() + timedelta(days=90),
    )


def finish_plan(run, content: bytes | None, *, now=None, **kwargs):
    """Play the plan stage: claim its step, store `content` (None: no artifact), finish."""
    stage = StageRun.objects.get(run=run, name="plan")
    step = stage.steps.get(status=StepStatus.QUEUED)
    actions.claim_step(step.pk, step.attempt, worker="test-worker")
    if content is not None:
        store_artifact(step, content, **kwargs)
    actions.finish_step(step.pk, step.attempt, succeeded=True, exit_code=0, now=now)
    run.refresh_from_db()
    return run

"""The gate's policy input document (schema_version 1, docs/policy-input.md) and the hash of
what an approver sees (`seen_hash`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.utils import timezone

from orchestrator.models import StageRun, StepRun

from . import rego
from .errors import GateInputError
from .models import Approval, Environment, Gate, PolicyDecision, PolicyVersion
from .policies import in_scope


def policy_versions(environment: Environment) -> list[PolicyVersion]:
    """The published versions of the enabled policies in scope of `environment`, by name."""
    policies = in_scope(environment).filter(enabled=True, current_version__isnull=False)
    versions = []
    for policy in sorted(policies.select_related("current_version"), key=lambda p: p.name):
        version = policy.current_version
        version.policy = policy
        versions.append(version)
    return versions


def approval_entry(approval: Approval) -> dict:
    return {
        "username": approval.user.get_username(),
        "groups": list(approval.groups),
        "decision": approval.decision,
        "at": rego.render_time(approval.created_at),
    }


def build_input(stage_run: StageRun, now: datetime, *, approvals: Iterable[Approval] = ()) -> dict:
    """The policy input document (schema_version 1, docs/policy-input.md) of the gate in front
    of `stage_run` at `now`. `approvals` are the live decisions to include. Raises ValueError
    (or KeyError/TypeError) when the environment's windows are malformed."""
    run = stage_run.run
    pipeline = run.pipeline
    env = stage_run.environment
    user = run.triggered_by
    freeze = [
        {
            "start": rego.render_time(w["start"]),
            "end": rego.render_time(w["end"]),
            "reason": str(w.get("reason") or ""),
        }
        for w in env.freeze_windows or []
    ]
    change = [
        {"days": list(w.get("days") or []), "start": w["start"], "end": w["end"]}
        for w in env.change_windows or []
    ]
    flags = {
        "in_freeze": env.freeze_at(now) is not None,
        "in_change_window": env.in_change_window(now),
    }
    # The names of the secrets the stage's steps ask for — never a value (nor a version:
    # which version a step gets is decided when it starts, past the gate).
    requested = sorted(
        {
            str(name)
            for config in StepRun.objects.filter(stage_id=stage_run.pk).values_list(
                "config", flat=True
            )
            for name in (config or {}).get("secrets") or []
        }
    )
    previous = (
        StageRun.objects.filter(run_id=run.pk, position__lt=stage_run.position)
        .select_related("environment")
        .order_by("position")
    )
    return {
        "schema_version": rego.SCHEMA_VERSION,
        "now": rego.render_time(now),
        "pipeline": {
            "slug": pipeline.slug,
            "name": pipeline.name,
            "team": pipeline.team.slug,
            "version": run.version.number,
        },
        "run": {
            "id": str(run.pk),
            "number": run.number,
            "trigger": run.trigger,
            "triggered_by": {
                "username": user.get_username() if user else "",
                "groups": sorted(user.groups.values_list("name", flat=True)) if user else [],
            },
            "parameters": run.parameters or {},
        },
        "stage": {"name": stage_run.name, "environment": env.name, "secrets": requested},
        "environment": {
            "name": env.name,
            "tier": env.tier,
            "protected": env.protected,
            "timezone": env.timezone,
            "freeze_windows": freeze,
            "change_windows": change,
            "in_freeze": flags["in_freeze"],
            "in_change_window": flags["in_change_window"],
        },
        "previous_stages": [
            {
                "name": s.name,
                "status": s.status,
                "environment": s.environment.name if s.environment_id else None,
            }
            for s in previous
        ],
        "approvals": [approval_entry(a) for a in approvals],
    }


def seen_hash(input_doc: dict, versions: Sequence[PolicyVersion]) -> str:
    """Hash of what an approver approves: the gate input without the things that change on
    their own — `now`, the time-derived flags and the approvals — plus the policy versions.

    Policy decisions are a function of exactly these, time and the approvals, so a decision
    that changes for any other reason changes this hash too. Time and approvals are left out
    on purpose: otherwise an approval given before a change window opens would be voided when
    it opens, and a policy that counts approvals would void every approval at the next one."""
    facts = copy.deepcopy(input_doc)
    facts.pop("now", None)
    facts.pop("approvals", None)
    facts.get("environment", {}).pop("in_freeze", None)
    facts.get("environment", {}).pop("in_change_window", None)
    facts["policies"] = [
        {
            "policy": v.policy.name,
            "version": v.number,
            "sha256": v.sha256,
            "enforcement": v.enforcement,
        }
        for v in versions
    ]
    return rego.input_hash(facts)


def current_seen_hash(gate: Gate, now: datetime | None = None) -> str:
    """The seen hash of `gate` as it stands now (no policy evaluation needed)."""
    now = now or timezone.now()
    return seen_hash(input_or_error(gate.stage_run, now), policy_versions(gate.environment))


def input_or_error(stage_run: StageRun, now: datetime) -> dict:
    try:
        return build_input(stage_run, now)
    except (ValueError, KeyError, TypeError) as exc:
        name = stage_run.environment.name
        raise GateInputError(f"environment {name} is misconfigured ({exc!r})") from exc


def describe_change(old_rows: Sequence[PolicyDecision], versions: Sequence[PolicyVersion]) -> str:
    before = {d.policy_version.policy.name: d.policy_version.number for d in old_rows}
    after = {v.policy.name: v.number for v in versions}
    changes = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            changes.append(f"policy {name} now applies")
        elif name not in after:
            changes.append(f"policy {name} no longer applies")
        elif before[name] != after[name]:
            changes.append(f"policy {name} was republished (v{before[name]} → v{after[name]})")
    what = "; ".join(changes) or "the pipeline, its parameters or the environment changed"
    return f"what was approved changed: {what}"

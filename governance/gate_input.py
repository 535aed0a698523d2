"""The gate's policy input document (schema_version 2, docs/policy-input.md) and the hash of
what an approver sees (`seen_hash`).

Schema 2 adds the earlier stages' artifacts: `artifact_files` lists every file they stored
(name, stage, path, SHA-256, size), and `artifacts.<name>` is the parsed JSON of each
`policy_input: true` artifact, read back from storage with its digest checked. An artifact
that cannot be a policy input (not JSON, over POLICY_INPUT_MAX_BYTES, changed in storage,
purged, several files under one name) is left out of `artifacts` and its `error` says why:
the gate then refuses (`artifact_problems`), fail closed."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.conf import settings
from django.core.files.storage import storages
from django.utils import timezone

from orchestrator.models import Artifact, StageRun, StepRun

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


DEFAULT_POLICY_INPUT_MAX_BYTES = 2 * 1024 * 1024


def policy_input_max_bytes() -> int:
    """The largest policy-input artifact a gate parses (CLEARWAY["POLICY_INPUT_MAX_BYTES"])."""
    configured = settings.CLEARWAY.get("POLICY_INPUT_MAX_BYTES")
    return int(configured or DEFAULT_POLICY_INPUT_MAX_BYTES)


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"


def _read_policy_input(row: Artifact, limit: int) -> tuple[object, str]:
    """(parsed JSON, "") or (None, why it cannot be a policy input). Raises GateInputError
    when the storage cannot be read (a transient failure: the gate waits and tries again)."""
    if row.purged_at is not None:
        return None, "it was purged (past its retention); run the pipeline again"
    if row.size > limit:
        return None, (
            f"it is {row.size} bytes, over the policy-input limit of {limit} bytes "
            '(CLEARWAY["POLICY_INPUT_MAX_BYTES"])'
        )
    try:
        with storages["artifacts"].open(row.storage_key, "rb") as fh:
            raw = fh.read(limit + 1)
    except Exception as exc:  # storage backends raise many kinds (OSError, botocore...)
        raise GateInputError(
            f"the artifact storage cannot be read ({exc.__class__.__name__}: {exc}); "
            "the gate is evaluated again when it is back"
        ) from exc
    if len(raw) > limit:
        return None, f"the stored file is over the policy-input limit of {limit} bytes"
    if hashlib.sha256(raw).hexdigest() != row.sha256:
        return None, (
            "the stored file does not match the SHA-256 recorded when the step stored it "
            "(it changed in storage); run the stage again"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"it is not UTF-8 text (byte {exc.start})"
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        return None, f"it is not valid JSON ({_json_error(exc)})"
    except ValueError as exc:  # NaN / Infinity: not JSON, and not storable
        return None, f"it is not valid JSON ({exc})"
    except RecursionError:
        return None, "it is not valid JSON (nested too deeply)"
    if _has_nul(value):
        return None, "it contains a NUL character (\\u0000), which the database cannot store"
    return value, ""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _has_nul(value) -> bool:
    """Whether a parsed JSON document holds U+0000 in a key or a string (PostgreSQL's jsonb,
    where the gate input is stored, refuses it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def artifact_input(stage_run: StageRun) -> tuple[dict, list[dict]]:
    """(`artifacts`, `artifact_files`) of the gate input: the files stored by the stages
    before `stage_run` in its run, and the parsed policy-input ones by name. One query."""
    rows = list(
        Artifact.objects.filter(
            stage_run__run_id=stage_run.run_id, stage_run__position__lt=stage_run.position
        )
        .select_related("stage_run")
        .order_by("stage_run__position", "name", "path", "pk")
    )
    limit = policy_input_max_bytes()
    by_name: dict[str, list[Artifact]] = {}
    for row in rows:
        if row.policy_input:
            by_name.setdefault(row.name, []).append(row)
    errors: dict[int, str] = {}
    parsed: dict[str, object] = {}
    for name, group in by_name.items():
        if len(group) > 1:
            where = ", ".join(f"{r.stage_run.name}:{r.path}" for r in group)
            for r in group:
                errors[r.pk] = (
                    f"a policy input is one file, and {len(group)} files are named {name} "
                    f"({where}); give each its own name"
                )
            continue
        value, error = _read_policy_input(group[0], limit)
        if error:
            errors[group[0].pk] = error
        else:
            parsed[name] = value
    files = [
        {
            "name": r.name,
            "stage": r.stage_run.name,
            "path": r.path,
            "sha256": r.sha256,
            "size": r.size,
            "policy_input": r.policy_input,
            "error": errors.get(r.pk, ""),
        }
        for r in rows
    ]
    return parsed, files


def artifact_problems(doc: dict) -> list[str]:
    """Why the policy-input artifacts of a gate input cannot be used (empty: they can). A
    gate with any refuses, fail closed: its policies would judge a plan they cannot see."""
    return [
        f"policy-input artifact {f['name']} of stage {f['stage']} ({f['path']}): {f['error']}"
        for f in doc.get("artifact_files") or []
        if f.get("error")
    ]


def build_input(stage_run: StageRun, now: datetime, *, approvals: Iterable[Approval] = ()) -> dict:
    """The policy input document (schema_version 2, docs/policy-input.md) of the gate in front
    of `stage_run` at `now`. `approvals` are the live decisions to include. Raises ValueError
    (or KeyError/TypeError) when the environment's windows are malformed, GateInputError when
    the artifact storage cannot be read."""
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
    artifacts, artifact_files = artifact_input(stage_run)
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
        "artifacts": artifacts,
        "artifact_files": artifact_files,
    }


def seen_hash(input_doc: dict, versions: Sequence[PolicyVersion]) -> str:
    """Hash of what an approver approves: the gate input without the things that change on
    their own — `now`, the time-derived flags and the approvals — plus the policy versions.

    Policy decisions are a function of exactly these, time and the approvals, so a decision
    that changes for any other reason changes this hash too. Time and approvals are left out
    on purpose: otherwise an approval given before a change window opens would be voided when
    it opens, and a policy that counts approvals would void every approval at the next one.

    The artifacts are in it twice over: their parsed content (`artifacts`) and the SHA-256 of
    every file the earlier stages stored (`artifact_files`), so an artifact that changes
    after an approval (the plan stage run again, another file) voids the approval."""
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


def _artifact_changes(old_doc: dict | None, new_doc: dict | None) -> list[str]:
    """ "artifact plan of stage plan changed (sha256 1a2b3c4d5e6f → 9f8e7d6c5b4a)"..."""
    if not old_doc or not new_doc:
        return []

    def digests(doc: dict) -> dict:
        return {
            (f.get("stage"), f.get("name"), f.get("path")): f.get("sha256")
            for f in doc.get("artifact_files") or []
        }

    before, after = digests(old_doc), digests(new_doc)
    changes = []
    for key in sorted(set(before) | set(after), key=str):
        stage, name, _path = key
        if key not in before:
            changes.append(f"artifact {name} of stage {stage} is new")
        elif key not in after:
            changes.append(f"artifact {name} of stage {stage} is gone")
        elif before[key] != after[key]:
            changes.append(
                f"artifact {name} of stage {stage} changed "
                f"(sha256 {str(before[key])[:12]} → {str(after[key])[:12]})"
            )
    return changes


def describe_change(
    old_rows: Sequence[PolicyDecision],
    versions: Sequence[PolicyVersion],
    old_doc: dict | None = None,
    new_doc: dict | None = None,
) -> str:
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
    changes += _artifact_changes(old_doc, new_doc)
    what = "; ".join(changes) or "the pipeline, its parameters or the environment changed"
    return f"what was approved changed: {what}"

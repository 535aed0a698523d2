"""Compliance reports: the change report (with its exceptions), the raw audit log export, the
access snapshot, and the evidence header every export carries.

Layers, so that every format says exactly the same thing:
- filters: `parse_change_filters` / `parse_audit_filters` turn query parameters into a frozen
  filter object or raise FilterError naming the parameter;
- querysets: `change_queryset` (one row per deployment to a protected environment),
  `audit_queryset`, each narrowed by governance.permissions.restrict;
- row iterators: `iter_changes`, `iter_exceptions`, `iter_audit` walk the querysets with
  `.iterator(chunk_size=...)` and load related rows per chunk, so memory stays flat;
- writers: `write_csv`, `write_json`, `write_ndjson` turn the header and rows into bytes,
  hashing as they go, and end with a trailer carrying the SHA-256 of everything before it;
- `export_response` glues them together for the API and the page (audit of the export
  included), and `generate_pdf` does the same for the background PDF job.

See docs/reports.md for what every column means and how an auditor checks a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from orchestrator.models import Pipeline, Run, StageRun, StageStatus, StepRun, Team

from . import audit, checkpoints
from .models import (
    Approval,
    ApprovalDecision,
    ApprovalRule,
    AuditEvent,
    Environment,
    Gate,
    GateStatus,
    Outcome,
    Override,
    PolicyDecision,
    ReportJob,
    Tier,
)
from .permissions import can_export, can_export_audit, restrict

logger = logging.getLogger(__name__)

CHUNK_SIZE = 500
AUDIT_CHUNK_SIZE = 2000
FLUSH_BYTES = 64 * 1024

# Audit actions the gate verbs write (governance/actions.py). A denied "approve" is a refused
# approval attempt, e.g. separation of duties.
APPROVE_ACTIONS = ("gate.approve",)
REJECT_ACTIONS = ("gate.reject",)
OVERRIDE_ACTIONS = ("gate.override",)
# Policy changes that alter what gates evaluate (drafts do not: gates use published versions).
POLICY_CHANGE_ACTIONS = ("policy.publish", "policy.enable", "policy.disable", "policy.update")
POLICY_SCOPE_FIELDS = ("environments", "tiers", "enabled")
SOD_WORDS = ("separation of duties", "self-approval")

CHANGE_FORMATS = ("csv", "json")
AUDIT_FORMATS = ("csv", "ndjson")

CHANGE_COLUMNS = [
    "change_id",
    "url",
    "requested_at",
    "pipeline",
    "team",
    "run_number",
    "pipeline_version",
    "version",
    "commit",
    "branch",
    "environment",
    "tier",
    "requested_by",
    "trigger",
    "reason",
    "gate_status",
    "approvals",
    "approvals_required",
    "approvals_given",
    "separation_of_duties",
    "policy_decisions",
    "overrides",
    "exceptions",
    "started",
    "finished",
    "outcome",
    "sandboxed",
    "secrets",
    "related_run",
    "audit_seq_first",
    "audit_seq_last",
]

EXCEPTION_COLUMNS = [
    "kind",
    "at",
    "change_id",
    "url",
    "subject",
    "actor",
    "detail",
    "audit_seq",
]

AUDIT_COLUMNS = [
    "seq",
    "at",
    "actor_id",
    "actor_name",
    "action",
    "target_type",
    "target_id",
    "target_name",
    "outcome",
    "details",
    "request_id",
    "ip",
    "prev_hash",
    "hash",
]

EXCEPTION_KINDS = {
    "override": "Override (break-glass)",
    "gate-rejected": "Gate rejected",
    "gate-blocked": "Gate blocked by policy",
    "failed-deployment": "Failed production deployment",
    "refused-approval": "Refused approval attempt",
    "refused-override": "Refused override attempt",
    "expired-approval": "Approval counted after it expired",
    "policy-change": "Policy changed during the period",
}


# --- filters ----------------------------------------------------------------------------


class FilterError(ValueError):
    """A bad filter; `parameter` names the query parameter at fault."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
        self.message = message

    def as_dict(self) -> dict:
        return {"message": self.message, "parameter": self.parameter}


def iso(dt: datetime | None) -> str | None:
    """UTC, seconds precision, with a Z: how every report prints a time."""
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_moment(params: Mapping, name: str, *, end: bool = False) -> datetime | None:
    """A date (YYYY-MM-DD, a whole UTC day: `from` its start, `to` its end) or an ISO 8601
    date-time (no offset means UTC)."""
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    # An unencoded "+01:00" in a query string arrives as " 01:00".
    raw = re.sub(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$", r"\1+\2", raw)
    try:
        day = parse_date(raw)
        moment = None if day else parse_datetime(raw)
    except ValueError:
        day = moment = None
    if day is not None:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        if end and day == date.max:
            return start.replace(hour=23, minute=59, second=59, microsecond=999999)
        return start + timedelta(days=1) if end else start
    if moment is None:
        raise FilterError(
            name,
            f'"{name}" is not a date: use YYYY-MM-DD or an ISO 8601 date-time '
            f"(e.g. 2026-01-31 or 2026-01-31T12:00:00Z), got {raw!r}",
        )
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise FilterError(name, f'"{name}" is out of range, got {raw!r}')


def _parse_period(params: Mapping) -> tuple[datetime | None, datetime | None]:
    start = _parse_moment(params, "from")
    end = _parse_moment(params, "to", end=True)
    if start and end and start >= end:
        raise FilterError("from", f'"from" ({iso(start)}) must be before "to" ({iso(end)})')
    return start, end


def _parse_bool(params: Mapping, name: str) -> bool:
    raw = str(params.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise FilterError(name, f'"{name}" must be true or false, got {raw!r}')


def _check_text(params: Mapping, names: Iterable[str]) -> None:
    """Refuse NUL characters (PostgreSQL cannot store or compare them) and absurd lengths."""
    for name in names:
        value = params.get(name) or ""
        if "\x00" in value or len(value) > 200:
            raise FilterError(name, f'"{name}" is not a valid value')


def parse_format(params: Mapping, allowed: tuple[str, ...]) -> str:
    fmt = (params.get("format") or allowed[0]).strip().lower()
    if fmt not in allowed:
        raise FilterError(
            "format", f'unknown format "{fmt}"; use {" or ".join(allowed)} (PDF: POST /pdf/)'
        )
    return fmt


@dataclass(frozen=True)
class ChangeFilters:
    """What a change report covers. `start`/`end` bound the moment a change was requested
    (gate creation, or stage start when there is no gate): start <= t < end, UTC."""

    start: datetime | None = None
    end: datetime | None = None
    environment: str = ""
    pipeline: str = ""
    team: str = ""
    outcome: str = ""
    exceptions_only: bool = False

    def as_dict(self) -> dict:
        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "period_basis": "gate created_at, else stage started_at (UTC; from <= t < to)",
            "environment": self.environment or None,
            "pipeline": self.pipeline or None,
            "team": self.team or None,
            "outcome": self.outcome or None,
            "exceptions_only": self.exceptions_only,
        }

    def as_params(self) -> dict:
        """Query parameters that reproduce these filters (stored on PDF jobs)."""
        out = {
            "from": iso(self.start) or "",
            "to": iso(self.end) or "",
            "environment": self.environment,
            "pipeline": self.pipeline,
            "team": self.team,
            "outcome": self.outcome,
            "exceptions_only": "true" if self.exceptions_only else "",
        }
        return {k: v for k, v in out.items() if v}


def parse_change_filters(params: Mapping, user) -> ChangeFilters:
    """Validate the change report's query parameters; raise FilterError naming the bad one.
    Unknown names and names the user may not see are refused alike."""
    _check_text(params, ("from", "to", "environment", "pipeline", "team", "outcome", "format"))
    start, end = _parse_period(params)
    environment = (params.get("environment") or "").strip()
    if environment and not Environment.objects.filter(name=environment).exists():
        raise FilterError("environment", f'unknown environment "{environment}"')
    pipeline = (params.get("pipeline") or "").strip()
    if pipeline and not restrict(Pipeline.objects.filter(slug=pipeline), user, "view").exists():
        raise FilterError("pipeline", f'unknown pipeline "{pipeline}"')
    team = (params.get("team") or "").strip()
    if team and not Team.objects.filter(slug=team).exists():
        raise FilterError("team", f'unknown team "{team}"')
    outcome = (params.get("outcome") or "").strip().lower()
    if outcome and outcome not in StageStatus.values:
        raise FilterError(
            "outcome", f'unknown outcome "{outcome}"; use one of {", ".join(StageStatus.values)}'
        )
    return ChangeFilters(
        start=start,
        end=end,
        environment=environment,
        pipeline=pipeline,
        team=team,
        outcome=outcome,
        exceptions_only=_parse_bool(params, "exceptions_only"),
    )


@dataclass(frozen=True)
class AuditFilters:
    """What an audit log export covers: start <= at < end (UTC), and exact matches."""

    start: datetime | None = None
    end: datetime | None = None
    actor: str = ""
    action: str = ""
    target: str = ""
    outcome: str = ""

    def as_dict(self) -> dict:
        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "actor": self.actor or None,
            "action": self.action or None,
            "target": self.target or None,
            "outcome": self.outcome or None,
        }


_TARGET_RE = re.compile(r"^[a-z_]+(:[\w.\-]+)?$")


def parse_audit_filters(params: Mapping) -> AuditFilters:
    _check_text(params, ("from", "to", "actor", "action", "target", "outcome", "format"))
    start, end = _parse_period(params)
    action = (params.get("action") or "").strip()
    if action and not re.fullmatch(r"[a-z_]+(\.[a-z_\-*]+)*\.?\*?", action):
        raise FilterError("action", f'"{action}" is not an action (e.g. gate.approve or gate.*)')
    target = (params.get("target") or "").strip()
    if target and not _TARGET_RE.match(target):
        raise FilterError(
            "target", f'"{target}" is not a target: use TYPE or TYPE:ID (e.g. run:12)'
        )
    outcome = (params.get("outcome") or "").strip().lower()
    if outcome and outcome not in Outcome.values:
        raise FilterError(
            "outcome", f'unknown outcome "{outcome}"; use one of {", ".join(Outcome.values)}'
        )
    return AuditFilters(
        start=start,
        end=end,
        actor=(params.get("actor") or "").strip(),
        action=action,
        target=target,
        outcome=outcome,
    )


# --- querysets --------------------------------------------------------------------------


def _denied_approval_events() -> QuerySet:
    """Refused attempts to approve or override a gate (audited by governance.actions even
    though the attempt itself rolled back)."""
    return AuditEvent.objects.filter(
        target_type="gate", action__in=APPROVE_ACTIONS + OVERRIDE_ACTIONS, outcome=Outcome.DENIED
    )


def exception_q() -> Q:
    """Which changes are exceptions (the same test as `_row_exceptions`)."""
    refused = Exists(
        _denied_approval_events().filter(
            target_id=Cast(OuterRef("gate__id"), output_field=models.CharField())
        )
    )
    expired = Approval.objects.filter(
        gate__stage_run=OuterRef("pk"),
        void=False,
        decision=ApprovalDecision.APPROVE,
        expires_at__lt=OuterRef("started_at"),
    )
    return (
        Q(Exists(Override.objects.filter(gate__stage_run=OuterRef("pk"))))
        | Q(Exists(expired))
        | Q(gate__status__in=[GateStatus.REJECTED, GateStatus.BLOCKED])
        | Q(status=StageStatus.FAILED, environment__tier=Tier.PRODUCTION)
        | Q(refused)
    )


def change_queryset(user, filters: ChangeFilters, *, as_of: datetime) -> QuerySet:
    """One row per deployment to a protected environment that the user may see: a stage run
    with a gate, or one that started against an environment marked protected. Ordered by the
    moment it was requested, then id, so a re-export lists the same rows in the same order."""
    qs = StageRun.objects.filter(
        Q(gate__isnull=False) | Q(environment__protected=True, started_at__isnull=False)
    ).annotate(requested_at=Coalesce("gate__created_at", "started_at"))
    qs = restrict(qs, user, "view")
    end = min(filters.end, as_of) if filters.end else as_of
    qs = qs.filter(requested_at__lt=end)
    if filters.start:
        qs = qs.filter(requested_at__gte=filters.start)
    if filters.environment:
        qs = qs.filter(environment__name=filters.environment)
    if filters.pipeline:
        qs = qs.filter(run__pipeline__slug=filters.pipeline)
    if filters.team:
        qs = qs.filter(run__pipeline__team__slug=filters.team)
    if filters.outcome:
        qs = qs.filter(status=filters.outcome)
    if filters.exceptions_only:
        qs = qs.filter(exception_q())
    return qs.order_by("requested_at", "id")


def audit_queryset(user, filters: AuditFilters, *, up_to_seq: int) -> QuerySet:
    qs = restrict(AuditEvent.objects.filter(seq__lte=up_to_seq), user, "export")
    if filters.start:
        qs = qs.filter(at__gte=filters.start)
    if filters.end:
        qs = qs.filter(at__lt=filters.end)
    if filters.actor:
        qs = qs.filter(actor_name=filters.actor)
    if filters.action:
        if filters.action.endswith("*") or filters.action.endswith("."):
            qs = qs.filter(action__startswith=filters.action.rstrip("*"))
        else:
            qs = qs.filter(action=filters.action)
    if filters.target:
        kind, _, ident = filters.target.partition(":")
        qs = qs.filter(target_type=kind)
        if ident:
            qs = qs.filter(target_id=ident)
    if filters.outcome:
        qs = qs.filter(outcome=filters.outcome)
    return qs.order_by("seq")


# --- change rows ------------------------------------------------------------------------


def _batched(iterable: Iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while batch := list(islice(it, size)):
        yield batch


def _annotated_changes(qs: QuerySet) -> QuerySet:
    retried_by = Run.objects.filter(retry_of=OuterRef("run_id")).order_by("created_at", "id")
    # The next run of the same pipeline that deployed to the same environment: the fix or the
    # roll-forward after a change that did not succeed.
    next_deploy = StageRun.objects.filter(
        run__pipeline_id=OuterRef("run__pipeline_id"),
        environment_id=OuterRef("environment_id"),
        run__number__gt=OuterRef("run__number"),
    ).order_by("run__number")
    return qs.select_related(
        "run__pipeline__team", "run__version", "run__triggered_by", "run__retry_of", "environment"
    ).annotate(
        retried_by_id=Subquery(retried_by.values("id")[:1]),
        retried_by_number=Subquery(retried_by.values("number")[:1]),
        next_run_id=Subquery(next_deploy.values("run_id")[:1]),
        next_run_number=Subquery(next_deploy.values("run__number")[:1]),
    )


def _gates_for(stages: list[StageRun]) -> dict[int, Gate]:
    gates = Gate.objects.filter(stage_run__in=[s.pk for s in stages]).prefetch_related(
        Prefetch("approvals", Approval.objects.select_related("user").order_by("created_at", "id")),
        Prefetch("overrides", Override.objects.select_related("user").order_by("created_at", "id")),
        Prefetch(
            "decisions",
            PolicyDecision.objects.filter(current=True)
            .select_related("policy_version__policy")
            .order_by("policy_version__policy__name", "id"),
            to_attr="current_decisions",
        ),
    )
    return {g.stage_run_id: g for g in gates}


def _audit_context(
    stages: list[StageRun], gates: dict[int, Gate], step_targets: dict[int, list[str]]
) -> tuple[dict, dict]:
    """Per chunk: the audit seq range of every target (run, stage, its steps, gate) and the
    refused approval attempts per gate. Two queries for the whole chunk."""
    run_ids = {str(s.run_id) for s in stages}
    stage_ids = {str(s.pk) for s in stages}
    gate_ids = {str(g.pk) for g in gates.values()}
    step_ids = {pk for pks in step_targets.values() for pk in pks}
    wanted = (
        Q(target_type="run", target_id__in=run_ids)
        | Q(target_type="stagerun", target_id__in=stage_ids)
        | Q(target_type="steprun", target_id__in=step_ids)
        | Q(target_type="gate", target_id__in=gate_ids)
    )
    ranges: dict[tuple[str, str], tuple[int, int]] = {}
    for row in (
        AuditEvent.objects.filter(wanted)
        .values("target_type", "target_id")
        .annotate(first=models.Min("seq"), last=models.Max("seq"))
        .order_by()
    ):
        ranges[(row["target_type"], row["target_id"])] = (row["first"], row["last"])
    refused: dict[str, list[AuditEvent]] = {}
    if gate_ids:
        for event in _denied_approval_events().filter(target_id__in=gate_ids).order_by("seq"):
            refused.setdefault(event.target_id, []).append(event)
    return ranges, refused


def _step_secrets(stages: list[StageRun]) -> dict[int, list[dict]]:
    """The secrets released to each stage's steps (names and versions, never a value)."""
    out: dict[int, list[dict]] = {s.pk: [] for s in stages}
    steps = StepRun.objects.filter(stage__in=list(out)).exclude(secrets=[]).order_by("position")
    for stage_id, step_name, released in steps.values_list("stage_id", "name", "secrets"):
        for item in released or []:
            out[stage_id].append(
                {"step": step_name, "name": item.get("name"), "version": item.get("version")}
            )
    return out


def _step_targets(stages: list[StageRun]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {s.pk: [] for s in stages}
    for pk, stage_id in StepRun.objects.filter(stage__in=list(out)).values_list("pk", "stage_id"):
        out[stage_id].append(str(pk))
    return out


def _rules_by_environment() -> dict[int, list[dict]]:
    rules: dict[int, list[dict]] = {}
    for rule in ApprovalRule.objects.select_related("group").order_by("environment", "group__name"):
        rules.setdefault(rule.environment_id, []).append(
            {"group": rule.group.name, "required": rule.required_count}
        )
    return rules


def _required_from(gate: Gate | None, env_rules: list[dict]) -> list[dict]:
    """The approval rules that applied: as recorded in the gate's input document when the
    gate logic put them there, else the environment's current rules."""
    recorded = (gate.input or {}).get("required") if gate is not None else None
    if isinstance(recorded, list) and all(isinstance(r, dict) for r in recorded):
        return [
            {"group": str(r.get("group", "")), "required": int(r.get("required", 0) or 0)}
            for r in recorded
        ]
    return env_rules


def _refusal_text(event: AuditEvent) -> str:
    """ "self-approval attempt refused: dana (separation of duties: ...)" for a refusal by the
    separation-of-duties rule; "approval attempt refused (permission): otto (...)" else."""
    d = event.details or {}
    rule = str(d.get("rule") or "")
    message = str(d.get("message") or d.get("reason") or "")
    verb = "override" if event.action in OVERRIDE_ACTIONS else "approval"
    if verb == "approval" and (
        rule == "separation-of-duties"
        or (not rule and any(w in message.lower() for w in SOD_WORDS))
    ):
        label = "self-approval attempt refused"
    else:
        label = f"{verb} attempt refused" + (f" ({rule})" if rule else "")
    text = f"{label}: {event.actor_name}"
    return f"{text} — {message}" if message else text


def _separation_of_duties(run: Run, gate: Gate | None, refused: list[AuditEvent]) -> str:
    """ "ok", or what went wrong: refused attempts (from the audit log) and — an independent
    cross-check — any live approval by the person who triggered the run or authored the
    commit, which the gate should have refused."""
    if gate is None:
        return "n/a (no gate)"
    problems = [_refusal_text(e) for e in refused if e.action in APPROVE_ACTIONS]
    requester = run.triggered_by.get_username() if run.triggered_by else None
    author = str((run.parameters or {}).get("author") or "") or None
    for a in gate.approvals.all():
        if a.void or a.decision != ApprovalDecision.APPROVE:
            continue
        name = a.user.get_username()
        if name == requester:
            problems.append(f"VIOLATION: approved by the requester {name}")
        elif author and name == author:
            problems.append(f"VIOLATION: approved by the commit author {name}")
    return "; ".join(problems) if problems else "ok"


def _related(stage: StageRun) -> dict | None:
    run = stage.run
    if run.retry_of_id:
        return _related_dict("retry_of", run.retry_of_id, run.retry_of.number)
    if getattr(stage, "retried_by_id", None):
        return _related_dict("retried_by", stage.retried_by_id, stage.retried_by_number)
    if stage.status != StageStatus.SUCCEEDED and getattr(stage, "next_run_id", None):
        return _related_dict("next_deployment", stage.next_run_id, stage.next_run_number)
    return None


def _related_dict(relation: str, run_id: int, number: int) -> dict:
    return {"relation": relation, "run_id": run_id, "number": number, "url": f"/runs/{run_id}/"}


def _expired_approvals(stage: StageRun, gate: Gate | None) -> list[Approval]:
    """Live approvals that had already expired when the stage started: the gate should have
    voided them. Clearway has no verb that extends an approval's expiry, so this is the
    check that stands for "approved after the expiry was extended"."""
    if gate is None or stage.started_at is None:
        return []
    return [
        a
        for a in gate.approvals.all()
        if not a.void
        and a.decision == ApprovalDecision.APPROVE
        and a.expires_at is not None
        and a.expires_at < stage.started_at
    ]


def _row_exceptions(stage: StageRun, gate: Gate | None, refused: list) -> list[str]:
    kinds = []
    if gate is not None and gate.overrides.all():
        kinds.append("override")
    if gate is not None and gate.status == GateStatus.REJECTED:
        kinds.append("gate-rejected")
    if gate is not None and gate.status == GateStatus.BLOCKED:
        kinds.append("gate-blocked")
    if stage.status == StageStatus.FAILED and stage.environment.tier == Tier.PRODUCTION:
        kinds.append("failed-deployment")
    if any(e.action in APPROVE_ACTIONS for e in refused):
        kinds.append("refused-approval")
    if any(e.action in OVERRIDE_ACTIONS for e in refused):
        kinds.append("refused-override")
    if _expired_approvals(stage, gate):
        kinds.append("expired-approval")
    return kinds


def change_id(stage_id: int) -> str:
    return f"CHG-{stage_id}"


def _change_row(stage, gate, env_rules, ranges, refused, step_targets) -> dict:
    run = stage.run
    params = run.parameters or {}
    approvals = list(gate.approvals.all()) if gate else []
    required = _required_from(gate, env_rules)
    targets = [("run", str(run.pk)), ("stagerun", str(stage.pk))]
    targets += [("steprun", pk) for pk in step_targets.get(stage.pk, [])]
    if gate is not None:
        targets.append(("gate", str(gate.pk)))
    seqs = [ranges[t] for t in targets if t in ranges]
    return {
        "change_id": change_id(stage.pk),
        "url": f"/runs/{run.pk}/",
        "requested_at": iso(stage.requested_at),
        "pipeline": run.pipeline.slug,
        "pipeline_name": run.pipeline.name,
        "team": run.pipeline.team.slug,
        "run_id": run.pk,
        "run_number": run.number,
        "stage": stage.name,
        "pipeline_version": run.version.number,
        "version": str(params.get("version") or ""),
        "commit": str(params.get("commit") or ""),
        "branch": str(params.get("branch") or ""),
        "environment": stage.environment.name,
        "tier": stage.environment.tier,
        "requested_by": run.triggered_by.get_username() if run.triggered_by else "",
        "trigger": run.trigger,
        "reason": str(params.get("reason") or params.get("change") or ""),
        "gate_id": gate.pk if gate else None,
        "gate_status": gate.status if gate else "",
        "approvals": [
            {
                "user": a.user.get_username(),
                "group": a.attributed_group or ", ".join(a.groups or []),
                "decision": a.decision,
                "at": iso(a.created_at),
                "comment": a.comment,
                "void": a.void,
                "void_reason": a.void_reason,
            }
            for a in approvals
        ],
        "approvals_required": sum(r["required"] for r in required),
        "approval_rules": required,
        "approvals_given": sum(
            1 for a in approvals if a.decision == ApprovalDecision.APPROVE and not a.void
        ),
        "separation_of_duties": _separation_of_duties(run, gate, refused),
        "policy_decisions": [
            {
                "policy": d.policy_version.policy.name,
                "version": d.policy_version.number,
                "enforcement": d.enforcement,
                "result": d.result,
                "messages": d.messages,
            }
            for d in (gate.current_decisions if gate else [])
        ],
        "overrides": [
            {
                "user": o.user.get_username(),
                "justification": o.justification,
                "at": iso(o.created_at),
                "policies": o.policies,
            }
            for o in (gate.overrides.all() if gate else [])
        ],
        "exceptions": _row_exceptions(stage, gate, refused),
        "started": iso(stage.started_at),
        "finished": iso(stage.finished_at),
        "outcome": stage.status,
        "related_run": _related(stage),
        "audit_seq_first": min((s[0] for s in seqs), default=None),
        "audit_seq_last": max((s[1] for s in seqs), default=None),
    }


def iter_changes(qs: QuerySet, *, chunk_size: int = CHUNK_SIZE) -> Iterator[dict]:
    """Change rows, `chunk_size` stage runs at a time: one query for the stages (a
    server-side cursor on PostgreSQL), then a handful per chunk for gates, approvals,
    overrides, decisions, steps and audit ranges — never one per row."""
    rules = _rules_by_environment()
    rows = _annotated_changes(qs).iterator(chunk_size=chunk_size)
    for chunk in _batched(rows, chunk_size):
        gates = _gates_for(chunk)
        step_targets = _step_targets(chunk)
        secrets = _step_secrets(chunk)
        ranges, refused = _audit_context(chunk, gates, step_targets)
        for stage in chunk:
            gate = gates.get(stage.pk)
            row = _change_row(
                stage,
                gate,
                rules.get(stage.environment_id, []),
                ranges,
                refused.get(str(gate.pk), []) if gate else [],
                step_targets,
            )
            # Was the deployment's code isolated (CLEARWAY_SANDBOX), which secrets it got.
            row["sandboxed"] = stage.run.sandboxed
            row["secrets"] = secrets.get(stage.pk, [])
            yield row


# --- exceptions -------------------------------------------------------------------------


def _exception(kind, at, stage: StageRun | None, subject, actor, detail, seq=None) -> dict:
    return {
        "kind": kind,
        "at": iso(at),
        "change_id": change_id(stage.pk) if stage else "",
        "url": f"/runs/{stage.run_id}/" if stage else "",
        "subject": subject,
        "actor": actor,
        "detail": detail,
        "audit_seq": seq,
    }


def _policies_text(policies) -> str:
    return ", ".join(
        f"{p.get('policy')} v{p.get('version')}" if isinstance(p, dict) else str(p)
        for p in policies or []
    )


def _subject(stage: StageRun) -> str:
    return f"{stage.run.pipeline.slug} #{stage.run.number} → {stage.environment.name}"


def _verb_seq(actions: tuple[str, ...], gate_field: str, at_field: str) -> Subquery:
    """The seq of the audit event a gate verb wrote with the row (same gate, same moment:
    the verbs record the row and the event with one `now`)."""
    events = AuditEvent.objects.filter(
        action__in=actions,
        outcome=Outcome.SUCCESS,
        target_type="gate",
        target_id=Cast(OuterRef(gate_field), output_field=models.CharField()),
        at=OuterRef(at_field),
    ).order_by("seq")
    return Subquery(events.values("seq")[:1])


def _exception_sources(qs: QuerySet, filters: ChangeFilters, as_of: datetime) -> list:
    """(kind, queryset, row function) for every kind of exception, each in a fixed order."""
    stage_ids = qs.values("pk").order_by()
    gate_ids = (
        qs.filter(gate__isnull=False)
        .annotate(gid=Cast("gate__id", output_field=models.CharField()))
        .values("gid")
        .order_by()
    )
    stage_related = ("stage_run__run__pipeline", "stage_run__environment")
    overrides = (
        Override.objects.filter(gate__stage_run__in=stage_ids)
        .select_related("user", *(f"gate__{r}" for r in stage_related))
        .annotate(audit_seq=_verb_seq(OVERRIDE_ACTIONS, "gate_id", "created_at"))
        .order_by("created_at", "id")
    )
    gates = (
        Gate.objects.filter(stage_run__in=stage_ids)
        .select_related(*stage_related)
        .prefetch_related(
            Prefetch(
                "approvals",
                Approval.objects.filter(decision=ApprovalDecision.REJECT, void=False)
                .select_related("user")
                .annotate(audit_seq=_verb_seq(REJECT_ACTIONS, "gate_id", "created_at"))
                .order_by("created_at", "id"),
                to_attr="rejections",
            )
        )
        .order_by(Coalesce("decided_at", "created_at"), "id")
    )
    failed = (
        StageRun.objects.filter(
            pk__in=stage_ids, status=StageStatus.FAILED, environment__tier=Tier.PRODUCTION
        )
        .select_related("run__pipeline", "environment", "run__triggered_by")
        .order_by(F("finished_at").asc(nulls_last=True), "id")
    )
    refused = _denied_approval_events().filter(target_id__in=gate_ids).order_by("seq")
    expired = (
        Approval.objects.filter(
            gate__stage_run__in=stage_ids,
            void=False,
            decision=ApprovalDecision.APPROVE,
            expires_at__lt=F("gate__stage_run__started_at"),
        )
        .select_related("user", *(f"gate__{r}" for r in stage_related))
        .order_by("created_at", "id")
    )
    policy_events = AuditEvent.objects.filter(
        action__in=POLICY_CHANGE_ACTIONS, outcome=Outcome.SUCCESS, at__lt=as_of
    )
    if filters.start:
        policy_events = policy_events.filter(at__gte=filters.start)
    if filters.end:
        policy_events = policy_events.filter(at__lt=filters.end)
    policy_events = policy_events.filter(
        ~Q(action="policy.update")
        | Q(*[Q(details__changes__has_key=f) for f in POLICY_SCOPE_FIELDS], _connector=Q.OR)
    ).order_by("seq")

    def override_row(o: Override) -> dict:
        detail = o.justification
        if o.policies:
            detail += f" (passed: {_policies_text(o.policies)})"
        stage = o.gate.stage_run
        return _exception(
            "override",
            o.created_at,
            stage,
            _subject(stage),
            o.user.get_username(),
            detail,
            o.audit_seq,
        )

    def gate_row(g: Gate) -> dict:
        kind = "gate-rejected" if g.status == GateStatus.REJECTED else "gate-blocked"
        who = ", ".join(a.user.get_username() for a in g.rejections) or "policy"
        comments = "; ".join(a.comment for a in g.rejections if a.comment)
        detail = "; ".join(x for x in (g.reason, comments) if x) or g.status
        stage = g.stage_run
        seq = next((a.audit_seq for a in g.rejections if a.audit_seq), None)
        at = g.decided_at or g.created_at
        return _exception(kind, at, stage, _subject(stage), who, detail, seq)

    def failed_row(s: StageRun) -> dict:
        who = s.run.triggered_by.get_username() if s.run.triggered_by else ""
        return _exception(
            "failed-deployment", s.finished_at, s, _subject(s), who, s.reason or "failed"
        )

    def expired_row(a: Approval) -> dict:
        stage = a.gate.stage_run
        detail = (
            f"approval by {a.user.get_username()} expired {iso(a.expires_at)}, "
            f"stage started {iso(stage.started_at)}"
        )
        return _exception(
            "expired-approval", a.created_at, stage, _subject(stage), a.user.get_username(), detail
        )

    stages_by_gate: dict[str, StageRun] = {}

    def refused_row(e: AuditEvent) -> dict:
        stage = stages_by_gate.get(e.target_id)
        if stage is None:
            stage = (
                StageRun.objects.select_related("run__pipeline", "environment")
                .filter(gate__pk=e.target_id)
                .first()
            )
            stages_by_gate[e.target_id] = stage
        subject = _subject(stage) if stage else e.target_name
        return _exception(
            "refused-override" if e.action in OVERRIDE_ACTIONS else "refused-approval",
            e.at,
            stage,
            subject,
            e.actor_name,
            _refusal_text(e),
            e.seq,
        )

    return [
        ("override", overrides, override_row),
        ("gate-rejected", gates.filter(status=GateStatus.REJECTED), gate_row),
        ("gate-blocked", gates.filter(status=GateStatus.BLOCKED), gate_row),
        ("failed-deployment", failed, failed_row),
        ("refused-approval", refused.filter(action__in=APPROVE_ACTIONS), refused_row),
        ("refused-override", refused.filter(action__in=OVERRIDE_ACTIONS), refused_row),
        ("expired-approval", expired, expired_row),
        ("policy-change", policy_events, policy_change_row),
    ]


def policy_change_row(e: AuditEvent) -> dict:
    """Who changed which policy when, and a summary of the change, from its audit event."""
    d = e.details or {}
    if e.action == "policy.publish":
        parts = [f"published v{d.get('version')}"]
        if d.get("previous_version"):
            parts[0] += f" (was v{d['previous_version']})"
        diff = d.get("diff") or {}
        if diff:
            parts.append(f"+{diff.get('added', 0)}/-{diff.get('removed', 0)} lines")
        prev_enf, enf = d.get("previous_enforcement"), d.get("enforcement")
        if prev_enf and enf and prev_enf != enf:
            parts.append(f"enforcement {prev_enf} → {enf}")
        elif enf:
            parts.append(enf)
        if d.get("sha256"):
            parts.append(f"sha256 {str(d['sha256'])[:12]}")
        detail = ", ".join(parts)
    elif e.action in ("policy.enable", "policy.disable"):
        detail = e.action.split(".")[1] + "d"
    else:
        changes = d.get("changes") or {}
        bits = []
        for key in POLICY_SCOPE_FIELDS:
            if key in changes:
                ch = changes[key]
                bits.append(f"{key} {ch.get('from')} → {ch.get('to')}")
        detail = "scope changed: " + "; ".join(bits)
    return _exception("policy-change", e.at, None, e.target_name, e.actor_name, detail, e.seq)


def iter_exceptions(qs: QuerySet, filters: ChangeFilters, *, as_of: datetime) -> Iterator[dict]:
    for _kind, source, to_row in _exception_sources(qs, filters, as_of):
        for obj in source.iterator(chunk_size=CHUNK_SIZE):
            yield to_row(obj)


def count_exceptions(qs: QuerySet, filters: ChangeFilters, *, as_of: datetime) -> dict:
    counts = {}
    for kind, source, _row in _exception_sources(qs, filters, as_of):
        counts[kind] = source.count()
    return counts


# --- audit rows -------------------------------------------------------------------------


def _iso_us(dt: datetime) -> str:
    # The exact form the hash covers (governance.audit.row_payload), so a reader can recompute.
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def iter_audit(qs: QuerySet, *, chunk_size: int = AUDIT_CHUNK_SIZE) -> Iterator[tuple]:
    """Audit rows as tuples in AUDIT_COLUMNS order, `details` as JSON text straight from the
    database (not parsed and re-serialised: the export is the hot path of the benchmark).

    Read by keyset on the unique `seq` (`seq > last ORDER BY seq LIMIT n`), one short
    query per chunk: the first rows come at once and memory stays flat. A server-side
    cursor (`.iterator()`) outside a transaction is declared WITH HOLD, and PostgreSQL then
    materialises the whole result before the first fetch (seconds for a million rows)."""
    fields = [c if c != "details" else "details_text" for c in AUDIT_COLUMNS]
    qs = qs.annotate(details_text=Cast("details", output_field=models.TextField()))
    if connections[qs.db].vendor == "postgresql":
        # The time as the hash covers it, formatted by the database: parsing a timestamp
        # into a datetime and formatting it again is a third of the per-row cost.
        qs = qs.annotate(at_text=_IsoUtc("at"))
        fields[1] = "at_text"
    rows = qs.order_by("seq").values_list(*fields)
    last = None
    while True:
        page = rows if last is None else rows.filter(seq__gt=last)
        batch = list(page[:chunk_size])
        yield from batch
        if len(batch) < chunk_size:
            return
        last = batch[-1][0]


class _IsoUtc(models.Func):
    """PostgreSQL: a timestamptz as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (what _iso_us gives)."""

    template = (
        "to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
    )
    output_field = models.CharField()


def _at(value) -> str:
    return value if isinstance(value, str) else _iso_us(value)


def _cell(value: str) -> str:
    return "'" + value if value and value[0] in _DANGEROUS_SET else value


def audit_csv_cells(t: tuple) -> list:
    """One audit row as CSV cells; only the free-text fields can start a formula."""
    return [
        t[0],
        _at(t[1]),
        "" if t[2] is None else t[2],
        _cell(t[3]),
        _cell(t[4]),
        _cell(t[5]),
        _cell(t[6]),
        _cell(t[7]),
        t[8],
        t[9],  # JSON text: starts with "{"
        _cell(t[10]),
        t[11] or "",
        t[12],
        t[13],
    ]


def audit_ndjson_line(t: tuple) -> str:
    """One NDJSON record: the exported fields, `details` spliced in as the JSON it is."""
    head = _dumps(
        {
            "type": "event",
            "seq": t[0],
            "at": _at(t[1]),
            "actor_id": t[2],
            "actor_name": t[3],
            "action": t[4],
            "target_type": t[5],
            "target_id": t[6],
            "target_name": t[7],
            "outcome": t[8],
        }
    )
    tail = _dumps({"request_id": t[10], "ip": t[11], "prev_hash": t[12], "hash": t[13]})
    return f'{head[:-1]},"details":{t[9]},{tail[1:]}\n'


# --- evidence header and trailer --------------------------------------------------------


@dataclass
class Evidence:
    """What every export says about itself. `rows` are computed before the first byte;
    `verification` (audit.verify up to `head_seq`) is filled in by `verify()`."""

    report: str
    title: str
    generated_at: datetime
    generated_by: str
    filters: dict
    rows: dict
    fmt: str
    head_seq: int = 0
    head_hash: str = audit.GENESIS_HASH
    export_event_seq: int | None = None
    extra: dict = field(default_factory=dict)
    verification: dict | None = None

    def header(self) -> dict:
        out = {
            "report": self.report,
            "title": self.title,
            "generated_at": iso(self.generated_at),
            "generated_by": self.generated_by,
            "format": self.fmt,
            "filters": self.filters,
            "rows": self.rows,
            "clearway_version": getattr(settings, "CLEARWAY_VERSION", ""),
            "audit_chain_head": {"seq": self.head_seq, "hash": self.head_hash},
            "export_audit_seq": self.export_event_seq,
            "ordering": ORDERING[self.report],
        }
        out.update(self.extra)
        if self.verification is not None:
            out["chain_verification"] = self.verification
        return out

    def verify(self) -> dict:
        # From the latest signed checkpoint, not row 1: O(rows since it), see checkpoints.py.
        result = checkpoints.verify(up_to_seq=self.head_seq)
        self.verification = {
            "ok": result.ok,
            "checked": result.checked,
            "since_checkpoint_seq": result.since_seq,
            "up_to_seq": self.head_seq,
            "first_broken_seq": result.first_broken_seq,
            "problem": result.problem,
        }
        return self.verification


ORDERING = {
    "changes": "changes by requested_at then change id; exceptions by kind, then time",
    "audit-log": "by seq",
    "access": "by environment, then user",
}


def record_refused_export(user, report: str, reason: str) -> None:
    """Audit an export that was refused (outcome denied)."""
    audit.record(user, "report.export", ("report", report, report), outcome="denied", reason=reason)


def record_export(user, report: str, *, filters: dict, rows: dict, fmt: str, **more) -> int:
    """Audit the export itself (before the first byte); returns the event's seq."""
    event = audit.record(
        user,
        "report.export",
        ("report", report, report),
        filters=filters,
        rows=rows,
        format=fmt,
        **more,
    )
    return event.seq


def queue_checkpoint() -> None:
    if not settings.CLEARWAY.get("AUDIT_SIGNING_KEY"):
        return
    try:
        current_app.send_task("clearway.audit_checkpoint")
    except Exception:  # noqa: BLE001  broker down: beat signs the head on its next round
        logger.warning("could not queue an audit checkpoint after an export", exc_info=True)


def make_evidence(
    user,
    report: str,
    title: str,
    *,
    filters: dict,
    rows: dict,
    fmt: str,
    generated_at: datetime,
    **more,
) -> Evidence:
    seq = record_export(user, report, filters=filters, rows=rows, fmt=fmt, **more)
    head_seq, head_hash = audit.chain_head()
    transaction.on_commit(queue_checkpoint)  # every export leaves a signed checkpoint
    return Evidence(
        report=report,
        title=title,
        generated_at=generated_at,
        generated_by=user.get_username(),
        filters=filters,
        rows=rows,
        fmt=fmt,
        head_seq=head_seq,
        head_hash=head_hash,
        export_event_seq=seq,
    )


# --- writers ----------------------------------------------------------------------------

_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
_DANGEROUS_SET = frozenset(_DANGEROUS)


def neutralise(value) -> str:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ tab or CR gets a
    leading single quote (OWASP's CSV-injection advice)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_DANGEROUS) else text


class _Hasher:
    """Encodes text, hashes it and hands back the bytes; the trailer carries the digest of
    everything hashed before it."""

    def __init__(self):
        self.sha = hashlib.sha256()

    def __call__(self, text: str) -> bytes:
        data = text.encode("utf-8")
        self.sha.update(data)
        return data

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def flatten_change(row: dict) -> dict:
    """A change row with its lists folded into text (CSV cells, PDF table)."""
    out = dict(row)
    out["approvals"] = " | ".join(
        f"{a['user']} ({a['group']}) {a['decision']} {a['at']}"
        + (f": {a['comment']}" if a["comment"] else "")
        + (f" [void: {a['void_reason'] or 'void'}]" if a["void"] else "")
        for a in row["approvals"]
    )
    out["policy_decisions"] = " | ".join(
        f"{d['policy']} v{d['version']} {d['enforcement']} {d['result']}"
        + (f": {'; '.join(d['messages'])}" if d["messages"] else "")
        for d in row["policy_decisions"]
    )
    out["overrides"] = " | ".join(
        f"{o['user']} {o['at']}: {o['justification']}" for o in row["overrides"]
    )
    out["exceptions"] = ", ".join(row["exceptions"])
    out["secrets"] = " | ".join(
        f"{x['step']}: {x['name']} v{x['version']}" for x in row.get("secrets") or []
    )
    rel = row["related_run"]
    out["related_run"] = (
        f"{rel['relation'].replace('_', ' ')} #{rel['number']} ({rel['url']})" if rel else ""
    )
    return out


@dataclass
class Section:
    name: str
    columns: list[str]
    rows: Iterable
    flatten: Callable[[dict], dict] | None = None
    cells: Callable[[object], list] | None = None  # a fast path: row -> CSV cells


def write_csv(evidence: Evidence, sections: list[Section]) -> Iterator[bytes]:
    """UTF-8 CSV (with a BOM so spreadsheets read the accents): `#` rows with the evidence
    header, one block per section (a `## name` row, the column row, the data), `#` rows with
    the row counts written and the chain verification, and a last line
    `#,sha256,<hex>` = SHA-256 of every byte before that line."""
    out = _Hasher()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")

    def drain() -> bytes:
        data = out(buf.getvalue())
        buf.seek(0)
        buf.truncate()
        return data

    buf.write("\ufeff")
    writer.writerow(["#", f"Clearway {evidence.title}"])
    for key, value in evidence.header().items():
        if isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        writer.writerow(["#", key, neutralise(value)])
    yield drain()
    written = {}
    for section in sections:
        writer.writerow([])
        writer.writerow([f"## {section.name}"])
        writer.writerow(section.columns)
        n = 0
        for row in section.rows:
            if section.cells:
                writer.writerow(section.cells(row))
            else:
                if section.flatten:
                    row = section.flatten(row)
                writer.writerow([neutralise(row.get(c)) for c in section.columns])
            n += 1
            if buf.tell() >= FLUSH_BYTES:
                yield drain()
        written[section.name] = n
    writer.writerow([])
    writer.writerow(["#", "rows_written", json.dumps(written, sort_keys=True)])
    yield drain()  # every row is out before the chain is re-hashed
    verification = evidence.verify()
    writer.writerow(["#", "chain_verification", json.dumps(verification, sort_keys=True)])
    yield drain()
    yield f"#,sha256,{out.hexdigest()}\n".encode()


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False, separators=(",", ":"))


def write_json(evidence: Evidence, sections: list[Section]) -> Iterator[bytes]:
    """One JSON object, one record per line: {"header": …, "<section>": [rows…], …,
    "rows_written": …, "chain_verification": …, "sha256": "<hex>"}. The last line holds the
    sha256 member: the SHA-256 of every byte before that line."""
    out = _Hasher()
    parts: list[str] = [f'{{"header":{_dumps(evidence.header())},\n']
    yield out("".join(parts))
    written = {}
    for section in sections:
        chunk = [f'"{section.name}":[\n']
        size = 0
        n = 0
        for row in section.rows:
            line = ("," if n else "") + _dumps(row) + "\n"
            chunk.append(line)
            size += len(line)
            n += 1
            if size >= FLUSH_BYTES:
                yield out("".join(chunk))
                chunk, size = [], 0
        chunk.append("],\n")
        written[section.name] = n
        yield out("".join(chunk))
    yield out(f'"rows_written":{_dumps(written)},\n')
    verification = evidence.verify()
    yield out(f'"chain_verification":{_dumps(verification)},\n')
    yield f'"sha256":"{out.hexdigest()}"}}\n'.encode()


def write_ndjson(evidence: Evidence, lines: Iterable[str]) -> Iterator[bytes]:
    """Newline-delimited JSON: a header record, one record per row (`lines`, each already a
    JSON object and a newline), then the verification record and a trailer record
    {"type": "trailer", "sha256": …} over every byte before it."""
    out = _Hasher()
    yield out(_dumps({"type": "header", **evidence.header()}) + "\n")
    chunk: list[str] = []
    size = n = 0
    for line in lines:
        chunk.append(line)
        size += len(line)
        n += 1
        if size >= FLUSH_BYTES:
            yield out("".join(chunk))
            chunk, size = [], 0
    yield out("".join(chunk))  # every row is out before the chain is re-hashed
    verification = evidence.verify()
    yield out(_dumps({"type": "verification", "rows_written": n, **verification}) + "\n")
    yield (_dumps({"type": "trailer", "sha256": out.hexdigest()}) + "\n").encode()


# --- the exports ------------------------------------------------------------------------


@dataclass
class Export:
    """A ready-to-stream export: the evidence, the byte iterator, and how to name it."""

    evidence: Evidence
    body: Iterator[bytes]
    content_type: str
    filename: str


CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}


def _period_slug(start: datetime | None, end: datetime | None) -> str:
    a = start.strftime("%Y%m%d") if start else "start"
    b = (end - timedelta(seconds=1)).strftime("%Y%m%d") if end else "now"
    return f"{a}-{b}"


def export_changes(user, params: Mapping) -> Export:
    """Validate, count, audit the export, and return the streaming change report."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    filters = parse_change_filters(params, user)
    fmt = parse_format(params, CHANGE_FORMATS)
    as_of = timezone.now()
    qs = change_queryset(user, filters, as_of=as_of)
    exc_counts = count_exceptions(qs, filters, as_of=as_of)
    rows = {
        "changes": qs.count(),
        "exceptions": sum(exc_counts.values()),
        **{f"exceptions.{k}": v for k, v in exc_counts.items()},
    }
    evidence = make_evidence(
        user,
        "changes",
        "change report",
        filters=filters.as_dict(),
        rows=rows,
        fmt=fmt,
        generated_at=as_of,
    )
    sections = [
        Section("changes", CHANGE_COLUMNS, iter_changes(qs), flatten_change),
        Section("exceptions", EXCEPTION_COLUMNS, iter_exceptions(qs, filters, as_of=as_of)),
    ]
    body = write_csv(evidence, sections) if fmt == "csv" else write_json(evidence, sections)
    name = f"clearway-changes-{_period_slug(filters.start, filters.end)}.{fmt}"
    return Export(evidence, body, CONTENT_TYPES[fmt], name)


def export_audit(user, params: Mapping) -> Export:
    if not can_export_audit(user):
        raise PermissionError("you may not export the audit log")
    filters = parse_audit_filters(params)
    fmt = parse_format(params, AUDIT_FORMATS)
    as_of = timezone.now()
    # Rows up to the head as it is now; the export's own audit event comes right after.
    data_seq, _ = audit.chain_head()
    qs = audit_queryset(user, filters, up_to_seq=data_seq)
    # Unfiltered, the rows are seq 1..data_seq (the chain has no gaps, and the trailer's
    # verification and rows_written say so if it did): no COUNT(*) over millions of rows
    # before the first byte.
    rows = {"events": data_seq if filters == AuditFilters() else qs.count()}
    evidence = make_evidence(
        user,
        "audit-log",
        "audit log export",
        filters=filters.as_dict(),
        rows=rows,
        fmt=fmt,
        generated_at=as_of,
    )
    evidence.extra["rows_up_to_seq"] = data_seq
    if fmt == "csv":
        section = Section("events", AUDIT_COLUMNS, iter_audit(qs), cells=audit_csv_cells)
        body = write_csv(evidence, [section])
    else:
        body = write_ndjson(evidence, map(audit_ndjson_line, iter_audit(qs)))
    name = f"clearway-audit-{_period_slug(filters.start, filters.end)}.{fmt}"
    return Export(evidence, body, CONTENT_TYPES[fmt], name)


# --- access snapshot --------------------------------------------------------------------

ACCESS_PERMS = ("approve_environment", "override_environment")


def parse_access_date(params: Mapping) -> datetime:
    """`date`: a day (the snapshot is at the end of it) or a date-time; default now."""
    _check_text(params, ("date",))
    raw = (params.get("date") or "").strip()
    if not raw:
        return timezone.now()
    moment = _parse_moment({"date": raw}, "date", end=True)
    return min(moment, timezone.now())


def _replay(until: datetime | None) -> tuple[dict, set]:
    """Group memberships {user: set(groups)} and environment object permissions
    {(holder_type, holder, permission, env_id)} as the role.* and permission.* audit events
    say they were at `until`."""
    members: dict[str, set[str]] = {}
    perms: set[tuple[str, str, str, str]] = set()
    events = AuditEvent.objects.filter(
        Q(action__startswith="role.") | Q(action__startswith="permission.")
    )
    if until is not None:
        events = events.filter(at__lt=until)
    for action, name, details in (
        events.order_by("seq")
        .values_list("action", "target_name", "details")
        .iterator(chunk_size=AUDIT_CHUNK_SIZE)
    ):
        details = details or {}
        if action.startswith("role."):
            groups = set(details.get("groups") or [])
            current = members.setdefault(name, set())
            if action == "role.add":
                current |= groups
            elif action == "role.remove":
                current -= groups
            elif action == "role.clear":
                current.clear()
        elif (
            details.get("object_type") == "environment"
            and details.get("permission") in ACCESS_PERMS
        ):
            key = (
                details.get("holder_type", ""),
                details.get("holder", ""),
                details["permission"],
                str(details.get("object_id", "")),
            )
            if action == "permission.grant":
                perms.add(key)
            elif action == "permission.revoke":
                perms.discard(key)
    return members, perms


def _current_state() -> tuple[dict, set]:
    from django.contrib.auth import get_user_model
    from guardian.models import GroupObjectPermission, UserObjectPermission

    user_model = get_user_model()
    members: dict[str, set[str]] = {}
    for user in user_model.objects.prefetch_related("groups"):
        names = {g.name for g in user.groups.all()}
        if names:
            members[str(user)] = names
    perms = set()
    for cls, holder_type, attr in (
        (GroupObjectPermission, "group", "group"),
        (UserObjectPermission, "user", "user"),
    ):
        for obj in cls.objects.filter(
            content_type__app_label="governance",
            content_type__model="environment",
            permission__codename__in=ACCESS_PERMS,
        ).select_related("permission", attr):
            perms.add(
                (holder_type, str(getattr(obj, attr)), obj.permission.codename, str(obj.object_pk))
            )
    return members, perms


def _global_holders(codename: str) -> tuple[set[str], set[str]]:
    """Model-wide (not per-environment) grants: groups and users; not audited, so taken from
    the current state."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    groups = set(
        Group.objects.filter(
            permissions__codename=codename, permissions__content_type__app_label="governance"
        ).values_list("name", flat=True)
    )
    users = {
        str(u)
        for u in get_user_model().objects.filter(
            user_permissions__codename=codename,
            user_permissions__content_type__app_label="governance",
        )
    }
    return groups, users


def access_snapshot(at: datetime) -> dict:
    """Who could approve and who could override, per protected environment, at `at`.

    Reconstructed by replaying the role.* and permission.* audit events up to `at`. To know
    whether that replay can be trusted, the same replay up to now is compared with the
    current database state: if they differ (grants made before auditing, or in bulk without
    signals), the snapshot falls back to the current state and says so."""
    from django.contrib.auth import get_user_model

    now_members, now_perms = _current_state()
    replay_members, replay_perms = _replay(None)
    replay_members = {k: v for k, v in replay_members.items() if v}
    consistent = replay_members == now_members and replay_perms == now_perms
    notes = []
    if consistent:
        members, perms = _replay(at)
        basis = "reconstructed from audit events"
        notes.append(
            "Group memberships and per-environment grants were reconstructed by replaying "
            "role.* and permission.* audit events up to the snapshot time; replaying them up to "
            "now reproduces the current state exactly."
        )
    else:
        members, perms = now_members, now_perms
        basis = "current state"
        notes.append(
            "The audit trail does not fully explain the current permissions (some were granted "
            "before auditing or in bulk), so this snapshot shows the CURRENT state, not the "
            "state on the requested date."
        )
    notes.append(
        "Superusers and model-wide grants (a group's or user's global permission) are taken "
        "from the current state: they are not recorded as audit events."
    )
    user_model = get_user_model()
    users = {
        str(u): u
        for u in user_model.objects.filter(Q(date_joined__lt=at) | Q(is_superuser=True))
        .filter(is_active=True)
        .order_by("username")
    }
    rules = _rules_by_environment()
    environments = []
    envs = Environment.objects.filter(Q(protected=True) | Q(gates__isnull=False)).distinct()
    for env in envs.order_by("name"):
        entry = {
            "environment": env.name,
            "tier": env.tier,
            "rules": rules.get(env.pk, []),
        }
        for codename, key in (
            ("approve_environment", "approvers"),
            ("override_environment", "overriders"),
        ):
            global_groups, global_users = _global_holders(codename)
            holder_groups = {
                h for (t, h, p, o) in perms if t == "group" and p == codename and o == str(env.pk)
            }
            holder_users = {
                h for (t, h, p, o) in perms if t == "user" and p == codename and o == str(env.pk)
            }
            listed = []
            for name, user in users.items():
                groups = members.get(name, set())
                via = []
                if user.is_superuser:
                    via.append("superuser")
                via += [f"group {g}" for g in sorted(groups & holder_groups)]
                if name in holder_users:
                    via.append("user grant")
                via += [f"group {g} (model-wide)" for g in sorted(groups & global_groups)]
                if name in global_users:
                    via.append("user grant (model-wide)")
                if via:
                    listed.append({"user": name, "groups": sorted(groups), "via": via})
            entry[key] = listed
        environments.append(entry)
    return {"at": iso(at), "basis": basis, "notes": notes, "environments": environments}


def export_access(user, params: Mapping) -> Export:
    """The access snapshot as a JSON document in the same shape as the change report: header
    (with the snapshot time, its basis and notes), one environment per line, the chain
    verification and the SHA-256 line."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    at = parse_access_date(params)
    generated_at = timezone.now()
    snapshot = access_snapshot(at)
    rows = {"environments": len(snapshot["environments"])}
    evidence = make_evidence(
        user,
        "access",
        "access snapshot",
        filters={"date": iso(at)},
        rows=rows,
        fmt="json",
        generated_at=generated_at,
    )
    evidence.extra.update(at=snapshot["at"], basis=snapshot["basis"], notes=snapshot["notes"])
    body = write_json(evidence, [Section("environments", [], snapshot["environments"])])
    name = f"clearway-access-{at.strftime('%Y%m%d')}.json"
    return Export(evidence, body, CONTENT_TYPES["json"], name)


# --- PDF jobs ---------------------------------------------------------------------------


def report_dir() -> Path:
    path = Path(settings.MEDIA_ROOT) / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_pdf_job(user, params: Mapping) -> tuple[ReportJob, ChangeFilters]:
    """Validate the filters and create a queued PDF job (governance.actions.request_report_pdf
    audits it and queues it)."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    filters = parse_change_filters(params, user)
    job = ReportJob.objects.create(requested_by=user, kind="changes", filters=filters.as_params())
    return job, filters


def job_path(job: ReportJob) -> Path | None:
    if not job.file:
        return None
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / job.file).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def job_status(job: ReportJob) -> dict:
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "filters": job.filters,
        "sha256": job.sha256 or None,
        "error": job.error or None,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "download_url": f"/api/v1/reports/pdf/{job.pk}/download/"
        if job.status == ReportJob.Status.DONE
        else None,
    }

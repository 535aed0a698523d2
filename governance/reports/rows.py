"""The rows of a report: one per deployment, the exceptions, the audit events."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice

from django.db import connections, models
from django.db.models import F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Cast, Coalesce

from orchestrator.models import Artifact, Run, StageRun, StageStatus, StepRun

from ..models import (
    Approval,
    ApprovalDecision,
    ApprovalRule,
    AuditEvent,
    Gate,
    GateStatus,
    Outcome,
    Override,
    PolicyDecision,
    Tier,
)
from .constants import (
    APPROVE_ACTIONS,
    AUDIT_CHUNK_SIZE,
    AUDIT_COLUMNS,
    CHUNK_SIZE,
    OVERRIDE_ACTIONS,
    POLICY_CHANGE_ACTIONS,
    POLICY_SCOPE_FIELDS,
    REJECT_ACTIONS,
    SOD_WORDS,
)
from .filters import ChangeFilters, iso
from .queries import _denied_approval_events
from .writers import _DANGEROUS_SET, _dumps

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


def _stage_artifacts(stages: list[StageRun]) -> dict[int, list[dict]]:
    """Each deployment's artifacts with their digests, in one query: those its stage
    received (from the stages it needs) and those its steps stored — exactly what was
    applied, and what it produced."""
    out: dict[int, list[dict]] = {s.pk: [] for s in stages}
    if not out:
        return out
    rows = (
        Artifact.objects.filter(stage_run__run__in={s.run_id for s in stages})
        .order_by("stage_run__position", "name", "path")
        .values_list(
            "stage_run__run_id",
            "stage_run__name",
            "step_run__name",
            "name",
            "path",
            "sha256",
            "size",
            "purged_at",
        )
    )
    by_run: dict[int, list[tuple]] = {}
    for row in rows:
        by_run.setdefault(row[0], []).append(row)
    for stage in stages:
        needs = set(stage.needs or [])
        for _, stage_name, step, name, path, sha256, size, purged in by_run.get(stage.run_id, []):
            if stage_name == stage.name:
                role = "produced"
            elif stage_name in needs:
                role = "received"
            else:
                continue
            out[stage.pk].append(
                {
                    "role": role,
                    "stage": stage_name,
                    "step": step,
                    "name": name,
                    "path": path,
                    "sha256": sha256,
                    "size": size,
                    "purged": purged is not None,
                }
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
        stage_artifacts = _stage_artifacts(chunk)
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
            row["artifacts"] = stage_artifacts.get(stage.pk, [])
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

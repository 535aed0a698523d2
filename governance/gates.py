"""Gates: the checkpoint in front of every stage that deploys to a protected environment.

The engine calls `check(stage_run, now=...)` with the run row locked whenever a stage that
targets a protected environment is ready to start. The first call creates the stage's Gate;
every call evaluates the policies in scope again, so the decision that lets a stage start is
always taken immediately before it is dispatched (a freeze that began after the approvals
still blocks). The verbs that change a gate on a person's behalf (approve, reject, override)
live in governance/actions.py; they lock the run, then the gate, record their decision and
call the engine, which calls `check` again.

How a gate decides (docs/governance.md has the long version):
- a hard-mandatory deny (or evaluation error) blocks the gate for good, unless more approvals
  could lift it: we evaluate that policy once more as if every eligible approver who has not
  decided yet had approved; if it still denies, the gate is BLOCKED now;
- a soft-mandatory deny keeps the gate waiting until an override passes it;
- the approval rules of the environment must all hold; approvals are attributed to rules by a
  maximum bipartite matching, so one person counts once;
- otherwise the gate is OPEN (OVERRIDDEN when it opened thanks to an override).

Approvals become void when they expire or when what the approver saw changed (`seen_hash`).
"""

from __future__ import annotations

import contextvars
import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator import events
from orchestrator.models import IllegalTransition, Run, StageRun

from . import audit, rego
from .models import (
    Approval,
    ApprovalDecision,
    Enforcement,
    Environment,
    Gate,
    GateStatus,
    PolicyDecision,
    PolicyVersion,
)
from .permissions import can, restrict

logger = logging.getLogger(__name__)

BLOCKING_RESULTS = ("deny", "error")

# Who caused what `check` is about to record (set by the verbs in governance/actions.py); the
# engine's own calls leave it unset and the audit log says "system".
_acting: contextvars.ContextVar[Any] = contextvars.ContextVar("clearway_gate_actor", default=None)


@contextmanager
def acting(actor) -> Iterator[None]:
    """Attribute the gate transitions recorded inside the block to `actor`."""
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


# --- errors ---------------------------------------------------------------------------


class GateError(Exception):
    """A refused gate action, with a message for the person who asked. `status_code` is the
    HTTP status the API answers with; `rule` names the rule that refused (audit details)."""

    status_code = 409
    rule = ""

    def __init__(self, message: str, *, rule: str = ""):
        super().__init__(message)
        self.message = message
        if rule:
            self.rule = rule


class GateRefused(GateError):
    """The actor may not do this (permission, eligibility, separation of duties)."""

    status_code = 403
    rule = "permission"


class GateConflict(GateError):
    """The gate is not in a state that allows it (already decided, duplicate decision)."""

    status_code = 409
    rule = "state"


class GateInputError(Exception):
    """The policy input document cannot be built (e.g. a malformed freeze window)."""


class GateInvalid(GateError):
    """The request itself is incomplete (missing comment, short justification)."""

    status_code = 400
    rule = "input"


# --- the input document ---------------------------------------------------------------


def policy_versions(environment: Environment) -> list[PolicyVersion]:
    """The published versions of the enabled policies in scope of `environment`, by name."""
    from .policies import in_scope

    policies = in_scope(environment).filter(enabled=True, current_version__isnull=False)
    versions = []
    for policy in sorted(policies.select_related("current_version"), key=lambda p: p.name):
        version = policy.current_version
        version.policy = policy
        versions.append(version)
    return versions


def _approval_entry(approval: Approval) -> dict:
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
    flags = rego.environment_flags(now, env.timezone, freeze, change)
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
        "stage": {"name": stage_run.name, "environment": env.name},
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
        "approvals": [_approval_entry(a) for a in approvals],
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
    return seen_hash(_input_or_error(gate.stage_run, now), policy_versions(gate.environment))


def _input_or_error(stage_run: StageRun, now: datetime) -> dict:
    try:
        return build_input(stage_run, now)
    except (ValueError, KeyError, TypeError) as exc:
        name = stage_run.environment.name
        raise GateInputError(f"environment {name} is misconfigured ({exc!r})") from exc


# --- approval rules -------------------------------------------------------------------


def match_approvals(
    rules: Sequence[tuple[str, int]], approvers: Sequence[tuple[Any, Iterable[str]]]
) -> dict[Any, str | None]:
    """Attribute approvers to rule slots by a maximum bipartite matching.

    `rules` are (group, required count); `approvers` are (key, groups), earliest first. Each
    rule becomes `count` slots; an approver may fill one slot of a group it belongs to. The
    augmenting-path algorithm (Kuhn) finds a largest assignment, so a person in two groups
    is used where they are needed and still counts once. Returns key -> group (None when the
    approver fills no slot: everything they could fill is already full)."""
    slots = [group for group, count in rules for _ in range(count)]
    owner: list[int | None] = [None] * len(slots)
    memberships = [set(groups) for _, groups in approvers]

    def assign(i: int, visited: set[int]) -> bool:
        for s, group in enumerate(slots):
            if s in visited or group not in memberships[i]:
                continue
            visited.add(s)
            if owner[s] is None or assign(owner[s], visited):
                owner[s] = i
                return True
        return False

    for i in range(len(approvers)):
        assign(i, set())
    result: dict[Any, str | None] = {key: None for key, _ in approvers}
    for s, i in enumerate(owner):
        if i is not None:
            result[approvers[i][0]] = slots[s]
    return result


@dataclass
class RuleProgress:
    group: str
    required: int
    given: int = 0
    approvers: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """How far the live approvals of a gate go towards its environment's rules."""

    rules: list[RuleProgress]
    attributed: dict[int, str]  # approval pk -> group ("" when it fills no slot)

    @property
    def satisfied(self) -> bool:
        return all(r.given >= r.required for r in self.rules)

    def missing(self) -> str:
        parts = [
            f"{r.required - r.given} more from {r.group}"
            for r in self.rules
            if r.given < r.required
        ]
        return ", ".join(parts)

    def summary(self) -> list[dict]:
        return [{"group": r.group, "count": r.required, "given": r.given} for r in self.rules]


def approval_progress(environment: Environment, approvals: Sequence[Approval]) -> Progress:
    """Attribute the live "approve" decisions (earliest first) to the environment's rules."""
    rules = [
        RuleProgress(rule.group.name, rule.required_count)
        for rule in environment.approval_rules.select_related("group").order_by("group__name")
    ]
    approving = [a for a in approvals if a.decision == ApprovalDecision.APPROVE and not a.void]
    matched = match_approvals(
        [(r.group, r.required) for r in rules], [(a.pk, a.groups) for a in approving]
    )
    by_group = {r.group: r for r in rules}
    for approval in approving:
        group = matched.get(approval.pk)
        if group:
            by_group[group].given += 1
            by_group[group].approvers.append(approval.user.get_username())
    return Progress(rules, {a.pk: matched.get(a.pk) or "" for a in approving})


# --- who may decide ------------------------------------------------------------------


def sod_violation(run: Run, user) -> str | None:
    """Why separation of duties forbids `user` to approve `run`, or None.

    The run's trigger, the author of the change (run parameter `author`, compared with the
    username and the email address, ignoring case) and the author of the pipeline version the
    run uses (its last editor) may not approve it."""
    name = user.get_username()
    if run.triggered_by_id is not None and run.triggered_by_id == user.pk:
        return f"separation of duties: {name} triggered this run and may not approve it"
    author = (run.parameters or {}).get("author")
    if isinstance(author, str) and author.strip():
        wanted = author.strip().lower()
        if wanted in {name.lower(), (getattr(user, "email", "") or "").lower()}:
            return (
                f"separation of duties: {name} is the author of the change "
                f"(run parameter author) and may not approve it"
            )
    version = run.version
    if version.author_id is not None and version.author_id == user.pk:
        return (
            f"separation of duties: {name} last edited the pipeline (version "
            f"{version.number}) and may not approve it"
        )
    return None


def rule_groups(environment: Environment) -> list[str]:
    return list(
        environment.approval_rules.order_by("group__name").values_list("group__name", flat=True)
    )


def eligibility_problem(gate: Gate, user) -> GateRefused | None:
    """Why `user` may not approve or reject gates like `gate` (permission, rule groups)."""
    name = user.get_username() if user is not None else "anonymous"
    env = gate.environment
    if not can(user, "approve", gate):
        return GateRefused(
            f"{name} may not approve deployments to {env.name}: the approve permission on the "
            f"environment is missing",
            rule="permission",
        )
    groups = rule_groups(env)
    if not groups:
        return GateRefused(
            f"{env.name} has no approval rules, so nobody approves its gates", rule="eligibility"
        )
    if not user.groups.filter(name__in=groups).exists():
        return GateRefused(
            f"{name} is not in an approval group of {env.name} ({', '.join(groups)})",
            rule="eligibility",
        )
    return None


def state_problem(gate: Gate, run: Run) -> GateConflict | None:
    """Why `gate` cannot take a decision now, or None while it is waiting."""
    if gate.status != GateStatus.WAITING:
        what = {
            GateStatus.OPEN: "is already open",
            GateStatus.OVERRIDDEN: "is already open (overridden)",
            GateStatus.REJECTED: "was rejected",
            GateStatus.BLOCKED: "is blocked",
            GateStatus.EXPIRED: "has expired",
        }.get(gate.status, f"is {gate.status}")
        reason = f": {gate.reason}" if gate.reason else ""
        return GateConflict(f"gate {gate.pk} {what}{reason}; it takes no more decisions")
    if run.is_terminal:
        return GateConflict(f"run #{run.number} already ended ({run.status})")
    if gate.stage_run.is_terminal:
        return GateConflict(f"stage {gate.stage_run.name} already ended ({gate.stage_run.status})")
    return None


def approve_problem(gate: Gate, run: Run, user) -> GateError | None:
    """Why `user` may not approve `gate` now (the first rule that refuses), or None."""
    problem = eligibility_problem(gate, user)
    if problem:
        return problem
    sod = sod_violation(run, user)
    if sod:
        return GateRefused(sod, rule="separation-of-duties")
    problem = state_problem(gate, run)
    if problem:
        return problem
    existing = gate.approvals.filter(user=user, void=False).first()
    if existing:
        verb = "approved" if existing.decision == ApprovalDecision.APPROVE else "rejected"
        return GateConflict(
            f"{user.get_username()} already {verb} gate {gate.pk}", rule="duplicate"
        )
    return None


def eligible_approvers(gate: Gate, run: Run | None = None) -> list:
    """Active users who may approve `gate`: in one of its rule groups, holding the approve
    permission, and not excluded by separation of duties."""
    run = run or gate.stage_run.run
    groups = rule_groups(gate.environment)
    if not groups:
        return []
    User = get_user_model()
    candidates = (
        User.objects.filter(is_active=True, groups__name__in=groups).distinct().order_by("username")
    )
    return [u for u in candidates if sod_violation(run, u) is None and can(u, "approve", gate)]


def overriders(gate: Gate) -> list:
    """Active users who may override `gate` (break-glass), for notifications."""
    from guardian.shortcuts import get_users_with_perms

    users = get_users_with_perms(
        gate.environment,
        with_group_users=True,
        only_with_perms_in=["override_environment"],
    )
    return [u for u in users if u.is_active and can(u, "override", gate)]


def decidable_gates(user, qs: QuerySet | None = None) -> QuerySet:
    """Waiting gates `user` could approve now: permitted, in a rule group, not excluded by
    separation of duties, and not decided by them yet (an approver's inbox)."""
    base = Gate.objects.all() if qs is None else qs
    qs = restrict(base, user, "approve").filter(
        status=GateStatus.WAITING, environment__approval_rules__group__in=user.groups.all()
    )
    qs = qs.exclude(stage_run__run__triggered_by=user).exclude(stage_run__run__version__author=user)
    names = {user.get_username()}
    if getattr(user, "email", ""):
        names.add(user.email)
    decided = Approval.objects.filter(user=user, void=False).values("gate_id")
    qs = qs.exclude(pk__in=decided)
    # The author parameter is free text: compare in Python on the (small) waiting set.
    ids = [
        pk
        for pk, author in qs.values_list("pk", "stage_run__run__parameters__author").distinct()
        if not (isinstance(author, str) and author.strip().lower() in {n.lower() for n in names})
    ]
    return base.filter(pk__in=ids)


# --- transitions ----------------------------------------------------------------------

_ALLOWED = {
    GateStatus.WAITING: {
        GateStatus.OPEN,
        GateStatus.OVERRIDDEN,
        GateStatus.BLOCKED,
        GateStatus.REJECTED,
        GateStatus.EXPIRED,
    },
    # Open is final for people, not for the engine: until the stage is dispatched every check
    # re-evaluates, and a freeze that started (or a voided approval) takes it back.
    GateStatus.OPEN: {GateStatus.WAITING, GateStatus.OVERRIDDEN, GateStatus.BLOCKED},
    GateStatus.OVERRIDDEN: {GateStatus.WAITING, GateStatus.OPEN, GateStatus.BLOCKED},
}
DECIDED = frozenset(
    {GateStatus.OPEN, GateStatus.OVERRIDDEN, GateStatus.REJECTED, GateStatus.BLOCKED}
)


def _audit_details(gate: Gate, run: Run) -> dict:
    return {
        "run": run.pk,
        "run_number": run.number,
        "pipeline": run.pipeline.slug,
        "stage": gate.stage_run.name,
        "environment": gate.environment.name,
    }


def transition(
    gate: Gate,
    status: str,
    *,
    reason: str,
    run: Run,
    now: datetime,
    actor: Any = None,
    created: bool = False,
    **details: Any,
) -> bool:
    """Move `gate` (locked) to `status` with `reason`; audit a status change, publish any
    change. Raises IllegalTransition for a move the lifecycle does not allow. Returns
    whether the status changed."""
    previous = gate.status
    changed = created or status != previous
    if not changed and reason == gate.reason:
        return False
    if status != previous and status not in _ALLOWED.get(previous, ()):
        raise IllegalTransition(f"gate {gate.pk} is {previous}; cannot become {status}")
    gate.status = status
    gate.reason = reason
    fields = ["status", "reason"]
    if status != previous or created:
        gate.decided_at = now if status != GateStatus.WAITING else None
        fields.append("decided_at")
    gate.save(update_fields=fields)
    if changed:
        audit.record(
            actor if actor is not None else _acting.get(),
            f"gate.{status}",
            gate,
            at=now,
            previous=None if created else previous,
            reason=reason,
            **_audit_details(gate, run),
            **details,
        )
    events.publish_gate(gate, run)
    return changed


def _void(approval: Approval, reason: str, *, gate: Gate, run: Run, now: datetime) -> None:
    approval.void = True
    approval.void_reason = reason[:200]
    approval.save(update_fields=["void", "void_reason"])
    audit.record(
        None,
        "approval.void",
        approval,
        at=now,
        gate=gate.pk,
        user=approval.user.get_username(),
        decision=approval.decision,
        reason=reason,
        **_audit_details(gate, run),
    )


def _describe_change(old_rows: Sequence[PolicyDecision], versions: Sequence[PolicyVersion]) -> str:
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


# --- evaluation -----------------------------------------------------------------------


@dataclass
class Assessment:
    """The outcome of evaluating a gate: its status and reason, and what led to them."""

    status: str
    reason: str
    decisions: list[PolicyDecision]
    progress: Progress
    overridden: list[str] = field(default_factory=list)


def _timeout() -> float:
    return float(settings.CLEARWAY.get("POLICY_TIMEOUT", rego.DEFAULT_TIMEOUT))


def _evaluate(versions: Sequence[PolicyVersion], doc: dict) -> list[rego.Decision]:
    if not versions:
        return []
    return rego.evaluate_many(
        [(v.policy.name, v.source) for v in versions], doc, timeout=_timeout()
    )


def _store_decisions(
    gate: Gate,
    versions: Sequence[PolicyVersion],
    results: Sequence[rego.Decision],
    current: list[PolicyDecision],
    input_hash: str,
    now: datetime,
) -> list[PolicyDecision]:
    """Record a new set of current decisions when they differ from the current ones. A
    re-evaluation with the same verdicts adds no rows (housekeeping re-checks waiting gates
    every 30 s); the rows then keep the input hash at which the verdicts first appeared."""
    fresh = sorted(
        (v.pk, r.result, list(r.deny), list(r.warn)) for v, r in zip(versions, results, strict=True)
    )
    old = sorted((d.policy_version_id, d.result, list(d.deny), list(d.warn)) for d in current)
    if fresh == old:
        return current
    gate.decisions.filter(current=True).update(current=False)
    rows = PolicyDecision.objects.bulk_create(
        [
            PolicyDecision(
                gate=gate,
                policy_version=v,
                enforcement=v.enforcement,
                input_hash=input_hash,
                result=r.result,
                deny=list(r.deny),
                warn=list(r.warn),
                duration_ms=r.duration_ms,
                current=True,
                created_at=now,
            )
            for v, r in zip(versions, results, strict=True)
        ]
    )
    for row, version in zip(rows, versions, strict=True):
        row.policy_version = version
    return rows


def _messages(rows: Iterable[PolicyDecision]) -> str:
    return "; ".join(
        f"{row.policy_version.policy.name}: {' / '.join(row.deny) or row.result}" for row in rows
    )


def _curable(
    gate: Gate,
    run: Run,
    doc: dict,
    hard: Sequence[PolicyDecision],
    approvals: Sequence[Approval],
    now: datetime,
) -> bool:
    """Could more approvals lift these hard-mandatory denials? Evaluate the denying policies
    once more as if every eligible approver who has not decided yet had approved."""
    decided = {a.user_id for a in approvals}
    extra = [u for u in eligible_approvers(gate, run) if u.pk not in decided]
    if not extra:
        return False
    hypothetical = copy.deepcopy(doc)
    hypothetical["approvals"] = list(doc["approvals"]) + [
        {
            "username": u.get_username(),
            "groups": sorted(u.groups.values_list("name", flat=True)),
            "decision": ApprovalDecision.APPROVE,
            "at": rego.render_time(now),
        }
        for u in extra
    ]
    versions = [row.policy_version for row in hard]
    return all(d.result not in BLOCKING_RESULTS for d in _evaluate(versions, hypothetical))


def assess(gate: Gate, run: Run, now: datetime) -> Assessment:
    """Evaluate `gate` (locked, with its run locked) at `now`: void expired and stale
    approvals, evaluate the policies in scope, store the decisions and input, attribute the
    approvals to the rules, and say what the gate's status should be."""
    stage = gate.stage_run
    env = gate.environment
    versions = policy_versions(env)
    current = list(gate.decisions.filter(current=True).select_related("policy_version__policy"))
    doc = _input_or_error(stage, now)
    seen = seen_hash(doc, versions)
    live = list(
        gate.approvals.filter(void=False).select_related("user").order_by("created_at", "pk")
    )
    kept = []
    for approval in live:
        if approval.expires_at is not None and approval.expires_at <= now:
            _void(
                approval, f"expired after {env.approval_ttl_hours} h", gate=gate, run=run, now=now
            )
        elif approval.seen_hash != seen:
            _void(approval, _describe_change(current, versions), gate=gate, run=run, now=now)
        else:
            kept.append(approval)
    doc["approvals"] = [_approval_entry(a) for a in kept]
    ihash = rego.input_hash(doc)
    same_versions = sorted(v.pk for v in versions) == sorted(d.policy_version_id for d in current)
    if ihash == gate.input_hash and same_versions:
        rows = current  # the same document, the same policies: the same decisions
    else:
        rows = _store_decisions(gate, versions, _evaluate(versions, doc), current, ihash, now)
    gate.input, gate.input_hash, gate.seen_hash = doc, ihash, seen
    gate.save(update_fields=["input", "input_hash", "seen_hash"])

    progress = approval_progress(env, kept)
    for approval in kept:
        group = progress.attributed.get(approval.pk, "")
        if approval.attributed_group != group:
            approval.attributed_group = group
            approval.save(update_fields=["attributed_group"])

    blocking = [r for r in rows if r.result in BLOCKING_RESULTS]
    hard = [r for r in blocking if r.enforcement == Enforcement.HARD_MANDATORY]
    soft = [r for r in blocking if r.enforcement == Enforcement.SOFT_MANDATORY]
    covered = set()
    overrides = list(gate.overrides.select_related("user").order_by("created_at"))
    for override in overrides:
        covered |= {(p.get("policy"), p.get("version")) for p in override.policies}
    uncovered = [
        r for r in soft if (r.policy_version.policy.name, r.policy_version.number) not in covered
    ]
    passed = [r.policy_version.policy.name for r in soft if r not in uncovered]

    if hard and not _curable(gate, run, doc, hard, kept, now):
        reason = f"blocked by hard-mandatory policy {_messages(hard)}"
        return Assessment(GateStatus.BLOCKED, reason, rows, progress)
    waiting = []
    if hard:
        waiting.append(f"hard-mandatory policy {_messages(hard)} (more approvals can lift it)")
    if uncovered:
        waiting.append(f"soft-mandatory policy {_messages(uncovered)} (an override can pass it)")
    if not progress.satisfied:
        waiting.append(f"waiting for approvals: {progress.missing()}")
    if waiting:
        return Assessment(GateStatus.WAITING, "; ".join(waiting), rows, progress, passed)
    approved = ", ".join(
        f"{r.group}: {', '.join(r.approvers)}" for r in progress.rules if r.approvers
    )
    approved_text = f"approved ({approved})" if approved else "no approval required"
    if passed:
        who = ", ".join(sorted({o.user.get_username() for o in overrides}))
        reason = f"opened with an override by {who} of {', '.join(passed)}; {approved_text}"
        return Assessment(GateStatus.OVERRIDDEN, reason, rows, progress, passed)
    return Assessment(GateStatus.OPEN, f"policies passed; {approved_text}", rows, progress)


def _verdict(gate: Gate) -> tuple[str, str]:
    if gate.status in (GateStatus.OPEN, GateStatus.OVERRIDDEN):
        return "open", gate.reason
    if gate.status == GateStatus.WAITING:
        return "waiting", gate.reason
    return "refused", gate.reason


def _lock_gate(stage_run: StageRun, now: datetime) -> tuple[Gate, bool]:
    gate = Gate.objects.select_for_update().filter(stage_run=stage_run).first()
    created = gate is None
    if created:
        # The run row is locked by the caller, so two checks of one stage cannot race here;
        # the OneToOne constraint is the backstop.
        gate = Gate.objects.create(
            stage_run=stage_run, environment=stage_run.environment, created_at=now
        )
    gate.stage_run = stage_run
    gate.environment = stage_run.environment
    return gate, created


def check(stage_run: StageRun, *, now: datetime | None = None) -> tuple[str, str]:
    """The engine's gate hook, called with the run row locked for a ready stage that targets
    a protected environment. Returns ("open" | "waiting" | "refused", reason)."""
    from . import notifications

    now = now or timezone.now()
    run = stage_run.run
    gate, created = _lock_gate(stage_run, now)
    if not created and gate.status in (
        GateStatus.REJECTED,
        GateStatus.BLOCKED,
        GateStatus.EXPIRED,
    ):
        return _verdict(gate)
    try:
        result = assess(gate, run, now)
    except GateInputError as exc:
        # Malformed environment data (freeze or change windows): fail closed, but stay
        # fixable — the gate waits and says what to fix.
        logger.warning("gate %s: %s", gate.pk, exc)
        reason = f"cannot evaluate the policies: {exc}"
        transition(gate, GateStatus.WAITING, reason=reason, run=run, now=now, created=created)
        return _verdict(gate)
    changed = transition(
        gate,
        result.status,
        reason=result.reason,
        run=run,
        now=now,
        created=created,
        decisions=[
            {
                "policy": d.policy_version.policy.name,
                "version": d.policy_version.number,
                "enforcement": d.enforcement,
                "result": d.result,
            }
            for d in result.decisions
        ],
        required=result.progress.summary(),
        overridden=result.overridden,
    )
    if gate.status == GateStatus.WAITING and gate.notified_at is None:
        gate.notified_at = now
        gate.save(update_fields=["notified_at"])
        notifications.schedule(gate, "waiting")
    elif (
        changed
        and gate.status in DECIDED
        and (gate.notified_at is not None or gate.status == GateStatus.BLOCKED)
    ):
        notifications.schedule(gate, gate.status)
    return _verdict(gate)


def expire(gate: Gate, *, reason: str, run: Run, now: datetime) -> bool:
    """Expire a waiting gate (locked) whose run or stage ended without it."""
    if gate.status != GateStatus.WAITING:
        return False
    return transition(gate, GateStatus.EXPIRED, reason=reason, run=run, now=now)


def close_for_run(run: Run, *, now: datetime | None = None) -> int:
    """Called by orchestrator.actions.cancel_run (run locked): waiting gates of the run
    expire with the reason "run canceled". Returns how many."""
    now = now or timezone.now()
    gates = (
        Gate.objects.select_for_update(of=("self",))
        .filter(stage_run__run=run, status=GateStatus.WAITING)
        .select_related("environment", "stage_run")
        .order_by("pk")
    )
    return sum(expire(g, reason="run canceled", run=run, now=now) for g in gates)


# --- housekeeping ---------------------------------------------------------------------


def recheck(gate_id: int, *, now: datetime | None = None) -> str | None:
    """Re-examine one waiting gate through the engine (which calls `check`), so that voided
    approvals, a change window that opened or a freeze that began take effect, and a gate
    that opens dispatches its stage. A gate whose stage or run ended expires. Returns the
    gate's status afterwards (None if it is gone)."""
    from orchestrator import actions as run_actions
    from orchestrator import engine

    now = now or timezone.now()
    with transaction.atomic():
        run_id = Gate.objects.filter(pk=gate_id).values_list("stage_run__run_id", flat=True).first()
        if run_id is None:
            return None
        run = Run.objects.select_for_update(of=("self",)).get(pk=run_id)
        gate = (
            Gate.objects.select_for_update(of=("self",))
            .select_related("environment", "stage_run")
            .get(pk=gate_id)
        )
        if gate.status != GateStatus.WAITING:
            return gate.status
        stage = gate.stage_run
        if run.is_terminal or stage.is_terminal:
            what = (
                f"run #{run.number} ended ({run.status})"
                if run.is_terminal
                else (f"stage {stage.name} ended ({stage.status})")
            )
            reason = f"{what}: {stage.reason or run.reason}".rstrip(": ")
            expire(gate, reason=reason, run=run, now=now)
            return gate.status
        outcome = engine.advance(run, now=now)
        run_actions.dispatch_after_commit(outcome)
        gate.refresh_from_db(fields=["status"])
        return gate.status


def housekeeping(now: datetime | None = None) -> dict:
    """Beat task (every 30 s): re-check every waiting gate (expired approvals are voided,
    stale ones too, windows and freezes are applied) and send a reminder, once, for gates
    waiting longer than their environment's reminder_minutes (0 = no reminders)."""
    from . import notifications

    now = now or timezone.now()
    stats = {"checked": 0, "voided": 0, "reminded": 0}
    ids = list(
        Gate.objects.filter(status=GateStatus.WAITING).order_by("pk").values_list("pk", flat=True)
    )
    for gate_id in ids:
        live_before = Approval.objects.filter(gate_id=gate_id, void=False).count()
        try:
            status = recheck(gate_id, now=now)
        except Exception:  # one bad gate must not stop the others
            logger.exception("housekeeping: re-checking gate %s failed", gate_id)
            continue
        stats["checked"] += 1
        stats["voided"] += (
            live_before - Approval.objects.filter(gate_id=gate_id, void=False).count()
        )
        if status and status != GateStatus.WAITING:
            stats[status] = stats.get(status, 0) + 1
    due = Gate.objects.filter(
        status=GateStatus.WAITING,
        reminded_at__isnull=True,
        environment__reminder_minutes__gt=0,
    ).select_related("environment")
    for gate in due:
        since = gate.notified_at or gate.created_at
        if since + timedelta(minutes=gate.environment.reminder_minutes) > now:
            continue
        with transaction.atomic():
            # Conditional UPDATE: two housekeeping runs never both remind.
            if Gate.objects.filter(pk=gate.pk, reminded_at__isnull=True).update(reminded_at=now):
                notifications.schedule(gate, "reminder")
                stats["reminded"] += 1
    return stats

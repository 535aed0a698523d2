"""Gates: the checkpoint in front of every stage that deploys to a protected environment.

The engine calls `check(stage_run, now=..., actor=...)` (through orchestrator.actions.advance)
with the run row locked whenever a stage that targets a protected environment is ready to
start. The first call creates the stage's Gate; every call evaluates the policies in scope
again, so the decision that lets a stage start is always taken immediately before it is
dispatched (a freeze that began after the approvals still blocks). The verbs that change a
gate on a person's behalf (approve, reject, override) and its housekeeping live in
governance/actions.py; they lock the run, then the gate, record their decision and advance
the run, which calls `check` again.

The parts of a gate's decision live beside this module: governance.errors (refusals),
governance.gate_input (the policy input document and the seen hash), governance.approvers
(rule matching, separation of duties, eligibility); status changes go through
orchestrator.lifecycle.gate.

How a gate decides (docs/governance.md has the long version):
- a hard-mandatory deny (or evaluation error) blocks the gate for good, unless more approvals
  could lift it: we evaluate that policy once more as if every eligible approver who has not
  decided yet had approved; if it still denies, the gate is BLOCKED now;
- a soft-mandatory deny keeps the gate waiting until an override passes it;
- the approval rules of the environment must all hold; approvals are attributed to rules by a
  maximum bipartite matching, so one person counts once;
- otherwise the gate is OPEN (OVERRIDDEN when it opened thanks to an override).

Approvals become void when they expire or when what the approver saw changed (`seen_hash`,
which covers the digests of the earlier stages' artifacts).

A policy-input artifact that cannot be read as JSON (or is over the size limit, changed in
storage, purged) blocks the gate with the reason: fail closed (gate_input.artifact_problems).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from orchestrator import lifecycle
from orchestrator.models import Run, StageRun

from . import audit, notifications, rego
from .approvers import (
    Progress,
    RuleProgress,
    acting_for,
    approval_principal,
    approval_progress,
    approve_problem,
    delegators_of,
    eligibility_problem,
    eligible_approvers,
    escalated_groups,
    match_approvals,
    overriders,
    rule_groups,
    sod_violation,
    state_problem,
)
from .errors import GateConflict, GateError, GateInputError, GateInvalid, GateRefused
from .gate_input import (
    approval_entry,
    artifact_problems,
    build_input,
    current_seen_hash,
    describe_change,
    input_or_error,
    policy_versions,
    seen_hash,
)
from .models import (
    BLOCKING_RESULTS,
    GATE_FINAL,
    Approval,
    ApprovalDecision,
    Enforcement,
    FreezeMode,
    Gate,
    GateStatus,
    PolicyDecision,
    PolicyVersion,
)

__all__ = [  # the gate's vocabulary, in one import for verbs, pages and the API
    "BLOCKING_RESULTS",
    "GateConflict",
    "GateError",
    "GateInputError",
    "GateInvalid",
    "GateRefused",
    "Progress",
    "RuleProgress",
    "acting_for",
    "approval_principal",
    "approval_progress",
    "approve_problem",
    "delegators_of",
    "build_input",
    "check",
    "close_for_run",
    "current_seen_hash",
    "eligibility_problem",
    "eligible_approvers",
    "escalated_groups",
    "match_approvals",
    "overriders",
    "policy_versions",
    "rule_groups",
    "seen_hash",
    "sod_violation",
    "state_problem",
]

logger = logging.getLogger(__name__)


def void_approval(approval: Approval, reason: str, *, gate: Gate, run: Run, now: datetime) -> None:
    """An approval stops counting (expired, or what its approver saw changed); audited."""
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
        **lifecycle.gate_details(gate, run),
    )


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
    doc = input_or_error(stage, now)
    seen = seen_hash(doc, versions)
    live = list(
        gate.approvals.filter(void=False).select_related("user").order_by("created_at", "pk")
    )
    kept = []
    for approval in live:
        if approval.expires_at is not None and approval.expires_at <= now:
            void_approval(
                approval, f"expired after {env.approval_ttl_hours} h", gate=gate, run=run, now=now
            )
        elif approval.seen_hash != seen:
            why = describe_change(current, versions, gate.input, doc)
            void_approval(approval, why, gate=gate, run=run, now=now)
        else:
            kept.append(approval)
    doc["approvals"] = [approval_entry(a) for a in kept]
    ihash = rego.input_hash(doc)
    same_versions = sorted(v.pk for v in versions) == sorted(d.policy_version_id for d in current)
    if ihash == gate.input_hash and same_versions:
        rows = current  # the same document, the same policies: the same decisions
    else:
        rows = _store_decisions(gate, versions, _evaluate(versions, doc), current, ihash, now)
    gate.input, gate.input_hash, gate.seen_hash = doc, ihash, seen
    gate.save(update_fields=["input", "input_hash", "seen_hash"])

    progress = approval_progress(env, kept, escalated_groups(gate))
    for approval in kept:
        group = progress.attributed.get(approval.pk, "")
        if approval.attributed_group != group:
            approval.attributed_group = group
            approval.save(update_fields=["attributed_group"])

    problems = artifact_problems(doc)
    if problems:
        # Fail closed: the policies would judge a plan they cannot see.
        reason = "blocked: " + "; ".join(problems)
        return Assessment(GateStatus.BLOCKED, reason, rows, progress)
    blocking = [r for r in rows if r.result in BLOCKING_RESULTS]
    hard = [r for r in blocking if r.enforcement == Enforcement.HARD_MANDATORY]
    soft = [r for r in blocking if r.enforcement == Enforcement.SOFT_MANDATORY]
    overrides = list(gate.overrides.select_related("user").order_by("created_at"))
    uncovered = gate.open_soft_denials(rows, overrides)
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


def check(stage_run: StageRun, *, now: datetime | None = None, actor=None) -> tuple[str, str]:
    """The engine's gate hook (orchestrator.actions.advance binds `actor`, who caused the
    check: an approver, the system), called with the run row locked for a ready stage that
    targets a protected environment. Returns ("open" | "waiting" | "refused", reason)."""
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
        try:
            freeze = gate.environment.freeze_at(now)
        except (ValueError, KeyError, TypeError) as exc:
            name = gate.environment.name
            raise GateInputError(f"environment {name} is misconfigured ({exc!r})") from exc
        if freeze is not None and gate.environment.freeze_mode == FreezeMode.PAUSE:
            # Paused, not refused: housekeeping re-checks it, and after the freeze the
            # policies and approvals decide as usual.
            reason = (
                f"frozen until {freeze['end']}"
                + (f" ({freeze['reason']})" if freeze.get("reason") else "")
                + ": the gate waits and resumes when the freeze ends"
            )
            lifecycle.gate(
                gate,
                GateStatus.WAITING,
                reason=reason,
                run=run,
                now=now,
                actor=actor,
                created=created,
            )
            return _verdict(gate)
        result = assess(gate, run, now)
    except GateInputError as exc:
        # Malformed environment data (freeze or change windows): fail closed, but stay
        # fixable — the gate waits and says what to fix.
        logger.warning("gate %s: %s", gate.pk, exc)
        reason = f"cannot evaluate the policies: {exc}"
        lifecycle.gate(
            gate,
            GateStatus.WAITING,
            reason=reason,
            run=run,
            now=now,
            actor=actor,
            created=created,
        )
        return _verdict(gate)
    changed = lifecycle.gate(
        gate,
        result.status,
        reason=result.reason,
        run=run,
        now=now,
        actor=actor,
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
        and gate.status in GATE_FINAL
        and (gate.notified_at is not None or gate.status == GateStatus.BLOCKED)
    ):
        notifications.schedule(gate, gate.status)
    return _verdict(gate)


def expire(gate: Gate, *, reason: str, run: Run, now: datetime, actor=None) -> bool:
    """Expire a waiting gate (locked) whose run or stage ended without it."""
    if gate.status != GateStatus.WAITING:
        return False
    return lifecycle.gate(gate, GateStatus.EXPIRED, reason=reason, run=run, now=now, actor=actor)


def close_for_run(run: Run, *, now: datetime | None = None, actor=None) -> int:
    """Called by orchestrator.actions.cancel_run (run locked): waiting gates of the run
    expire with the reason "run canceled". Returns how many."""
    now = now or timezone.now()
    gates = (
        Gate.objects.select_for_update(of=("self",))
        .filter(stage_run__run=run, status=GateStatus.WAITING)
        .select_related("environment", "stage_run")
        .order_by("pk")
    )
    return sum(expire(g, reason="run canceled", run=run, now=now, actor=actor) for g in gates)

"""Verbs that change governance state on someone's behalf. Each runs in one transaction, takes
a keyword-only `actor`, writes its audit row(s) through governance.audit.record and leaves
side effects (events, notifications, step dispatch) to run after commit.

Lock order everywhere: the Run row first, then the Gate row (docs/architecture.md).
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestrator import engine, events
from orchestrator.models import Run

from . import audit, gates
from .gates import GateConflict, GateError, GateInvalid, GateRefused
from .models import (
    Approval,
    ApprovalDecision,
    Enforcement,
    Gate,
    GateStatus,
    Outcome,
    Override,
)
from .permissions import can

__all__ = [
    "OVERRIDE_MIN_JUSTIFICATION",
    "GateConflict",
    "GateError",
    "GateInvalid",
    "GateRefused",
    "approve_gate",
    "override_gate",
    "reject_gate",
]


# --- gates ------------------------------------------------------------------------------

OVERRIDE_MIN_JUSTIFICATION = 20


def _lock(gate: Gate) -> tuple[Run, Gate]:
    """Lock the gate's run, then the gate (the project's lock order), and load what the
    verbs need without locking the related rows."""
    run_id = Gate.objects.filter(pk=gate.pk).values_list("stage_run__run_id", flat=True).get()
    run = (
        Run.objects.select_for_update(of=("self",))
        .select_related("pipeline", "version", "triggered_by")
        .get(pk=run_id)
    )
    locked = (
        Gate.objects.select_for_update(of=("self",))
        .select_related("environment", "stage_run")
        .get(pk=gate.pk)
    )
    locked.stage_run.run = run
    return run, locked


def _refused(actor, action: str, gate: Gate, exc: GateRefused, now: datetime, **details) -> None:
    """Audit a refused attempt. It has its own transaction: the action's transaction rolled
    back, the record of the attempt must not (self-approval attempts are reported)."""
    with transaction.atomic():
        audit.record(
            actor,
            action,
            gate,
            outcome=Outcome.DENIED,
            at=now,
            rule=exc.rule,
            message=exc.message,
            environment=gate.environment.name,
            run=gate.stage_run.run_id,
            **details,
        )


def _advance(run: Run, gate: Gate, actor, now: datetime) -> None:
    """Let the engine look at the run again (it calls gates.check for the gate's stage): a
    gate that opens dispatches its stage here, once, under the run lock; a refused gate
    blocks the stage and the run."""
    from orchestrator import actions as run_actions

    with gates.acting(actor):
        outcome = engine.advance(run, now=now)
    run_actions.dispatch_after_commit(outcome)
    gate.refresh_from_db()


def approve_gate(
    gate: Gate,
    *,
    actor,
    comment: str = "",
    now: datetime | None = None,
    seen_hash: str | None = None,
) -> Approval:
    """Approve a waiting gate. The approval records what the approver saw (`seen_hash`);
    when a client passes the seen_hash it displayed and the gate changed since, the approval
    is refused (409) so nobody approves something they have not seen.

    Raises GateRefused (not permitted, not in an approval group, separation of duties — the
    attempt is audited as denied), GateConflict (gate not waiting, already decided)."""
    now = now or timezone.now()
    comment = (comment or "").strip()
    try:
        with transaction.atomic():
            run, gate = _lock(gate)
            problem = gates.approve_problem(gate, run, actor)
            if problem:
                raise problem
            try:
                current = gates.current_seen_hash(gate, now)
            except gates.GateInputError as exc:
                raise GateConflict(f"gate {gate.pk} cannot be evaluated: {exc}", rule="input")
            if seen_hash and seen_hash != current:
                raise GateConflict(
                    f"gate {gate.pk} changed since you looked at it; review it again",
                    rule="stale",
                )
            try:
                with transaction.atomic():
                    approval = Approval.objects.create(
                        gate=gate,
                        user=actor,
                        decision=ApprovalDecision.APPROVE,
                        comment=comment,
                        groups=sorted(actor.groups.values_list("name", flat=True)),
                        seen_hash=current,
                        created_at=now,
                        expires_at=(
                            now + gate.environment.approval_ttl
                            if gate.environment.approval_ttl_hours
                            else None
                        ),
                    )
            except IntegrityError:  # one_live_decision_per_user, under a race
                raise GateConflict(
                    f"{actor.get_username()} already decided on gate {gate.pk}", rule="duplicate"
                )
            audit.record(
                actor,
                "gate.approve",
                gate,
                at=now,
                comment=comment,
                approval=approval.pk,
                seen_hash=current,
                expires_at=approval.expires_at.isoformat() if approval.expires_at else None,
                environment=gate.environment.name,
                run=run.pk,
                stage=gate.stage_run.name,
            )
            _advance(run, gate, actor, now)
            approval.refresh_from_db()
            events.publish_gate(gate, run)
    except GateRefused as exc:
        _refused(actor, "gate.approve", gate, exc, now, comment=comment)
        raise
    return approval


def reject_gate(gate: Gate, *, actor, comment: str, now: datetime | None = None) -> Approval:
    """Reject a waiting gate with a comment: the gate becomes REJECTED, the stage blocked and
    the run ends "blocked" with the rejection as its reason. An approver who approved earlier
    may change their mind (their approval is voided). Separation of duties does not apply:
    stopping a change is always allowed to those who may approve."""
    now = now or timezone.now()
    comment = (comment or "").strip()
    try:
        with transaction.atomic():
            run, gate = _lock(gate)
            problem = gates.eligibility_problem(gate, actor) or gates.state_problem(gate, run)
            if problem:
                raise problem
            if not comment:
                raise GateInvalid("a rejection needs a comment that says why", rule="comment")
            mine = gate.approvals.filter(user=actor, void=False).first()
            if mine is not None:
                if mine.decision == ApprovalDecision.REJECT:
                    raise GateConflict(
                        f"{actor.get_username()} already rejected gate {gate.pk}", rule="duplicate"
                    )
                mine.void, mine.void_reason = True, "superseded by the same user's rejection"
                mine.save(update_fields=["void", "void_reason"])
            rejection = Approval.objects.create(
                gate=gate,
                user=actor,
                decision=ApprovalDecision.REJECT,
                comment=comment,
                groups=sorted(actor.groups.values_list("name", flat=True)),
                seen_hash=gate.seen_hash,
                created_at=now,
            )
            audit.record(
                actor,
                "gate.reject",
                gate,
                at=now,
                comment=comment,
                approval=rejection.pk,
                environment=gate.environment.name,
                run=run.pk,
                stage=gate.stage_run.name,
            )
            gates.transition(
                gate,
                GateStatus.REJECTED,
                reason=f"rejected by {actor.get_username()}: {comment}",
                run=run,
                now=now,
                actor=actor,
            )
            from . import notifications

            notifications.schedule(gate, "rejected")
            _advance(run, gate, actor, now)
    except GateRefused as exc:
        _refused(actor, "gate.reject", gate, exc, now, comment=comment)
        raise
    return rejection


def override_gate(
    gate: Gate, *, actor, justification: str, now: datetime | None = None
) -> Override:
    """Break-glass: pass the soft-mandatory denials that currently hold a waiting gate, with a
    written justification (at least OVERRIDE_MIN_JUSTIFICATION characters). Needs the
    override permission on the environment. Never passes a hard-mandatory denial, and never
    waives the approval rules: the gate opens (as OVERRIDDEN) once they hold too."""
    now = now or timezone.now()
    justification = (justification or "").strip()
    try:
        with transaction.atomic():
            run, gate = _lock(gate)
            if not can(actor, "override", gate):
                raise GateRefused(
                    f"{actor.get_username()} may not override gates of "
                    f"{gate.environment.name}: the override permission on the environment is "
                    f"missing",
                    rule="permission",
                )
            problem = gates.state_problem(gate, run)
            if problem:
                raise problem
            if len(justification) < OVERRIDE_MIN_JUSTIFICATION:
                raise GateInvalid(
                    f"an override needs a justification of at least "
                    f"{OVERRIDE_MIN_JUSTIFICATION} characters (got {len(justification)})",
                    rule="justification",
                )
            denials = list(
                gate.decisions.filter(
                    current=True,
                    enforcement=Enforcement.SOFT_MANDATORY,
                    result__in=gates.BLOCKING_RESULTS,
                ).select_related("policy_version__policy")
            )
            covered = {
                (p.get("policy"), p.get("version"))
                for o in gate.overrides.all()
                for p in o.policies
            }
            denials = [
                d
                for d in denials
                if (d.policy_version.policy.name, d.policy_version.number) not in covered
            ]
            if not denials:
                hard = gate.decisions.filter(
                    current=True,
                    enforcement=Enforcement.HARD_MANDATORY,
                    result__in=gates.BLOCKING_RESULTS,
                ).exists()
                why = (
                    "only hard-mandatory policies deny it, and those can never be overridden"
                    if hard
                    else "no soft-mandatory policy denies it"
                )
                raise GateConflict(f"nothing to override on gate {gate.pk}: {why}", rule="state")
            passed = [
                {
                    "policy": d.policy_version.policy.name,
                    "version": d.policy_version.number,
                    "result": d.result,
                    "messages": list(d.deny),
                }
                for d in denials
            ]
            override = Override.objects.create(
                gate=gate,
                user=actor,
                justification=justification,
                policies=passed,
                created_at=now,
            )
            audit.record(
                actor,
                "gate.override",
                gate,
                at=now,
                break_glass=True,
                justification=justification,
                policies=passed,
                override=override.pk,
                environment=gate.environment.name,
                run=run.pk,
                stage=gate.stage_run.name,
            )
            _advance(run, gate, actor, now)
            events.publish_gate(gate, run)
    except GateRefused as exc:
        _refused(actor, "gate.override", gate, exc, now, justification=justification)
        raise
    return override

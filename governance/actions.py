"""Verbs that change governance state on someone's behalf. Each runs in one transaction, takes
a keyword-only `actor`, writes its audit row(s) through governance.audit.record and leaves
side effects (events, notifications, step dispatch) to run after commit.

The gate verbs change run state, so they run in `orchestrator.actions.transition()` and move
the run on through `orchestrator.actions.advance()`, as every other run change does: their
audit rows and events are written at the end of the transaction (the audit chain head is
never held while the policies evaluate), each event is published once, and a run that ends
there has its workspace removed.

Lock order everywhere: the Run row first, then the Gate row (docs/architecture.md).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestrator import actions as run_actions
from orchestrator import events, lifecycle
from orchestrator.kernel.queue import enqueue
from orchestrator.models import Run

from . import audit, gates, notifications, pdf, reports
from .gates import GateConflict, GateError, GateInvalid, GateRefused
from .models import (
    Approval,
    ApprovalDecision,
    ApprovalRule,
    Enforcement,
    Environment,
    Gate,
    GateEscalation,
    GateStatus,
    Outcome,
    Override,
    ReportJob,
)
from .permissions import can

logger = logging.getLogger(__name__)

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
    """Move the run on (the engine calls gates.check for the gate's stage, on `actor`'s
    behalf): a gate that opens dispatches its stage here, once, under the run lock; a
    refused gate blocks the stage and the run."""
    run_actions.advance(run, actor=actor, now=now)
    gate.refresh_from_db()


def approve_gate(
    gate: Gate,
    *,
    actor,
    comment: str = "",
    now: datetime | None = None,
    seen_hash: str | None = None,
    on_behalf_of=None,
    token=None,
) -> Approval:
    """Approve a waiting gate. The approval records what the approver saw (`seen_hash`)
    and the API token it was made with (`token`, None for the browser); when a client passes
    the seen_hash it displayed and the gate changed since, the approval is refused (409) so
    nobody approves something they have not seen.

    A delegate (governance.delegation) approves for the approver they stand in for — the
    one named by `on_behalf_of`, or, when their own rights do not let them, the first one
    whose rights do: the approval records `on_behalf_of` and counts with the delegator's
    groups. Separation of duties applies to the delegate and to the delegator.

    Raises GateRefused (not permitted, not in an approval group, separation of duties — the
    attempt is audited as denied), GateConflict (gate not waiting, already decided)."""
    now = now or timezone.now()
    comment = (comment or "").strip()
    try:
        with run_actions.transition():
            run, gate = _lock(gate)
            principal, problem = gates.approval_principal(
                gate, run, actor, on_behalf_of=on_behalf_of, now=now
            )
            if problem:
                raise problem
            voter = principal or actor
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
                        on_behalf_of=principal,
                        decision=ApprovalDecision.APPROVE,
                        comment=comment,
                        groups=sorted(voter.groups.values_list("name", flat=True)),
                        seen_hash=current,
                        created_at=now,
                        token=token,
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
                **_on_behalf(principal),
                seen_hash=current,
                expires_at=approval.expires_at.isoformat() if approval.expires_at else None,
                environment=gate.environment.name,
                run=run.pk,
                stage=gate.stage_run.name,
                **({"token": token.pk} if token is not None else {}),
            )
            _advance(run, gate, actor, now)
            approval.refresh_from_db()
            # The approval changed the gate even when its status and reason did not: say so
            # (events.batch sends one gate.updated per gate and transaction).
            events.publish_gate(gate, run)
    except GateRefused as exc:
        extra = {"on_behalf_of": on_behalf_of.get_username()} if on_behalf_of else {}
        _refused(actor, "gate.approve", gate, exc, now, comment=comment, **extra)
        raise
    return approval


def _who(actor, principal) -> str:
    """ "sara", or "sara for sam" for a delegate's decision."""
    name = actor.get_username()
    return f"{name} for {principal.get_username()}" if principal is not None else name


def _on_behalf(principal) -> dict:
    """The audit detail of a decision a delegate made for `principal` (none for one's own)."""
    return {"on_behalf_of": principal.get_username()} if principal is not None else {}


def reject_gate(
    gate: Gate, *, actor, comment: str, now: datetime | None = None, on_behalf_of=None
) -> Approval:
    """Reject a waiting gate with a comment: the gate becomes REJECTED, the stage blocked and
    the run ends "blocked" with the rejection as its reason. An approver who approved earlier
    may change their mind (their approval is voided). Separation of duties does not apply:
    stopping a change is always allowed to those who may approve — and to whoever stands in
    for one of them (a delegation), recorded as on their behalf."""
    now = now or timezone.now()
    comment = (comment or "").strip()
    try:
        with run_actions.transition():
            run, gate = _lock(gate)
            principal, problem = gates.acting_for(gate, actor, on_behalf_of=on_behalf_of, now=now)
            problem = problem or gates.state_problem(gate, run)
            if problem:
                raise problem
            voter = principal or actor
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
                on_behalf_of=principal,
                decision=ApprovalDecision.REJECT,
                comment=comment,
                groups=sorted(voter.groups.values_list("name", flat=True)),
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
                **_on_behalf(principal),
                environment=gate.environment.name,
                run=run.pk,
                stage=gate.stage_run.name,
            )
            lifecycle.gate(
                gate,
                GateStatus.REJECTED,
                reason=f"rejected by {_who(actor, principal)}: {comment}",
                run=run,
                now=now,
                actor=actor,
            )
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
        with run_actions.transition():
            run, gate = _lock(gate)
            if not can(actor, "override", gate):
                raise GateRefused(
                    f"{actor.get_username()} may not override gates of "
                    f"{gate.environment.name}: the override permission on the environment is "
                    f"missing",
                    rule="permission",
                )
            sod = gates.sod_violation(run, actor, environment=gate.environment, verb="override")
            if sod:  # break-glass is not a way around the four eyes
                raise GateRefused(sod, rule="separation-of-duties")
            problem = gates.state_problem(gate, run)
            if problem:
                raise problem
            if len(justification) < OVERRIDE_MIN_JUSTIFICATION:
                raise GateInvalid(
                    f"an override needs a justification of at least "
                    f"{OVERRIDE_MIN_JUSTIFICATION} characters (got {len(justification)})",
                    rule="justification",
                )
            denials = gate.open_soft_denials()
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
            events.publish_gate(gate, run)  # as for an approval: one gate.updated
    except GateRefused as exc:
        _refused(actor, "gate.override", gate, exc, now, justification=justification)
        raise
    return override


# --- gate housekeeping ------------------------------------------------------------------


def recheck(gate_id: int, *, now: datetime | None = None) -> str | None:
    """Re-examine one waiting gate through the engine (which calls `check`), so that voided
    approvals, a change window that opened or a freeze that began take effect, and a gate
    that opens dispatches its stage. A gate whose stage or run ended expires. Returns the
    gate's status afterwards (None if it is gone)."""
    now = now or timezone.now()
    with run_actions.transition():
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
        env = gate.environment
        if env.max_wait_days and gate.created_at + timedelta(days=env.max_wait_days) <= now:
            lifecycle.gate(
                gate,
                GateStatus.REJECTED,
                reason=(
                    f"rejected by the system: no decision within {env.max_wait_days} days "
                    f"(the maximum wait of {env.name})"
                ),
                run=run,
                now=now,
                timed_out=True,
            )
            notifications.schedule(gate, "timed_out")
            run_actions.advance(run, now=now)
            return gate.status
        _escalate(gate, run, now)
        stage = gate.stage_run
        if run.is_terminal or stage.is_terminal:
            what = (
                f"run #{run.number} ended ({run.status})"
                if run.is_terminal
                else (f"stage {stage.name} ended ({stage.status})")
            )
            reason = f"{what}: {stage.reason or run.reason}".rstrip(": ")
            gates.expire(gate, reason=reason, run=run, now=now)
            return gate.status
        run_actions.advance(run, now=now)
        gate.refresh_from_db(fields=["status"])
        return gate.status


def _escalate(gate: Gate, run: Run, now: datetime) -> None:
    """Rules of `gate` (locked) still short of approvals past their SLA: their backup group
    becomes eligible (a GateEscalation), audited and told."""
    rules = [
        r
        for r in gate.environment.approval_rules.select_related("group", "backup_group")
        if r.sla_minutes
        and r.backup_group_id
        and gate.created_at + timedelta(minutes=r.sla_minutes) <= now
    ]
    if not rules:
        return
    done = set(gate.escalations.values_list("group_id", flat=True))
    live = list(gate.approvals.filter(void=False).select_related("user"))
    progress = gates.approval_progress(gate.environment, live, gates.escalated_groups(gate))
    short = {r.group for r in progress.rules if r.given < r.required}
    for rule in rules:
        if rule.group_id in done or rule.group.name not in short:
            continue
        GateEscalation.objects.create(
            gate=gate, group=rule.group, backup_group=rule.backup_group, at=now
        )
        audit.record(
            None,
            "gate.escalate",
            gate,
            at=now,
            group=rule.group.name,
            backup_group=rule.backup_group.name,
            sla_minutes=rule.sla_minutes,
            **lifecycle.gate_details(gate, run),
        )
        notifications.schedule(gate, "escalated")
        events.publish_gate(gate, run)


def housekeeping(now: datetime | None = None) -> dict:
    """Beat task (every 30 s): re-check every waiting gate (expired approvals are voided,
    stale ones too, windows and freezes are applied) and send a reminder, once, for gates
    waiting longer than their environment's reminder_minutes (0 = no reminders)."""
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


# --- environments ---------------------------------------------------------------------


class EnvironmentChanged(Exception):
    """Someone else saved the environment after the editor was loaded."""


def _recheck_waiting_gates() -> None:
    """After commit, re-check every waiting gate (a changed rule, window or policy applies at
    once, not at the next housekeeping tick). Queued by task name; a broker that is down
    only delays it to the next tick."""

    def send() -> None:
        try:
            enqueue("clearway.gate_housekeeping")
        except Exception:
            logger.exception("could not queue a gate re-check")

    transaction.on_commit(send)


RULE_FIELDS = ("required_count", "sla_minutes", "backup_group")


def _rule_terms(value, rule: ApprovalRule | None) -> dict:
    """A rule as wanted: {"required_count", "sla_minutes", "backup_group"}, or a count alone
    (the environment page's rules: the rule's SLA and backup stay as they are)."""
    if isinstance(value, int):
        terms = {"required_count": value}
        if rule is not None:
            terms.update(sla_minutes=rule.sla_minutes, backup_group=rule.backup_group)
    else:
        terms = dict(value)
    return {
        "required_count": int(terms.get("required_count") or 1),
        "sla_minutes": int(terms.get("sla_minutes") or 0),
        "backup_group": terms.get("backup_group"),
    }


def _rule_text(terms: dict):
    """How a rule reads in the audit log: its count, plus SLA and backup when set."""
    if not terms["sla_minutes"] and terms["backup_group"] is None:
        return terms["required_count"]
    backup = terms["backup_group"]
    return {
        "count": terms["required_count"],
        "sla_minutes": terms["sla_minutes"],
        "backup": backup.name if backup is not None else None,
    }


def _save_rules(env: Environment, wanted: dict) -> dict | None:
    """Make the environment's approval rules `wanted` ({group: count or terms}); the change,
    if any."""
    current = {r.group: r for r in env.approval_rules.select_related("group", "backup_group")}
    wanted = {group: _rule_terms(value, current.get(group)) for group, value in wanted.items()}
    before = {
        g.name: _rule_text({f: getattr(r, f) for f in RULE_FIELDS}) for g, r in current.items()
    }
    after = {g.name: _rule_text(t) for g, t in wanted.items()}
    if before == after:
        return None
    for group, rule in current.items():
        if group not in wanted:
            rule.delete()
            continue
        changed = [f for f in RULE_FIELDS if getattr(rule, f) != wanted[group][f]]
        for field in changed:
            setattr(rule, field, wanted[group][field])
        if changed:
            rule.save(update_fields=changed)
    for group, terms in wanted.items():
        if group not in current:
            ApprovalRule.objects.create(environment=env, group=group, **terms)
    return {"from": dict(sorted(before.items())), "to": dict(sorted(after.items()))}


def update_environment(
    environment: Environment,
    *,
    actor,
    settings: dict | None = None,
    freeze_windows: list | None = None,
    change_windows: list | None = None,
    rules: dict | None = None,
    loaded: str | None = None,
) -> dict:
    """Change an environment — its settings (Environment.SETTINGS), freeze and change windows
    and approval rules ({group: count}); what is None stays — in one transaction with one
    "environment.update" audit row whose `changes` say, per field, from what to what. The
    one writer of environments: the environment page and the admin call it. With `loaded`
    (the fingerprint the editor was given), a save over a newer state is refused
    (EnvironmentChanged). Returns the changes (empty: nothing changed)."""
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(pk=environment.pk)
        if loaded and loaded != env.fingerprint():
            raise EnvironmentChanged(
                f"{env.name} was changed by someone else after you opened this page; "
                "nothing was saved. Reload the page to see the current settings."
            )
        changes: dict = {}
        fields: list[str] = []
        for name, new in (settings or {}).items():
            if name not in Environment.SETTINGS:
                raise ValueError(f"{name} is not an environment setting")
            old = getattr(env, name)
            if old != new:
                if name == "notify_webhook_url":
                    # Webhook URLs often carry a token: the log says only that it changed.
                    changes[name] = {"changed": True, "set": bool(new)}
                else:
                    changes[name] = {"from": old, "to": new}
                setattr(env, name, new)
                fields.append(name)
        for name, new in (("freeze_windows", freeze_windows), ("change_windows", change_windows)):
            if new is not None and (getattr(env, name) or []) != new:
                changes[name] = {"from": getattr(env, name) or [], "to": new}
                setattr(env, name, new)
                fields.append(name)
        if fields:
            env.save(update_fields=fields)
        if rules is not None:
            rules_changed = _save_rules(env, rules)
            if rules_changed:
                changes["approval_rules"] = rules_changed
        if changes:
            audit.record(actor, "environment.update", env, changes=changes)
            _recheck_waiting_gates()
    return changes


def create_environment(*, actor, name: str, settings: dict, rules: dict | None = None):
    """A new environment, audited as "environment.create" with the same detail schema as an
    update (every field from None)."""
    with transaction.atomic():
        env = Environment.objects.create(name=name, **settings)
        changes = {key: {"from": None, "to": value} for key, value in settings.items()}
        if "notify_webhook_url" in changes:
            changes["notify_webhook_url"] = {
                "changed": True,
                "set": bool(settings["notify_webhook_url"]),
            }
        if rules:
            changes["approval_rules"] = _save_rules(env, rules)
        audit.record(actor, "environment.create", env, changes=changes)
    return env


# API tokens, step-up and sessions: governance/credentials.py.


# --- report jobs ------------------------------------------------------------------------


def request_report_pdf(actor, params) -> ReportJob:
    """Validate the filters and queue a PDF change report (the task is sent after commit,
    by name). Raises PermissionError, reports.FilterError."""
    with transaction.atomic():
        job, filters = reports.new_pdf_job(actor, params)
        audit.record(actor, "report.request", job, format="pdf", filters=filters.as_dict())

        def send() -> None:
            try:
                enqueue("clearway.generate_report_pdf", (job.pk,))
            except Exception:  # broker down: the job stays queued and says so
                ReportJob.objects.filter(pk=job.pk, status=ReportJob.Status.QUEUED).update(
                    error="could not reach the task queue; ask an administrator"
                )

        transaction.on_commit(send)
    return job


def generate_report_pdf(job_id: int) -> str | None:
    """Build a queued PDF job: claimed with a conditional UPDATE (a redelivered message never
    builds it twice; a missing or already-claimed job is left alone), built, then done —
    the file's digest audited into the hash chain — or failed. Returns the SHA-256."""
    if not lifecycle.claim_report_job(job_id):
        return None
    job = ReportJob.objects.select_related("requested_by").get(pk=job_id)
    last = {"p": 1}

    def progress(percent: int) -> None:
        if percent > last["p"]:  # one UPDATE per visible step, not per row
            last["p"] = percent
            ReportJob.objects.filter(pk=job_id).update(progress=min(percent, 99))

    job.status = ReportJob.Status.RUNNING
    try:
        rows = pdf.generate_pdf(job, progress=progress)
    except Exception as exc:
        bad_filter = isinstance(exc, reports.FilterError)
        job.error = str(exc) if bad_filter else "report generation failed"
        with transaction.atomic():
            lifecycle.report_job(
                job, ReportJob.Status.FAILED, now=timezone.now(), fields=("error",)
            )
            audit.record(
                job.requested_by,
                "report.generate",
                job,
                outcome=Outcome.FAILURE,
                error=str(exc)[:500],
            )
        if not bad_filter:
            raise
        return None
    job.progress, job.error = 100, ""
    with transaction.atomic():
        lifecycle.report_job(
            job,
            ReportJob.Status.DONE,
            now=timezone.now(),
            fields=("file", "sha256", "progress", "error"),
        )
        # The file's digest goes into the hash chain: the PDF can be matched to this event.
        audit.record(
            job.requested_by,
            "report.generate",
            job,
            format="pdf",
            sha256=job.sha256,
            rows=rows,
            file=job.file.rsplit("/", 1)[-1],
        )
    return job.sha256

"""The only writer of status columns: runs, stages, steps, gates and report jobs.

Every status change goes through a function here. It checks the move against the status
enum's table (the models' `move` methods and kernel.states), writes the row, records the
audit row (governance.audit.record) and announces the change (orchestrator.events). Callers
hold the run row locked (gates and steps change under their run's lock) and, for run state,
run inside `orchestrator.actions.transition()`, so audit rows and events are batched and the
audit chain head is locked only at the end of the transaction.

Writes go through the plain-SQL helpers (kernel.fastsql): this module is on the engine's
hot path, and it is the only code that writes these columns — never mixed with save() on
the same columns. The conditional UPDATEs that claim work (a step, a report job) are here
too: a claim is a status change that may lose a race.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from governance import audit
from governance.models import (
    CHANGE_REQUEST_MACHINE,
    GATE_MACHINE,
    ChangeRequest,
    Gate,
    GateStatus,
    Outcome,
    ReportJob,
)

from . import events
from .kernel import fastsql
from .models import Run, RunStatus, StageRun, StageStatus, StepRun, StepStatus


class Writes:
    """Stage rows changed during one engine pass, each written once at the end: a stage
    that becomes queued and then running in the same pass costs one UPDATE, not two."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[StageRun, set[str]]] = {}

    def mark(self, stage: StageRun, fields: list[str]) -> None:
        if fields:
            self.rows.setdefault(stage.pk, (stage, set()))[1].update(fields)

    def save(self) -> None:
        for stage, fields in self.rows.values():
            fastsql.update(stage, sorted(fields))
        self.rows.clear()


# --- runs -----------------------------------------------------------------------------


def run(
    run: Run,
    status: str,
    *,
    now: datetime,
    reason: str = "",
    actor: Any = None,
    action: str | None = "",
    **details: Any,
) -> bool:
    """Move `run` (locked) to `status`. Audited as `action` (default "run.<status>"; None:
    not audited — a run's start is recorded by its first step's "step.start"). A waiting run
    whose reason changed is rewritten and announced without an audit row. Returns whether
    the status changed."""
    if status == run.status:
        if status == RunStatus.WAITING and reason and reason != run.reason:
            run.reason = reason
            fastsql.update(run, ["reason"])
            events.publish_run(run)
        return False
    fields = run.move(status, reason=reason, now=now)
    fastsql.update(run, fields)
    if action is not None:
        audit.record(actor, action or f"run.{status}", run, at=now, reason=reason, **details)
    events.publish_run(run)
    return True


# --- stages ---------------------------------------------------------------------------


def stage(
    stage: StageRun,
    status: str,
    *,
    run: Run,
    now: datetime,
    reason: str = "",
    writes: Writes | None = None,
) -> None:
    """Move `stage` to `status`, audited ("stage.<status>") and announced. With `writes`
    the row is written when the engine's pass ends (Writes.save), else at once."""
    fields = stage.move(status, reason=reason, now=now)
    if not fields:
        return
    if writes is not None:
        writes.mark(stage, fields)
    else:
        fastsql.update(stage, fields)
    audit.record(None, f"stage.{status}", stage, at=now, run=run.pk, reason=reason)
    events.publish_stage(stage, run)


# --- steps ----------------------------------------------------------------------------


def step(
    step: StepRun,
    status: str,
    *,
    run: Run,
    now: datetime,
    fields: tuple[str, ...] | list[str] = (),
    action: str | None = None,
    outcome: str = Outcome.SUCCESS,
    **details: Any,
) -> None:
    """Move `step` to `status` and write it with `fields` (other columns the caller set,
    e.g. exit_code, error, log counters); audited as `action` when given; announced."""
    changed = step.move(status, now=now)
    fastsql.update(step, sorted(set(changed) | set(fields)))
    if action:
        audit.record(None, action, step, at=now, run=run.pk, outcome=outcome, **details)
    events.publish_step(step, run)


def skip_steps(steps: list[StepRun], *, now: datetime) -> None:
    """Steps that will not run (their stage was skipped or failed): one UPDATE for all of
    them, not announced one by one (their stage's event says it)."""
    if not steps:
        return
    for s in steps:
        s.move(StepStatus.SKIPPED, now=now)
    StepRun.objects.filter(pk__in=[s.pk for s in steps]).update(status=StepStatus.SKIPPED)


_CLAIMED = {
    "status": StepStatus.RUNNING,
    "finished_at": None,  # a retried attempt starts afresh
    "exit_code": None,
    "error": "",
}


def claim_queued(step_id: int, attempt: int, *, worker: str, now: datetime) -> bool:
    """A worker claims attempt `attempt` of a queued step: one conditional UPDATE, so a
    redelivered or duplicated task message is harmless — only one claim of (step, attempt)
    can succeed. Call with the run row locked; then `started`."""
    values = {**_CLAIMED, "started_at": now, "heartbeat_at": now, "worker": worker[:200]}
    where = {"id": step_id, "status": StepStatus.QUEUED, "attempt": attempt}
    return fastsql.update_where(StepRun, values, where) == 1


def claim_pending(step: StepRun, *, worker: str, now: datetime) -> bool:
    """Queue `step` and claim it for `worker` at once (no task message): one conditional
    UPDATE from (pending, attempt n) to (running, attempt n + 1), the same guarantee as a
    worker's claim. False if the row was not as expected. No "queued" event for the step:
    no transaction ever sees it queued. Then `started`."""
    attempt = step.attempt + 1
    values = {
        **_CLAIMED,
        "attempt": attempt,
        "queued_at": now,
        "started_at": now,
        "heartbeat_at": now,
        "worker": worker[:200],
    }
    where = {"id": step.pk, "status": StepStatus.PENDING, "attempt": step.attempt}
    if fastsql.update_where(StepRun, values, where) != 1:
        return False
    step.status, step.attempt, step.queued_at = StepStatus.RUNNING, attempt, now
    step.started_at, step.heartbeat_at, step.finished_at = now, now, None
    step.worker, step.exit_code, step.error = worker[:200], None, ""
    return True


def started(
    step: StepRun,
    stage_run: StageRun,
    run_row: Run,
    *,
    worker: str,
    now: datetime,
    writes: Writes | None = None,
) -> None:
    """A claimed attempt of `step` starts: its stage and its run are running. Audited and
    announced; the step row itself was written by the claim."""
    if stage_run.status == StageStatus.QUEUED:
        stage(stage_run, StageStatus.RUNNING, run=run_row, now=now, writes=writes)
    if run_row.status == RunStatus.QUEUED:
        run(run_row, RunStatus.RUNNING, now=now, action=None)
    audit.record(
        None, "step.start", step, at=now, run=run_row.pk, attempt=step.attempt, worker=worker
    )
    events.publish_step(step, run_row)


# --- gates ----------------------------------------------------------------------------


def gate_details(gate: Gate, run_row: Run) -> dict:
    """The run/stage/environment details every gate audit row carries."""
    return {
        "run": run_row.pk,
        "run_number": run_row.number,
        "pipeline": run_row.pipeline.slug,
        "stage": gate.stage_run.name,
        "environment": gate.environment.name,
    }


def gate(
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
    """Move `gate` (locked, with its run) to `status` with `reason`: a status change is
    audited ("gate.<status>"), any change announced. Raises IllegalTransition for a move
    GATE_MACHINE does not allow. Returns whether the status changed (always for a gate
    just created)."""
    previous = gate.status
    changed = created or status != previous
    if not changed and reason == gate.reason:
        return False
    if status != previous:
        GATE_MACHINE.check(f"gate {gate.pk}", previous, status)
    gate.status, gate.reason = status, reason
    fields = ["status", "reason"]
    if changed:
        gate.decided_at = now if status != GateStatus.WAITING else None
        fields.append("decided_at")
    fastsql.update(gate, fields)
    if changed:
        audit.record(
            actor,
            f"gate.{status}",
            gate,
            at=now,
            previous=None if created else previous,
            reason=reason,
            **gate_details(gate, run),
            **details,
        )
    events.publish_gate(gate, run)
    return changed


# --- report jobs ----------------------------------------------------------------------


def claim_report_job(job_id: int) -> bool:
    """A worker claims a queued report job (conditional UPDATE: a redelivered message never
    builds it twice)."""
    values = {"status": ReportJob.Status.RUNNING, "progress": 1, "error": ""}
    where = {"id": job_id, "status": ReportJob.Status.QUEUED}
    return fastsql.update_where(ReportJob, values, where) == 1


def report_job(job: ReportJob, status: str, *, now: datetime, fields: tuple[str, ...] = ()) -> None:
    """Move a report job (claimed by this worker) to done or failed, with `fields` the
    caller set (file, sha256, error, progress). Audited by the caller's verb."""
    ReportJob.MACHINE.check(f"report job {job.pk}", job.status, status)
    job.status, job.finished_at = status, now
    fastsql.update(job, sorted({"status", "finished_at", *fields}))


def change_request(
    request: ChangeRequest, status: str, *, now: datetime, fields: tuple[str, ...] = ()
) -> None:
    """Move a governance change request (locked by the caller) to `status`, with `fields`
    the caller set (decided_by, comment, justification, exception, applied_at, error).
    CHANGE_REQUEST_MACHINE decides which moves exist; audited by the caller's verb."""
    CHANGE_REQUEST_MACHINE.check(f"change request {request.pk}", request.status, status)
    request.status = status
    if status != "pending" and "decided_at" not in fields and request.decided_at is None:
        request.decided_at = now
    fastsql.update(request, sorted({"status", "decided_at", *fields}))

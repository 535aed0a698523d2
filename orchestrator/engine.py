"""The execution engine: advances a run by looking at the state of its stages and steps.

No Celery here. Callers (orchestrator.actions) hold the run row locked while the engine
works and get back the steps to hand to workers; they dispatch them after commit. A caller
that is itself a worker may ask for the first step that becomes ready to be claimed for it in
the same transaction (`claim_for`): that step goes from pending to running directly, with
its stage, audited and announced, and is returned instead of dispatched.

Rules:
- a pending stage whose needs all succeeded becomes ready; independent ready stages run in
  parallel;
- a ready stage that targets an environment first asks its gate (governance.gates.check);
  "waiting" parks the stage, "refused" blocks it and the run;
- a stage runs its steps one after the other; a failed step (retries used up) fails the
  stage;
- once anything failed, was blocked or canceled, no new stage starts: pending stages are
  skipped, running ones finish, then the run ends with the first bad outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from governance import audit

from . import events, fastsql
from .models import (
    Run,
    RunStatus,
    StageRun,
    StageStatus,
    StepRun,
    StepStatus,
)

BAD_STAGE = {StageStatus.FAILED, StageStatus.SKIPPED, StageStatus.CANCELED, StageStatus.BLOCKED}


@dataclass
class Dispatch:
    """A step to hand to a worker after commit."""

    step_id: int
    attempt: int
    countdown: float = 0.0


@dataclass
class Outcome:
    dispatch: list[Dispatch] = field(default_factory=list)
    finished: bool = False
    claimed: StepRun | None = None  # started for the caller's worker (see `advance`)


class _Writes:
    """Rows changed during one pass, each written once at the end: a stage that becomes
    queued and then running in the same pass costs one UPDATE, not two."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[StageRun, set[str]]] = {}

    def mark(self, stage: StageRun, fields: list[str]) -> None:
        if fields:
            self.rows.setdefault(stage.pk, (stage, set()))[1].update(fields)

    def save(self) -> None:
        for stage, fields in self.rows.values():
            fastsql.update(stage, sorted(fields))
        self.rows.clear()


def _skip(steps: list[StepRun]) -> None:
    """Steps that will not run: one UPDATE for all of them."""
    if steps:
        for step in steps:
            step.status = StepStatus.SKIPPED
        StepRun.objects.filter(pk__in=[s.pk for s in steps]).update(status=StepStatus.SKIPPED)


def _gate_check(stage: StageRun, now: datetime) -> tuple[str, str]:
    from governance import gates

    return gates.check(stage, now=now)


def queue_step(step: StepRun, run: Run, out: Outcome, *, countdown: float = 0.0) -> None:
    step.status = StepStatus.QUEUED
    step.attempt += 1
    step.heartbeat_at = None
    step.queued_at = timezone.now()
    step.save(update_fields=["status", "attempt", "heartbeat_at", "queued_at"])
    events.publish_step(step, run)
    out.dispatch.append(Dispatch(step.pk, step.attempt, countdown))


def start_step(
    step: StepRun,
    stage: StageRun,
    run: Run,
    *,
    worker: str,
    now: datetime,
    writes: _Writes | None = None,
) -> None:
    """A claimed attempt of `step` starts: its stage and run are running. Audited and
    announced; the step row itself was updated by the claim."""
    if stage.status == StageStatus.QUEUED:
        fields = stage.set_status(StageStatus.RUNNING, now=now, save=False)
        if writes is not None:
            writes.mark(stage, fields)
        else:
            fastsql.update(stage, fields)
        audit.record(None, "stage.running", stage, at=now, run=run.pk)
        events.publish_stage(stage, run)
    if run.status == RunStatus.QUEUED:
        fastsql.update(run, run.set_status(RunStatus.RUNNING, now=now, save=False))
        events.publish_run(run)
    audit.record(None, "step.start", step, at=now, run=run.pk, attempt=step.attempt, worker=worker)
    events.publish_step(step, run)


def _claim_pending(
    step: StepRun, stage: StageRun, run: Run, out: Outcome, worker: str, writes: _Writes
) -> bool:
    """Queue `step` and claim it for `worker` at once (no task message): one conditional
    UPDATE from (pending, attempt n) to (running, attempt n + 1), the same guarantee as a
    worker's claim — this attempt is started once. False if the row was not as expected."""
    now = timezone.now()
    attempt = step.attempt + 1
    claimed = fastsql.update_where(
        StepRun,
        {
            "status": StepStatus.RUNNING,
            "attempt": attempt,
            "queued_at": now,
            "started_at": now,
            "finished_at": None,
            "heartbeat_at": now,
            "worker": worker[:200],
            "exit_code": None,
            "error": "",
        },
        {"id": step.pk, "status": StepStatus.PENDING, "attempt": step.attempt},
    )
    if claimed != 1:
        return False
    # No "queued" event for the step: no transaction ever sees it queued. Its stage's
    # transitions (queued, running) are each audited and announced.
    step.status, step.attempt, step.queued_at = StepStatus.RUNNING, attempt, now
    step.started_at, step.heartbeat_at, step.finished_at = now, now, None
    step.worker, step.exit_code, step.error = worker[:200], None, ""
    step.stage = stage
    start_step(step, stage, run, worker=worker, now=now, writes=writes)
    out.claimed = step
    return True


def advance(
    run: Run,
    *,
    now: datetime | None = None,
    stages: list[StageRun] | None = None,
    steps: list[StepRun] | None = None,
    claim_for: str = "",
) -> Outcome:
    """Bring `run` (locked by the caller) one consistent step forward.

    `stages` (all of the run's) and `steps` (at least those of the stages that have not
    ended), read after the lock, spare the engine reading them again. With `claim_for` (a
    worker's name), the first step that becomes ready without a countdown is claimed for
    that worker here and returned as `Outcome.claimed`; the others are dispatched as usual."""
    now = now or timezone.now()
    out = Outcome()
    if run.is_terminal:
        return out
    if stages is None or steps is None:
        stages = list(run.stages.select_related("environment").order_by("position"))
        open_stages = [s.pk for s in stages if not s.is_terminal]
        steps = list(StepRun.objects.filter(stage_id__in=open_stages).order_by("position"))
    steps_by_stage: dict[int, list[StepRun]] = {s.pk: [] for s in stages}
    for stage in stages:
        stage.run = run  # audit names and events: no lazy reads
    by_pk = {s.pk: s for s in stages}
    for step in sorted(steps, key=lambda s: s.position):
        steps_by_stage[step.stage_id].append(step)
        step.stage = by_pk[step.stage_id]
    by_name = {s.name: s for s in stages}
    writes = _Writes()

    def set_stage(stage: StageRun, status: str, reason: str = "") -> None:
        writes.mark(stage, stage.set_status(status, reason=reason, now=now, save=False))
        audit.record(None, f"stage.{status}", stage, at=now, run=run.pk, reason=reason)
        events.publish_stage(stage, run)

    changed = True
    while changed:
        changed = False
        trouble = any(s.status in BAD_STAGE - {StageStatus.SKIPPED} for s in stages)
        for stage in stages:
            if stage.is_terminal:
                continue
            own = steps_by_stage[stage.pk]
            if stage.status in (StageStatus.PENDING, StageStatus.WAITING):
                needs = [by_name[n] for n in stage.needs if n in by_name]
                if trouble or any(n.status in BAD_STAGE for n in needs):
                    why = "an earlier stage did not succeed"
                    set_stage(stage, StageStatus.SKIPPED, why)
                    _skip([s for s in own if not s.is_terminal])
                    changed = True
                    continue
                if not all(n.status == StageStatus.SUCCEEDED for n in needs):
                    continue
                if stage.environment_id is not None and stage.environment.protected:
                    writes.save()  # the gate sees the rows as they are now
                    verdict, reason = _gate_check(stage, now)
                    if verdict == "waiting":
                        if stage.status != StageStatus.WAITING:
                            set_stage(stage, StageStatus.WAITING, reason)
                            changed = True
                        continue
                    if verdict != "open":
                        set_stage(stage, StageStatus.BLOCKED, reason or "the gate refused")
                        changed = True
                        continue
                set_stage(stage, StageStatus.QUEUED)
                changed = True
            if stage.status in (StageStatus.QUEUED, StageStatus.RUNNING):
                if any(s.status in (StepStatus.FAILED, StepStatus.CANCELED) for s in own):
                    failed = next((s for s in own if s.status == StepStatus.FAILED), None)
                    reason = f"step {failed.name} failed" if failed else "canceled"
                    status = StageStatus.FAILED if failed else StageStatus.CANCELED
                    _skip([s for s in own if s.status == StepStatus.PENDING])
                    set_stage(stage, status, reason)
                    changed = True
                    continue
                if all(s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) for s in own):
                    set_stage(stage, StageStatus.SUCCEEDED)
                    changed = True
                    continue
                active = [s for s in own if s.status in (StepStatus.QUEUED, StepStatus.RUNNING)]
                if not active:
                    nxt = next(s for s in own if s.status == StepStatus.PENDING)
                    if not (
                        claim_for
                        and out.claimed is None
                        and _claim_pending(nxt, stage, run, out, claim_for, writes)
                    ):
                        queue_step(nxt, run, out)

    writes.save()
    _settle_run(run, stages, now)
    out.finished = run.is_terminal
    return out


def _settle_run(run: Run, stages: list[StageRun], now: datetime) -> None:
    statuses = {s.status for s in stages}
    if all(s.is_terminal for s in stages):
        if StageStatus.FAILED in statuses:
            failed = next(s for s in stages if s.status == StageStatus.FAILED)
            new, reason = RunStatus.FAILED, f"stage {failed.name}: {failed.reason}"
        elif StageStatus.BLOCKED in statuses:
            blocked = next(s for s in stages if s.status == StageStatus.BLOCKED)
            new, reason = RunStatus.BLOCKED, f"stage {blocked.name}: {blocked.reason}"
        elif StageStatus.CANCELED in statuses:
            new, reason = RunStatus.CANCELED, run.reason or "canceled"
        else:
            new, reason = RunStatus.SUCCEEDED, ""
    elif statuses & {StageStatus.QUEUED, StageStatus.RUNNING}:
        new, reason = RunStatus.RUNNING, ""
    elif StageStatus.WAITING in statuses:
        waiting = next(s for s in stages if s.status == StageStatus.WAITING)
        new, reason = RunStatus.WAITING, f"stage {waiting.name} waits at its gate"
    else:
        new, reason = RunStatus.RUNNING, ""
    if new != run.status or (reason and reason != run.reason and new in (RunStatus.WAITING,)):
        if new == run.status:
            run.reason = reason
            run.save(update_fields=["reason"])
        else:
            run.set_status(new, reason=reason, now=now)
            audit.record(None, f"run.{new}", run, at=now, reason=reason)
        events.publish_run(run)

"""The execution engine: advances a run by looking at the state of its stages and steps.

No Celery here. Callers (orchestrator.actions) hold the run row locked while the engine
works and get back the steps to hand to workers; they dispatch them after commit.

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

from . import events
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


def advance(run: Run, *, now: datetime | None = None) -> Outcome:
    """Bring `run` (locked by the caller) one consistent step forward."""
    now = now or timezone.now()
    out = Outcome()
    if run.is_terminal:
        return out
    stages = list(run.stages.select_related("environment").order_by("position"))
    steps_by_stage: dict[int, list[StepRun]] = {s.pk: [] for s in stages}
    for step in StepRun.objects.filter(stage__run=run).order_by("position"):
        steps_by_stage[step.stage_id].append(step)
    by_name = {s.name: s for s in stages}

    def set_stage(stage: StageRun, status: str, reason: str = "") -> None:
        stage.set_status(status, reason=reason, now=now)
        audit.record(None, f"stage.{status}", stage, at=now, run=run.pk, reason=reason)
        events.publish_stage(stage, run)

    changed = True
    while changed:
        changed = False
        trouble = any(s.status in BAD_STAGE - {StageStatus.SKIPPED} for s in stages)
        for stage in stages:
            if stage.is_terminal:
                continue
            steps = steps_by_stage[stage.pk]
            if stage.status in (StageStatus.PENDING, StageStatus.WAITING):
                needs = [by_name[n] for n in stage.needs if n in by_name]
                if trouble or any(n.status in BAD_STAGE for n in needs):
                    why = "an earlier stage did not succeed"
                    set_stage(stage, StageStatus.SKIPPED, why)
                    for step in steps:
                        if not step.is_terminal:
                            step.status = StepStatus.SKIPPED
                            step.save(update_fields=["status"])
                    changed = True
                    continue
                if not all(n.status == StageStatus.SUCCEEDED for n in needs):
                    continue
                if stage.environment_id is not None and stage.environment.protected:
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
                if any(s.status in (StepStatus.FAILED, StepStatus.CANCELED) for s in steps):
                    failed = next((s for s in steps if s.status == StepStatus.FAILED), None)
                    reason = f"step {failed.name} failed" if failed else "canceled"
                    status = StageStatus.FAILED if failed else StageStatus.CANCELED
                    for step in steps:
                        if step.status == StepStatus.PENDING:
                            step.status = StepStatus.SKIPPED
                            step.save(update_fields=["status"])
                    set_stage(stage, status, reason)
                    changed = True
                    continue
                if all(s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) for s in steps):
                    set_stage(stage, StageStatus.SUCCEEDED)
                    changed = True
                    continue
                active = [s for s in steps if s.status in (StepStatus.QUEUED, StepStatus.RUNNING)]
                if not active:
                    nxt = next(s for s in steps if s.status == StepStatus.PENDING)
                    queue_step(nxt, run, out)

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

"""The execution engine: advances a run by looking at the state of its stages and steps.

No Celery and no governance here. Its one caller, `orchestrator.actions.advance`, holds the
run row locked inside a transition block, passes the gate check in (`gate_check`), and gets
back the steps to hand to workers; it dispatches them after commit. A caller
that is itself a worker may ask for the first step that becomes ready to be claimed for it in
the same transaction (`claim_for`): that step goes from pending to running directly, with
its stage, audited and announced, and is returned instead of dispatched.

Rules:
- a pending stage whose needs all succeeded becomes ready; independent ready stages run in
  parallel;
- a ready stage that targets a protected environment first asks its gate (`gate_check`,
  governance.gates.check bound to the acting user);
  "waiting" parks the stage, "refused" blocks it and the run;
- a stage runs its steps one after the other; a failed step (retries used up) fails the
  stage;
- once anything failed, was blocked or canceled, no new stage starts: pending stages are
  skipped, running ones finish, then the run ends with the first bad outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from . import lifecycle
from .lifecycle import Writes
from .models import Run, RunStatus, StageRun, StageStatus, StepRun, StepStatus

BAD_STAGE = {StageStatus.FAILED, StageStatus.SKIPPED, StageStatus.CANCELED, StageStatus.BLOCKED}

# (stage run, now) -> ("open" | "waiting" | "refused", reason); called with the run locked.
GateCheck = Callable[[StageRun, datetime], tuple[str, str]]


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


def queue_step(step: StepRun, run: Run, out: Outcome, *, countdown: float = 0.0) -> None:
    """The step's next attempt is queued, to be dispatched after commit."""
    lifecycle.step(step, StepStatus.QUEUED, run=run, now=timezone.now())
    out.dispatch.append(Dispatch(step.pk, step.attempt, countdown))


def _claim_pending(
    step: StepRun, stage: StageRun, run: Run, out: Outcome, worker: str, writes: Writes
) -> bool:
    now = timezone.now()
    if not lifecycle.claim_pending(step, worker=worker, now=now):
        return False
    step.stage = stage
    lifecycle.started(step, stage, run, worker=worker, now=now, writes=writes)
    out.claimed = step
    return True


def advance(
    run: Run,
    *,
    gate_check: GateCheck,
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
    writes = Writes()

    def set_stage(stage: StageRun, status: str, reason: str = "") -> None:
        lifecycle.stage(stage, status, run=run, now=now, reason=reason, writes=writes)

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
                    lifecycle.skip_steps([s for s in own if not s.is_terminal], now=now)
                    changed = True
                    continue
                if not all(n.status == StageStatus.SUCCEEDED for n in needs):
                    continue
                if stage.environment_id is not None and stage.environment.protected:
                    writes.save()  # the gate sees the rows as they are now
                    verdict, reason = gate_check(stage, now)
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
                    lifecycle.skip_steps(
                        [s for s in own if s.status == StepStatus.PENDING], now=now
                    )
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
    lifecycle.run(run, new, now=now, reason=reason)

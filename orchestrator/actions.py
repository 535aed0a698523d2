"""Verbs that change orchestration state. Each runs in one transaction, writes its audit
row(s) through governance.audit.record and publishes live events after commit; work for the
workers is dispatched after commit too (a task never sees uncommitted rows).

Every change of run state runs in `transition()` — one transaction whose audit rows and
events are written at its end in one go (audit.batch, events.batch), so the audit chain
head is locked only from there to the commit, never across a policy evaluation — and moves
the run forward through the one verb `advance()`. The governance verbs (approve, reject,
override, gate housekeeping) use the same two."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import hmac
import json
import logging
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from guardian.shortcuts import assign_perm

from governance import audit, gates, notifications, secrets
from governance.models import Environment, Outcome

from . import artifacts as artifact_store
from . import engine, events, lifecycle, logarchive, spec
from .kernel import fastsql
from .kernel.queue import enqueue
from .models import (
    RUN_TERMINAL,
    STEP_TERMINAL,
    LogArchive,
    LogChunk,
    Pipeline,
    PipelineVersion,
    Run,
    RunStatus,
    StageRun,
    StageStatus,
    StepRun,
    StepStatus,
    Team,
    Trigger,
    WebhookDelivery,
)

logger = logging.getLogger(__name__)


class ActionError(Exception):
    """A refused action, with a message for the person who asked."""


# --- dispatching ----------------------------------------------------------------------


# Who receives steps to execute: Celery (`dispatch_step`) unless a caller — the demo's
# history seeder, which simulates execution with a travelled clock — says otherwise.
_dispatch_override: contextvars.ContextVar = contextvars.ContextVar("dispatch", default=None)


@contextlib.contextmanager
def dispatching_to(func):
    """Within the block, hand steps to `func(step_id, attempt, countdown)` instead of Celery."""
    token = _dispatch_override.set(func)
    try:
        yield
    finally:
        _dispatch_override.reset(token)


def dispatch_step(step_id: int, attempt: int, countdown: float = 0) -> None:
    """Hand one attempt of a step to a worker (called after commit), by task name."""
    try:
        enqueue(
            "clearway.execute_step",
            (step_id, attempt),
            countdown=countdown or None,
            queue=settings.CLEARWAY.get("STEP_QUEUE") or None,
        )
    except Exception:  # broker down: the reaper re-dispatches queued steps later
        logger.exception("could not dispatch step %s attempt %s", step_id, attempt)


def _dispatcher():
    override = _dispatch_override.get()
    return override if override is not None else dispatch_step


def dispatch_after_commit(outcome: engine.Outcome) -> None:
    if not outcome.dispatch:
        return
    items = list(outcome.dispatch)
    send = _dispatcher()

    def go() -> None:
        if any(not item.countdown for item in items):
            # The transaction's events first: the worker that takes the step publishes the
            # run's next ones from its own process, and must not overtake them.
            events.wait_sent()
        for item in items:
            send(item.step_id, item.attempt, item.countdown)

    transaction.on_commit(go)


@contextlib.contextmanager
def transition():
    """One transaction whose audit rows and events are appended when it ends (the events
    first: the run row is locked by then; then the audit chain head, held until commit).
    Every change of run, stage, step or gate state runs inside one; nested, it joins the
    outer block."""
    with transaction.atomic(), audit.batch(), events.batch():
        yield


def in_transition() -> bool:
    return audit.batching_now() and events.batching_now()


def _lock_run_of_step(step_id: int, known: Run | None = None) -> Run | None:
    """The run of a step, locked (only the run row: FOR UPDATE OF), with its pipeline.
    `known`: the run as the caller (the step's executor) already has it, pipeline included —
    then only the run row is read again."""
    if known is not None and Run.pipeline.is_cached(known):
        rows = fastsql.select(Run, "id = %s", [known.pk], lock=True)
        if not rows:
            return None
        run = rows[0]
        run.pipeline = known.pipeline  # its slug names the run in the audit log
        return run
    rows = fastsql.select(
        Run,
        "id = (SELECT s.run_id FROM orchestrator_stagerun s JOIN orchestrator_steprun t"
        " ON t.stage_id = s.id WHERE t.id = %s)",
        [step_id],
        lock=True,
    )
    if not rows:
        return None
    run = rows[0]
    [run.pipeline] = fastsql.select(Pipeline, "id = %s", [run.pipeline_id])
    return run


def _stages_and_steps(run: Run, step_id: int) -> tuple[list[StageRun], list[StepRun]]:
    """The stages of a run (locked by the caller), the steps of those that have not ended —
    all the engine looks at — and step `step_id` whatever its stage."""
    stages = fastsql.select(StageRun, "run_id = %s", [run.pk], order_by="position")
    for stage in stages:
        stage.run = run  # as run.stages would: no lazy read of the run
    # Environments only for the stages that may still start or run (the gate, the step's
    # environment variables): most pipelines have none, and the join costs on every finish.
    wanted = {s.environment_id for s in stages if s.environment_id and not s.is_terminal}
    if wanted:
        environments = Environment.objects.in_bulk(wanted)
        for stage in stages:
            if stage.environment_id in environments:
                stage.environment = environments[stage.environment_id]
    # By stage id, not by a join on the run: an index scan whatever the table's size. Ordered
    # by position explicitly: StepRun's default ordering joins stage and run to sort.
    open_stages = [s.pk for s in stages if not s.is_terminal]
    marks = ", ".join(["%s"] * len(open_stages))
    where = f"stage_id IN ({marks}) OR id = %s" if open_stages else "id = %s"
    steps = fastsql.select(StepRun, where, [*open_stages, step_id], order_by="position")
    return stages, steps


def workspace_for(run_id: int) -> Path:
    return Path(settings.CLEARWAY["WORKSPACE_ROOT"]) / f"run-{run_id}"


def _remove_workspace_after_commit(run: Run) -> None:
    path = workspace_for(run.pk)

    def remove() -> None:
        shutil.rmtree(path, ignore_errors=True)
        for marker in artifact_store.received_markers(path):
            marker.unlink(missing_ok=True)

    transaction.on_commit(remove)


ARCHIVE_GRACE_SECONDS = 15


def _archive_logs_after_commit(run: Run) -> None:
    """The run has ended: its step logs move to storage (the `clearway.archive_run_logs`
    task; the hourly housekeeping catches a lost message)."""
    if str(settings.CLEARWAY.get("LOG_ARCHIVE", "on")) == "off":
        return
    run_id = run.pk

    def send() -> None:
        try:
            # After a grace period: a canceled step's executor may still write its last
            # lines (it notices within a second, then stops its process group).
            # On the step queue: the workers that run steps are the ones with the artifact
            # storage at hand (the run ended in one of them).
            enqueue(
                "clearway.archive_run_logs",
                (run_id,),
                countdown=ARCHIVE_GRACE_SECONDS,
                queue=settings.CLEARWAY.get("STEP_QUEUE") or None,
            )
        except Exception:  # broker down: artifact housekeeping archives it later
            logger.exception("could not queue the log archive of run %s", run_id)

    transaction.on_commit(send)


def advance(
    run: Run,
    *,
    actor=None,
    now: datetime | None = None,
    stages: list[StageRun] | None = None,
    steps: list[StepRun] | None = None,
    claim_for: str = "",
) -> engine.Outcome:
    """The one way a run moves forward: trigger, finish, cancel, approve, reject, override,
    gate housekeeping and re-checks all end here. Call it inside `transition()` with the run
    row locked. The engine decides (gates checked on `actor`'s behalf); the steps that
    became ready are dispatched after commit; a run that ended, however it ended, has its
    workspace removed after commit."""
    if not in_transition():
        raise RuntimeError("advance() runs inside transition(), with the run row locked")
    check = functools.partial(_check_gate, actor=actor)
    was_failed = run.status == RunStatus.FAILED
    outcome = engine.advance(
        run, gate_check=check, now=now, stages=stages, steps=steps, claim_for=claim_for
    )
    dispatch_after_commit(outcome)
    if run.is_terminal:
        _remove_workspace_after_commit(run)
        if run.status == RunStatus.FAILED and not was_failed:
            # Past a protected environment's gate: its channels and the triggerer are told
            # (queued after commit; a lost notification never holds the run).
            notifications.run_failed(run)
        _archive_logs_after_commit(run)
    return outcome


def archive_logs(run_id: int, *, now: datetime | None = None) -> dict:
    """Move an ended run's step logs to storage (orchestrator.logarchive). Each step's
    archive is written and read back first; then one transition, with the run row locked,
    checks that no chunk came in meanwhile, saves the LogArchive rows, deletes the chunks
    and records it in the audit log. A step whose archive could not be written keeps its
    chunks (the housekeeping tries again)."""
    run = Run.objects.select_related("pipeline", "version").filter(pk=run_id).first()
    if run is None or not run.is_terminal:
        return {"archived": 0, "failed": 0}
    steps = list(
        StepRun.objects.filter(
            stage__run_id=run_id, log_archive__isnull=True, log_lines__gt=0
        ).order_by("stage__position", "position")
    )
    written: list[tuple[StepRun, logarchive.Built, str]] = []
    failed = []
    for step in steps:
        try:
            built = logarchive.build(step)
            key = logarchive.write_verified(step, run_id, built)
        except logarchive.ArchiveError as exc:
            logger.warning("log of step %s not archived: %s", step.pk, exc)
            failed.append(step.pk)
            continue
        written.append((step, built, key))
    if not written:
        return {"archived": 0, "failed": len(failed)}
    now = now or timezone.now()
    expires = artifact_store.expiry(run, now)
    kept: list[str] = []
    archived = []
    try:
        with transition():
            Run.objects.select_for_update(of=("self",)).filter(pk=run_id).first()
            for step, built, key in written:
                chunks = LogChunk.objects.filter(step=step)
                current = chunks.order_by("-offset").values_list("offset", flat=True).first()
                if chunks.count() != built.chunk_count or (current or 0) != max(
                    built.last_offset, 0
                ):
                    continue  # a late chunk: the next round archives it whole
                LogArchive.objects.create(
                    step=step,
                    storage_key=key,
                    line_count=built.line_count,
                    size=built.size,
                    compressed_size=len(built.data),
                    sha256=built.sha256,
                    index_every=logarchive.index_every(),
                    offsets=built.offsets,
                    created_at=now,
                    expires_at=expires,
                )
                chunks.delete()
                kept.append(key)
                archived.append(
                    {"step": step.pk, "lines": built.line_count, "sha256": built.sha256}
                )
            if archived:
                audit.record(None, "run.logs_archived", run, at=now, steps=archived)
    except BaseException:
        kept.clear()  # rolled back: none of the written files is referenced
        raise
    finally:
        for _, _, key in written:
            if key not in kept:
                logarchive.delete_quietly(key)
    return {"archived": len(archived), "failed": len(failed)}


def runs_with_unarchived_logs(*, older_than: timedelta = timedelta(minutes=10)) -> list[int]:
    """Ended runs whose logs are still in the database (a lost archive message)."""
    if str(settings.CLEARWAY.get("LOG_ARCHIVE", "on")) == "off":
        return []
    cutoff = timezone.now() - older_than
    return list(
        StepRun.objects.filter(
            stage__run__status__in=list(RUN_TERMINAL),
            stage__run__finished_at__lt=cutoff,
            log_archive__isnull=True,
            log_lines__gt=0,
        )
        .order_by("stage__run_id")
        .values_list("stage__run_id", flat=True)
        .distinct()[:200]
    )


def _check_gate(stage: StageRun, now: datetime, *, actor) -> tuple[str, str]:
    return gates.check(stage, now=now, actor=actor)


def advance_run(run_id: int, *, actor=None, now: datetime | None = None) -> Run | None:
    """Re-examine a run by id (the `clearway.advance_run` task, the reaper, re-checks)."""
    with transition():
        run = Run.objects.select_for_update(of=("self",)).filter(pk=run_id).first()
        if run is None or run.is_terminal:
            return run
        advance(run, actor=actor, now=now)
        return run


# --- pipelines ------------------------------------------------------------------------


def _known_environments() -> list[str]:
    return list(Environment.objects.values_list("name", flat=True))


def _parse(definition: str, team: Team, actor=None) -> dict:
    """The spec, checked against what exists: environments, the step limits' maximum, the
    secrets the team's pipelines may ask for. A step asking for a secret it may not have is
    refused and the attempt audited (names and rules only)."""
    try:
        return spec.parse_pipeline(
            definition,
            environments=_known_environments(),
            limits_max=settings.CLEARWAY["STEP_LIMITS_MAX"],
            secrets=secrets.scopes_for_team(team),
        )
    except spec.SpecError as exc:
        refused = [e for e in exc.errors if ".secrets[" in str(e.get("path") or "")]
        if refused:
            with transaction.atomic():
                audit.record(
                    actor,
                    "pipeline.secrets_refused",
                    ("team", str(team.pk), team.slug),
                    outcome=Outcome.FAILURE,
                    errors=[
                        {"message": e["message"], "line": e.get("line"), "path": e.get("path")}
                        for e in refused
                    ],
                )
        raise


def create_pipeline(
    *, actor, slug: str, definition: str, team: Team, now: datetime | None = None
) -> Pipeline:
    parsed = _parse(definition, team, actor)
    now = now or timezone.now()
    with transaction.atomic():
        if Pipeline.objects.filter(slug=slug).exists():
            raise ActionError(f'a pipeline with the slug "{slug}" already exists')
        pipeline = Pipeline.objects.create(
            slug=slug,
            name=parsed["name"],
            description=parsed.get("description") or "",
            team=team,
            created_at=now,
            updated_at=now,
        )
        version = PipelineVersion.objects.create(
            pipeline=pipeline,
            number=1,
            definition=definition,
            spec=parsed,
            author=actor,
            created_at=now,
        )
        pipeline.current_version = version
        pipeline.save(update_fields=["current_version"])
        _grant_team(pipeline)
        _sync_schedule(pipeline)
        audit.record(actor, "pipeline.create", pipeline, at=now, version=1, team=team.slug)
    return pipeline


def _grant_team(pipeline: Pipeline) -> None:
    for perm in ("view_pipeline", "run_pipeline", "change_pipeline"):
        assign_perm(f"orchestrator.{perm}", pipeline.team.group, pipeline)


def update_pipeline(
    pipeline: Pipeline, *, actor, definition: str, now: datetime | None = None
) -> PipelineVersion:
    parsed = _parse(definition, pipeline.team, actor)
    now = now or timezone.now()
    with transaction.atomic():
        # NO KEY: see trigger_run.
        pipeline = Pipeline.objects.select_for_update(no_key=True).get(pk=pipeline.pk)
        current = pipeline.current_version
        if current is not None and current.definition == definition:
            return current
        number = (current.number if current else 0) + 1
        version = PipelineVersion.objects.create(
            pipeline=pipeline,
            number=number,
            definition=definition,
            spec=parsed,
            author=actor,
            created_at=now,
        )
        pipeline.current_version = version
        pipeline.name = parsed["name"]
        pipeline.description = parsed.get("description") or ""
        pipeline.updated_at = now
        pipeline.save(update_fields=["current_version", "name", "description", "updated_at"])
        _sync_schedule(pipeline)
        audit.record(actor, "pipeline.update", pipeline, at=now, version=number)
    return version


def _sync_schedule(pipeline: Pipeline) -> None:
    """Keep the pipeline's cron schedule (django-celery-beat) in step with its spec."""
    name = f"pipeline:{pipeline.slug}"
    cron = (pipeline.current_version.spec or {}).get("schedule")
    if not cron:
        PeriodicTask.objects.filter(name=name).delete()
        return
    minute, hour, dom, month, dow = cron.split()
    schedule, _ = CrontabSchedule.objects.get_or_create(
        minute=minute,
        hour=hour,
        day_of_month=dom,
        month_of_year=month,
        day_of_week=dow,
        timezone="UTC",
    )
    PeriodicTask.objects.update_or_create(
        name=name,
        defaults={
            "task": "clearway.trigger_scheduled_run",
            "crontab": schedule,
            "interval": None,
            "args": json.dumps([pipeline.pk]),
            "enabled": True,
        },
    )


# --- runs -----------------------------------------------------------------------------


def trigger_run(
    pipeline: Pipeline,
    *,
    actor,
    parameters: dict | None = None,
    trigger: str = Trigger.MANUAL,
    now: datetime | None = None,
    retry_of: Run | None = None,
    version: PipelineVersion | None = None,
) -> Run:
    """Create a run of the pipeline's current version and start it. Raises
    spec.ParameterError for bad parameters (nothing is saved)."""
    now = now or timezone.now()
    version = version or pipeline.current_version
    if version is None:
        raise ActionError("the pipeline has no definition yet")
    params = spec.validate_parameters(version.spec, parameters or {})
    envs = {e.name: e for e in Environment.objects.all()}
    with transition():
        # FOR NO KEY UPDATE, not FOR UPDATE: a worker's commit takes FOR KEY SHARE on this
        # row (PostgreSQL re-checks a run's pipeline foreign key when the run row was updated
        # twice in one transaction) while it holds the audit chain head we want next — with
        # FOR UPDATE that is a deadlock.
        locked = Pipeline.objects.select_for_update(no_key=True).get(pk=pipeline.pk)
        number = locked.next_run_number
        locked.next_run_number = number + 1
        locked.save(update_fields=["next_run_number"])
        run = Run.objects.create(
            pipeline=pipeline,
            version=version,
            number=number,
            trigger=trigger,
            triggered_by=actor if getattr(actor, "pk", None) else None,
            parameters=params,
            created_at=now,
            retry_of=retry_of,
        )
        stages, steps = _create_stages(run, version.spec, envs)
        audit.record(
            actor,
            "run.trigger",
            run,
            at=now,
            trigger=trigger,
            parameters=params,
            version=version.number,
            retry_of=retry_of.pk if retry_of else None,
        )
        events.publish_run(run)
        # The new rows are this transaction's: no other one sees them before the commit.
        advance(run, actor=actor, now=now, stages=stages, steps=steps)
    return run


def _create_stages(run: Run, parsed: dict, envs: dict) -> tuple[list[StageRun], list[StepRun]]:
    stages = []
    for position, stage_spec in enumerate(parsed["stages"]):
        env_name = stage_spec.get("environment")
        if env_name and env_name not in envs:
            raise ActionError(f'stage {stage_spec["name"]}: environment "{env_name}" is gone')
        stages.append(
            StageRun(
                run=run,
                name=stage_spec["name"],
                position=position,
                needs=list(stage_spec.get("needs") or []),
                environment=envs.get(env_name),
            )
        )
    fastsql.insert_many(stages)  # one INSERT; the ids come back (PostgreSQL, SQLite)
    steps = [
        StepRun(
            stage=stage,
            name=step_spec["name"],
            position=step_position,
            kind=step_spec["type"],
            config=step_spec,
            max_attempts=1 + int(step_spec.get("retries") or 0),
        )
        for stage, stage_spec in zip(stages, parsed["stages"], strict=True)
        for step_position, step_spec in enumerate(stage_spec["steps"])
    ]
    fastsql.insert_many(steps)
    return stages, steps


def cancel_run(run: Run, *, actor, reason: str = "", now: datetime | None = None) -> Run:
    """Cancel what has not finished. Running steps are marked canceled here; their executor
    notices on its next status poll and kills the whole process group."""
    now = now or timezone.now()
    with transition():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.is_terminal:
            raise ActionError(f"run #{run.number} already ended ({run.status})")
        reason = reason or (f"canceled by {actor}" if actor else "canceled")
        for stage in run.stages.all():
            if stage.is_terminal:
                continue
            for step in stage.steps.all():
                if step.status not in STEP_TERMINAL:
                    step.error = step.error or reason
                    lifecycle.step(step, StepStatus.CANCELED, run=run, now=now, fields=["error"])
            lifecycle.stage(stage, StageStatus.CANCELED, run=run, now=now, reason=reason)
        gates.close_for_run(run, now=now, actor=actor)
        lifecycle.run(
            run, RunStatus.CANCELED, now=now, reason=reason, actor=actor, action="run.cancel"
        )
        advance(run, actor=actor, now=now)  # the run has ended: workspace, nothing to start
    return run


def retry_run(run: Run, *, actor, now: datetime | None = None) -> Run:
    if not run.is_terminal:
        raise ActionError(f"run #{run.number} is still {run.status}; cancel it first")
    return trigger_run(
        run.pipeline,
        actor=actor,
        parameters=run.parameters,
        trigger=Trigger.MANUAL,
        now=now,
        retry_of=run,
        version=run.version,
    )


# --- steps (called by the executor) ---------------------------------------------------


def claim_step(step_id: int, attempt: int, *, worker: str) -> StepRun | None:
    """Claim a queued step for this worker. The conditional UPDATE makes a redelivered or
    duplicated task message harmless: only one claim of (step, attempt) can succeed. It runs
    with the run row locked, like every other change of a step's status, so the run's other
    writers never see a half-made claim."""
    with transition():
        run = _lock_run_of_step(step_id)
        if run is None:
            return None
        now = timezone.now()
        if not lifecycle.claim_queued(step_id, attempt, worker=worker, now=now):
            return None
        # Hand the rows their relations: audit names (str()), events and the executor's
        # environment read them, each read otherwise one more query.
        [step] = fastsql.select(StepRun, "id = %s", [step_id])
        [step.stage] = fastsql.select(StageRun, "id = %s", [step.stage_id])
        if step.stage.environment_id:
            step.stage.environment = Environment.objects.get(pk=step.stage.environment_id)
        step.stage.run = run
        lifecycle.started(step, step.stage, run, worker=worker, now=now)
    return step


def finish_step(
    step_id: int,
    attempt: int,
    *,
    succeeded: bool,
    exit_code: int | None = None,
    error: str = "",
    now: datetime | None = None,
    log=None,
    artifacts=None,
) -> StepRun | None:
    """Record a step's outcome and advance the run. A failure with attempts left re-queues
    the step with backoff. Ignored when the step is no longer this attempt's (canceled,
    reaped) — the first word wins. `log` (the step's executors.LogWriter) writes its last
    lines in the same transaction; so are `artifacts` (unsaved Artifact rows whose files
    are stored) saved, or their files deleted when the outcome is refused."""
    step, _ = _finish(
        step_id, attempt, succeeded, exit_code, error, now, log, "", artifacts=artifacts
    )
    return step


def finish_step_and_claim_next(
    step_id: int,
    attempt: int,
    *,
    worker: str,
    succeeded: bool,
    exit_code: int | None = None,
    error: str = "",
    log=None,
    on_claimed: Callable[[StepRun], None] | None = None,
    artifacts=None,
) -> StepRun | None:
    """finish_step, and in the same transaction claim for `worker` the first step of the run
    that becomes ready (without a countdown) — returned, to be executed by the caller right
    away. Other ready steps are dispatched to workers as usual. `artifacts` (collected by
    the executor) are saved with the outcome, or discarded if it is refused or rolled back.

    `on_claimed(step)` is called with the claimed step inside the transaction, before its
    commit: the executor starts the step's sandbox there, held at a barrier, so that its
    start overlaps the commit (executors.prestart). It must not write to the database; if
    this raises, nothing is claimed (the caller abandons what it started)."""
    _, claimed = _finish(
        step_id, attempt, succeeded, exit_code, error, None, log, worker, on_claimed, artifacts
    )
    return claimed


def _finish(
    step_id: int,
    attempt: int,
    succeeded: bool,
    exit_code: int | None,
    error: str,
    now: datetime | None,
    log,
    claim_for: str,
    on_claimed: Callable[[StepRun], None] | None = None,
    artifacts=None,
) -> tuple[StepRun | None, StepRun | None]:
    now = now or timezone.now()
    known = log.step.stage.run if log is not None and log.step.pk == step_id else None
    kept = False
    try:
        with transition():
            step, claimed, saved = _finish_locked(
                step_id,
                attempt,
                succeeded,
                exit_code,
                error,
                now,
                log,
                claim_for,
                known,
                artifacts or [],
            )
            if on_claimed is not None and claimed is not None:
                on_claimed(claimed)
        kept = saved  # committed
    finally:
        if artifacts and not kept:  # refused, or rolled back: nothing half-stored
            artifact_store.discard(artifacts)
    return step, claimed


def _finish_locked(
    step_id, attempt, succeeded, exit_code, error, now, log, claim_for, known, artifacts
) -> tuple[StepRun | None, StepRun | None, bool]:
    run = _lock_run_of_step(step_id, known)
    if run is None:
        return None, None, False
    # Read after the lock: every change of a stage's or a step's status holds it, so
    # these are current, and the engine need not read them again.
    stages, steps = _stages_and_steps(run, step_id)
    step = next((s for s in steps if s.pk == step_id), None)
    if step is None:
        return None, None, False
    step.stage = next(s for s in stages if s.pk == step.stage_id)
    if step.attempt != attempt:
        # Fenced: a newer attempt exists (the reaper gave this one up). Nothing of the
        # stale attempt is written — neither its outcome nor its last log lines.
        _refuse_stale_finish(step, run, attempt, now)
        return None, None, False
    fields = log.write_locked(step) if log is not None else []
    if step.status != StepStatus.RUNNING:
        # Canceled or reaped while it ran: its outcome is refused; only the log lines it
        # wrote before it noticed are kept.
        if fields:
            fastsql.update(step, fields)
        if not run.is_terminal:
            advance(run, now=now, stages=stages, steps=steps)
        return step, None, False
    step.exit_code = exit_code
    step.error = error[:4000]
    retry = not succeeded and step.attempt < step.max_attempts and not run.is_terminal
    if succeeded:
        status = StepStatus.SUCCEEDED
    elif retry:
        status = StepStatus.PENDING  # engine.queue_step re-queues it below
    else:
        status = StepStatus.FAILED
    stored = artifact_store.save_locked(step, artifacts) if succeeded else []
    lifecycle.step(
        step,
        status,
        run=run,
        now=now,
        fields=["exit_code", "error", *fields],
        action="step.succeeded" if succeeded else "step.failed",
        outcome=Outcome.SUCCESS if succeeded else Outcome.FAILURE,
        attempt=attempt,
        exit_code=exit_code,
        error=error[:500],
        **({"artifacts": stored} if stored else {}),
    )
    if retry:
        outcome = engine.Outcome()
        backoff = min(2 ** (step.attempt - 1), 30)
        engine.queue_step(step, run, outcome, countdown=backoff)
        audit.record(
            None, "step.retry", step, at=now, run=run.pk, attempt=step.attempt, backoff=backoff
        )
        dispatch_after_commit(outcome)
    advanced = advance(run, now=now, stages=stages, steps=steps, claim_for=claim_for)
    return step, advanced.claimed, bool(stored)


def _refuse_stale_finish(step: StepRun, run: Run, attempt: int, now: datetime) -> None:
    logger.warning(
        "refused the finish of step %s attempt %s: attempt %s is current",
        step.pk,
        attempt,
        step.attempt,
    )
    audit.record(
        None,
        "step.finish_refused",
        step,
        at=now,
        run=run.pk,
        attempt=attempt,
        current_attempt=step.attempt,
        outcome=Outcome.FAILURE,
        reason="stale attempt",
    )


def heartbeat(step_id: int, attempt: int, *, write: bool = True) -> bool:
    """Is this attempt of the step still running? With `write`, also refresh its heartbeat.
    False means stop: canceled, reaped or retried."""
    mine = StepRun.objects.filter(pk=step_id, attempt=attempt, status=StepStatus.RUNNING)
    if not write:
        return mine.exists()
    return mine.update(heartbeat_at=timezone.now()) == 1


def reap_stale_steps(*, now: datetime | None = None) -> dict:
    """Fail (or retry) running steps whose heartbeat stopped — their worker died — and
    re-dispatch queued steps whose task message seems lost. Runs from beat."""
    now = now or timezone.now()
    cfg = settings.CLEARWAY
    stale_before = now - timedelta(seconds=cfg["HEARTBEAT_TIMEOUT"])
    reaped = 0
    for step in StepRun.objects.filter(status=StepStatus.RUNNING, heartbeat_at__lt=stale_before):
        done = finish_step(
            step.pk,
            step.attempt,
            succeeded=False,
            exit_code=None,
            error=f"worker lost: no heartbeat since {step.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC",
            now=now,
        )
        if done is not None:
            reaped += 1
    # A queued step nobody claimed for a while: its message may have been lost (broker
    # restart). Dispatching again is safe: the claim is conditional on (status, attempt).
    lost_before = now - timedelta(seconds=cfg["HEARTBEAT_TIMEOUT"] * 2)
    redispatched = 0
    send = _dispatcher()
    for step in StepRun.objects.filter(status=StepStatus.QUEUED, queued_at__lt=lost_before):
        # Restart its clock first: a step that merely waits behind busy workers gets one more
        # copy per period, not one per reaper tick (and two reapers do not both send).
        rearmed = StepRun.objects.filter(
            pk=step.pk, status=StepStatus.QUEUED, attempt=step.attempt, queued_at=step.queued_at
        ).update(queued_at=now)
        if rearmed:
            send(step.pk, step.attempt, 0)
            redispatched += 1
    return {"reaped": reaped, "redispatched": redispatched}


# --- webhooks -------------------------------------------------------------------------


def verify_signature(
    pipeline: Pipeline, body: bytes, signature: str | None, timestamp: str | None = None
) -> bool:
    """HMAC-SHA256 with the pipeline's secret, sent as `X-Clearway-Signature: sha256=<hex>`:
    over the raw body, or over `<timestamp>.<body>` when the request carries
    `X-Clearway-Timestamp`."""
    if not signature or not signature.startswith("sha256="):
        return False
    expected = sign(pipeline.webhook_secret, body, timestamp).removeprefix("sha256=")
    return hmac.compare_digest(expected, signature.removeprefix("sha256="))


def sign(secret: str, body: bytes, timestamp: str | int | None = None) -> str:
    signed = body if timestamp is None else f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def webhook_refusal(
    pipeline: Pipeline | None,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: datetime | None = None,
) -> str:
    """Why a webhook request is refused ("" when its signature and timestamp hold). The
    reasons name what is wrong and are shown to the caller and in the audit log."""
    if not signature:
        return "missing signature"
    cfg = settings.CLEARWAY
    if timestamp is None and cfg["WEBHOOK_REQUIRE_TIMESTAMP"]:
        return (
            "missing X-Clearway-Timestamp: this server requires timestamped signatures "
            "(HMAC-SHA256 over '<unix seconds>.<body>')"
        )
    if timestamp is not None:
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            return "X-Clearway-Timestamp must be the Unix time in whole seconds"
        skew = int(timestamp) - int((now or timezone.now()).timestamp())
        if abs(skew) > cfg["WEBHOOK_TOLERANCE"]:
            return (
                f"X-Clearway-Timestamp is {abs(skew)} s {'ahead of' if skew > 0 else 'behind'}"
                f" the server's clock (allowed: {cfg['WEBHOOK_TOLERANCE']} s)"
            )
    if pipeline is None or not verify_signature(pipeline, body, signature, timestamp):
        return "bad signature"
    return ""


def record_delivery(pipeline: Pipeline, signature: str, *, now: datetime | None = None) -> bool:
    """Remember an accepted timestamped request; False if its signature was seen before (a
    replay). Call inside the transaction that acts on the request, so that a request that
    is refused later (bad parameters) can be sent again."""
    now = now or timezone.now()
    window = timedelta(seconds=settings.CLEARWAY["WEBHOOK_TOLERANCE"])
    WebhookDelivery.objects.filter(received_at__lt=now - 2 * window).delete()
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(
                pipeline=pipeline, signature=signature.removeprefix("sha256=")[:64], received_at=now
            )
    except IntegrityError:
        return False
    return True


def rotate_webhook_secret(pipeline: Pipeline, *, actor, now: datetime | None = None) -> str:
    """Give `pipeline` a new webhook secret and return it (the caller shows it once; it is
    never listed or logged). Requests signed with the old secret are refused from the commit
    on. Audited as "pipeline.webhook_rotate" without the secret. The caller checks that
    `actor` may change the pipeline."""
    now = now or timezone.now()
    with transaction.atomic():
        # NO KEY: see trigger_run.
        locked = Pipeline.objects.select_for_update(no_key=True).get(pk=pipeline.pk)
        locked.webhook_secret = Pipeline._meta.get_field("webhook_secret").get_default()
        locked.save(update_fields=["webhook_secret"])
        audit.record(actor, "pipeline.webhook_rotate", locked, at=now)
    pipeline.webhook_secret = locked.webhook_secret
    return locked.webhook_secret

"""Thin Celery wrappers: take ids, re-fetch, return quietly when the row is gone or already
past the state, call a plain function."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init, worker_process_init, worker_shutting_down

from governance import audit

from . import actions, executors, sandbox
from . import artifacts as artifact_store
from .models import Pipeline, Trigger
from .spec import ParameterError

logger = logging.getLogger(__name__)


@worker_init.connect
def _refuse_without_sandbox(**_kwargs) -> None:
    """A worker that cannot sandbox its steps does not start (SystemExit: Celery logs and
    swallows an Exception from a signal handler, and would start anyway)."""
    try:
        warning = sandbox.startup_check("worker")
    except sandbox.SandboxUnavailable as exc:
        message = f"Clearway worker refuses to start: {exc}"
        logger.critical(message)
        raise SystemExit(message) from None
    if warning:
        logger.warning(warning)


@worker_process_init.connect
def _die_with_the_main_process(**_kwargs) -> None:
    # A prefork child runs the steps: when the main worker process is killed (SIGKILL
    # included), the child must go too, and its steps with it (bwrap --die-with-parent).
    sandbox.die_with_parent()


# How many further steps of the same run one task may run after its own, each claimed in
# the transaction that finished the one before (see executors.execute_step). The message is
# acknowledged when the task returns (acks_late): if the worker dies in the middle, the
# redelivered message finds its step already claimed and does nothing, and the reaper fails
# (or retries) the step that was running — as for a step that came through the broker.
# A worker that is shutting down (warm shutdown) stops chaining; with the prefork pool only
# the main process hears of it, so a child finishes its chain (at most INLINE_STEPS steps).
INLINE_STEPS = 50


@worker_shutting_down.connect
def _stop_chaining(**_kwargs) -> None:
    executors.stop_chaining()


@shared_task(name="clearway.execute_step", acks_late=True, reject_on_worker_lost=True)
def execute_step(step_id: int, attempt: int) -> None:
    """Sent by name by orchestrator.actions.dispatch_step."""
    executors.execute_step(step_id, attempt, chain=INLINE_STEPS)


@shared_task(name="clearway.advance_run")
def advance_run(run_id: int) -> None:
    actions.advance_run(run_id)


@shared_task(name="clearway.reap_stale_steps")
def reap_stale_steps() -> dict:
    return actions.reap_stale_steps()


@shared_task(name="clearway.archive_run_logs")
def archive_run_logs(run_id: int) -> dict:
    """Sent after commit when a run ends (actions.advance)."""
    return actions.archive_logs(run_id)


@shared_task(name="clearway.artifact_housekeeping")
def artifact_housekeeping() -> dict:
    """Hourly (beat): expired artifacts and archived logs deleted (audited), and the logs
    of ended runs whose archive message was lost archived."""
    result = artifact_store.purge_expired()
    result["runs_archived"] = 0
    for run_id in actions.runs_with_unarchived_logs():
        if actions.archive_logs(run_id).get("archived"):
            result["runs_archived"] += 1
    return result


@shared_task(name="clearway.trigger_scheduled_run")
def trigger_scheduled_run(pipeline_id: int) -> int | None:
    pipeline = Pipeline.objects.filter(pk=pipeline_id).first()
    if pipeline is None:
        return None
    try:
        return actions.trigger_run(pipeline, actor=None, trigger=Trigger.SCHEDULE).pk
    except ParameterError as exc:
        audit.record(
            None, "run.trigger", pipeline, outcome="failure", trigger="schedule", error=str(exc)
        )
        return None

"""The reaper: a step whose worker died does not stay "running", a lost task message is sent
again, and what it does is harmless when the worker was alive after all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import RunStatus, StepRun, StepStatus

from .conftest import steps_of

pytestmark = pytest.mark.django_db(transaction=True)

ONE_STEP = """
name: reaped
stages:
  - name: build
    steps:
      - name: compile
        run: echo compiled{retries}
  - name: ship
    needs: [build]
    steps:
      - name: ship
        run: echo shipped
"""


def claimed(start, worker, retries: int = 0):
    """A run whose first step a (soon dead) worker claimed."""
    run = start(ONE_STEP.format(retries=f"\n        retries: {retries}" if retries else ""))
    [item] = worker.take()
    step = actions.claim_step(item.step_id, item.attempt, worker="dead-host:1")
    assert step is not None
    return run, StepRun.objects.get(pk=item.step_id), item


def later(settings, factor: float = 2):
    return timezone.now() + timedelta(seconds=settings.CLEARWAY["HEARTBEAT_TIMEOUT"] * factor)


def test_a_running_step_with_an_old_heartbeat_fails_as_worker_lost(start, worker, settings):
    run, step, _ = claimed(start, worker)
    result = actions.reap_stale_steps(now=later(settings, 1.5))
    assert result == {"reaped": 1, "redispatched": 0}
    step.refresh_from_db()
    run.refresh_from_db()
    assert step.status == StepStatus.FAILED
    assert step.error.startswith("worker lost: no heartbeat since ")
    assert run.status == RunStatus.FAILED
    assert steps_of(run)["ship/ship"].status == StepStatus.SKIPPED
    assert worker.take() == []
    event = AuditEvent.objects.get(action="step.failed", target_id=str(step.pk))
    assert event.outcome == "failure" and "worker lost" in event.details["error"]


def test_a_lost_step_with_retries_left_is_queued_again(start, worker, settings):
    run, step, first = claimed(start, worker, retries=1)
    actions.reap_stale_steps(now=later(settings, 1.5))
    step.refresh_from_db()
    assert step.status == StepStatus.QUEUED and step.attempt == 2
    [again] = worker.take()
    assert (again.step_id, again.attempt) == (step.pk, 2) and again.countdown > 0
    # The old attempt's message (redelivered after the worker died) cannot run it again.
    worker.run(first)
    assert StepRun.objects.get(pk=step.pk).status == StepStatus.QUEUED
    worker.run(again)
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason


def test_a_step_with_a_fresh_heartbeat_is_left_alone(start, worker, settings):
    run, step, _ = claimed(start, worker)
    assert actions.reap_stale_steps(now=later(settings, 0.5)) == {"reaped": 0, "redispatched": 0}
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING


def test_the_worker_of_a_reaped_step_is_told_to_stop(start, worker, settings):
    run, step, item = claimed(start, worker, retries=1)
    actions.reap_stale_steps(now=later(settings, 1.5))
    # It was alive after all: its next heartbeat says "stop", its result is ignored.
    assert actions.heartbeat(step.pk, item.attempt) is False
    actions.finish_step(step.pk, item.attempt, succeeded=True, exit_code=0)
    step.refresh_from_db()
    assert step.status == StepStatus.QUEUED and step.attempt == 2


def test_a_queued_step_whose_message_was_lost_is_dispatched_again(start, worker, settings):
    run = start(ONE_STEP.format(retries=""))
    [original] = worker.take()
    assert actions.reap_stale_steps(now=later(settings, 1)) == {"reaped": 0, "redispatched": 0}
    result = actions.reap_stale_steps(now=later(settings, 2.5))
    assert result == {"reaped": 0, "redispatched": 1}
    [again] = worker.take()
    assert (again.step_id, again.attempt) == (original.step_id, original.attempt)
    # Both messages arrive in the end: the step runs once.
    worker.run(again)
    worker.run(original)
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert AuditEvent.objects.filter(action="step.start").count() == 2  # compile + ship


def test_a_step_waiting_behind_busy_workers_is_not_sent_again_on_every_tick(
    start, worker, settings
):
    start(ONE_STEP.format(retries=""))
    worker.take()
    first = later(settings, 2.5)
    assert actions.reap_stale_steps(now=first)["redispatched"] == 1
    interval = timedelta(seconds=settings.CLEARWAY["REAPER_INTERVAL"])
    # The next ticks of beat do not pile up more copies of the same message...
    assert actions.reap_stale_steps(now=first + interval)["redispatched"] == 0
    assert actions.reap_stale_steps(now=first + 2 * interval)["redispatched"] == 0
    assert len(worker.take()) == 1
    # ...until it looks lost again.
    assert actions.reap_stale_steps(now=later(settings, 5.5))["redispatched"] == 1

"""The engine end to end on SQLite: DAG order and parallelism, failure propagation, cancel,
retries with backoff, the claim, audit and live events. Commands really run (the `worker`
fixture executes what the engine dispatches, in this process)."""

from __future__ import annotations

import threading
import time

import pytest

from governance import audit
from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import (
    LogChunk,
    RunStatus,
    StageRun,
    StepRun,
    StepStatus,
)

from .conftest import DIAMOND, host_pids, log_text, steps_of, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def stage_status(run) -> dict[str, str]:
    return dict(StageRun.objects.filter(run=run).values_list("name", "status"))


def test_dag_runs_stages_whose_needs_succeeded_and_independent_ones_together(start, worker):
    run = start(DIAMOND)
    steps = steps_of(run)
    # Only the stage without needs is dispatched at first.
    assert [s.step_id for s in worker.take()] == [steps["build/compile"].pk]
    assert stage_status(run) == {
        "build": "queued",
        "unit": "pending",
        "lint": "pending",
        "package": "pending",
    }
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING

    worker.run(worker.sent[0])
    # build succeeded: unit and lint became ready in the same engine pass and were both
    # handed to workers at once — they run in parallel.
    both = worker.take()
    assert {s.step_id for s in both} == {steps["unit/unit"].pk, steps["lint/lint"].pk}
    assert stage_status(run)["unit"] == stage_status(run)["lint"] == "queued"
    assert stage_status(run)["package"] == "pending"

    worker.run(both[0])
    assert worker.take() == [], "package needs both unit and lint"
    assert stage_status(run)["package"] == "pending"
    worker.run(both[1])

    # The steps of a stage run one after the other.
    first = worker.take()
    assert [s.step_id for s in first] == [steps["package/first"].pk]
    assert StepRun.objects.get(pk=steps["package/second"].pk).status == StepStatus.PENDING
    worker.run(first[0])
    second = worker.take()
    assert [s.step_id for s in second] == [steps["package/second"].pk]
    worker.run(second[0])

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert set(stage_status(run).values()) == {"succeeded"}
    assert run.started_at <= run.finished_at
    for step in steps_of(run).values():
        assert step.status == StepStatus.SUCCEEDED and step.exit_code == 0
        assert step.attempt == 1


FAILING = """
name: failing
stages:
  - name: build
    steps:
      - name: compile
        run: echo broken >&2; exit 3
      - name: after
        run: echo never
  - name: test
    needs: [build]
    steps:
      - name: test
        run: echo never
  - name: docs
    steps:
      - name: docs
        run: echo docs
  - name: publish
    needs: [docs]
    steps:
      - name: publish
        run: echo never
"""


def test_failed_stage_fails_the_run_skips_dependants_and_starts_nothing_new(start, worker):
    run = start(FAILING)
    steps = steps_of(run)
    first = worker.take()
    assert {s.step_id for s in first} == {steps["build/compile"].pk, steps["docs/docs"].pk}
    compile_, docs = sorted(first, key=lambda s: s.step_id != steps["build/compile"].pk)

    worker.run(compile_)
    assert stage_status(run) == {
        "build": "failed",
        "test": "skipped",  # its need failed
        "docs": "queued",  # already handed to a worker: it may finish
        "publish": "skipped",  # independent of build, but nothing new starts after a failure
    }
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, "the run ends when running stages have finished"

    worker.run(docs)
    assert worker.take() == []
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.reason == "stage build: step compile failed"
    steps = steps_of(run)
    assert steps["build/compile"].status == StepStatus.FAILED
    assert steps["build/compile"].exit_code == 3
    assert steps["build/compile"].error == "exit code 3"
    assert steps["build/after"].status == StepStatus.SKIPPED
    assert steps["test/test"].status == StepStatus.SKIPPED
    assert steps["docs/docs"].status == StepStatus.SUCCEEDED
    assert steps["publish/publish"].status == StepStatus.SKIPPED
    assert "[stderr] broken" in log_text(steps["build/compile"])
    assert not any("never" in log_text(s) for s in steps.values())


def test_cancel_marks_queued_and_pending_work_canceled(start, worker, developer):
    run = start(DIAMOND)
    worker.take()
    actions.cancel_run(run, actor=developer)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert run.reason == f"canceled by {developer.username}"
    assert set(stage_status(run).values()) == {"canceled"}
    assert {s.status for s in steps_of(run).values()} == {StepStatus.CANCELED}
    # The message already sent for the queued step finds nothing to claim.
    worker.run(worker.sent[0])
    assert LogChunk.objects.filter(step__stage__run=run).count() == 0
    with pytest.raises(actions.ActionError, match="already ended"):
        actions.cancel_run(run, actor=developer)


SLEEPER = """
name: sleeper
stages:
  - name: long
    steps:
      - name: sleep
        run: sleep 30.0529 & echo "child $!"; wait
  - name: later
    needs: [long]
    steps:
      - name: later
        run: echo never
"""


def test_cancel_kills_a_running_step_within_seconds(start, worker, developer):
    from django.db import connection

    run = start(SLEEPER)
    [item] = worker.take()
    step = StepRun.objects.get(pk=item.step_id)
    outcome: dict = {}

    def execute() -> None:
        began = time.monotonic()
        try:
            worker.run(item)
        finally:
            outcome["seconds"] = time.monotonic() - began
            connection.close()

    thread = threading.Thread(target=execute)
    thread.start()
    try:
        wait_for(lambda: host_pids("sleep 30.0529"), what="the step's sleep to start")
        actions.cancel_run(run, actor=developer)
        thread.join(10)
        assert not thread.is_alive(), "the executor did not stop"
    finally:
        thread.join(30)
    # heartbeat() said "stop" (at most ~1 s later) and the whole process group was killed.
    assert outcome["seconds"] < 8
    wait_for(lambda: not host_pids("sleep 30.0529"), 5, what="the background sleep to be killed")
    step.refresh_from_db()
    run.refresh_from_db()
    assert step.status == StepStatus.CANCELED
    assert run.status == RunStatus.CANCELED
    assert stage_status(run) == {"long": "canceled", "later": "canceled"}
    assert "[clearway] step stopped: canceled" in log_text(step)
    assert worker.take() == []


def test_heartbeat_says_stop_once_the_step_is_no_longer_this_attempts(start, worker, developer):
    run = start(SLEEPER)
    [item] = worker.take()
    assert actions.claim_step(item.step_id, item.attempt, worker="w1") is not None
    assert actions.heartbeat(item.step_id, item.attempt) is True
    assert actions.heartbeat(item.step_id, item.attempt + 1) is False
    actions.cancel_run(run, actor=developer)
    assert actions.heartbeat(item.step_id, item.attempt) is False


FLAKY = """
name: flaky
stages:
  - name: build
    steps:
      - name: flaky
        retries: 2
        run: |
          n=$(cat attempts 2>/dev/null || echo 0)
          n=$((n + 1))
          echo $n > attempts
          echo "attempt $n in $PWD"
          test $n -ge 3
"""


def test_retries_with_growing_backoff_then_success(start, worker):
    run = start(FLAKY)
    worker.drive(run)
    step = next(iter(steps_of(run).values()))
    assert [(s.step_id, s.attempt) for s in worker.sent] == [(step.pk, n) for n in (1, 2, 3)]
    countdowns = [s.countdown for s in worker.sent]
    assert countdowns[0] == 0 and 0 < countdowns[1] < countdowns[2]
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert step.status == StepStatus.SUCCEEDED and step.attempt == 3 and step.exit_code == 0
    text = log_text(step)
    # The counter lives in the run's workspace, shared by the attempts.
    assert "attempt 1 in" in text and "attempt 2 in" in text and "attempt 3 in" in text
    assert "[clearway] attempt 3 of 3" in text
    assert f"/run-{run.pk}" in text
    retries = AuditEvent.objects.filter(action="step.retry", target_id=str(step.pk))
    assert [e.details["attempt"] for e in retries.order_by("seq")] == [2, 3]
    failed = AuditEvent.objects.filter(action="step.failed", target_id=str(step.pk))
    assert failed.count() == 2


def test_retries_used_up_fail_the_run(start, worker):
    run = start(FLAKY.replace("retries: 2", "retries: 1"))
    worker.drive(run)
    assert len(worker.sent) == 2
    assert run.status == RunStatus.FAILED
    step = next(iter(steps_of(run).values()))
    assert step.status == StepStatus.FAILED and step.attempt == 2 and step.exit_code == 1


def test_a_retried_attempt_does_not_keep_the_previous_attempts_finish_time(start, worker):
    run = start(FLAKY)
    first = worker.take()[0]
    worker.run(first)
    [second] = worker.take()
    step = actions.claim_step(second.step_id, second.attempt, worker="w2")
    step.refresh_from_db()
    assert step.status == StepStatus.RUNNING and step.attempt == 2
    assert step.finished_at is None, "a running attempt has not finished"
    assert step.exit_code is None and step.error == ""
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


TWO_STAGES = """
name: twice
stages:
  - name: one
    steps:
      - name: once
        run: echo ran >> "$CLEARWAY_WORKSPACE/marker"
  - name: two
    needs: [one]
    steps:
      - name: two
        run: "true"
"""


def test_executing_the_same_step_attempt_twice_runs_it_once(start, worker):
    run = start(TWO_STAGES)
    marker = actions.workspace_for(run.pk) / "marker"  # the run has not ended: still there
    [item] = worker.take()
    worker.run(item)
    worker.run(item)  # a redelivered message
    assert marker.read_text() == "ran\n"
    step = StepRun.objects.get(pk=item.step_id)
    assert AuditEvent.objects.filter(action="step.start", target_id=str(step.pk)).count() == 1
    assert step.log_chunks.count() == 1
    # A message for an attempt that was never queued is ignored too.
    worker.run(type(item)(item.step_id, 7, 0))
    assert marker.read_text() == "ran\n"
    # Both redeliveries left the run alone; the next stage was dispatched exactly once.
    assert len(worker.take()) == 1


def test_only_one_claim_of_an_attempt_succeeds(start, worker):
    run = start(TWO_STAGES)
    [item] = worker.take()
    wins = [actions.claim_step(item.step_id, item.attempt, worker=f"w{i}") for i in range(3)]
    assert sum(w is not None for w in wins) == 1
    assert run.pk == wins[0].stage.run_id


def test_every_state_change_is_audited_and_the_chain_verifies(start, worker, developer):
    run = start(FAILING)
    worker.drive(run)
    assert run.status == RunStatus.FAILED
    result = audit.verify()
    assert result.ok, result.problem
    actions_seen = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    for expected in (
        "pipeline.create",
        "run.trigger",
        "stage.queued",
        "run.running",
        "step.start",
        "stage.running",
        "step.failed",
        "stage.failed",
        "stage.skipped",
        "step.succeeded",
        "stage.succeeded",
        "run.failed",
    ):
        assert expected in actions_seen, expected
    assert actions_seen[-1] == "run.failed"
    trigger = AuditEvent.objects.get(action="run.trigger")
    assert trigger.actor_name == developer.username
    assert trigger.details["trigger"] == "api"
    # Every stage's final state is on record.
    for stage in StageRun.objects.filter(run=run):
        assert AuditEvent.objects.filter(
            action=f"stage.{stage.status}", target_id=str(stage.pk)
        ).exists()


def test_live_events_carry_a_strictly_increasing_sequence_per_run(
    start, worker, published, developer
):
    first = start(DIAMOND)
    second = start(FAILING)
    worker.drive()
    first.refresh_from_db()
    second.refresh_from_db()
    for run in (first, second):
        events = published.events(run.pk)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
        assert seqs[-1] == run.event_seq
        types = {e["type"] for e in events}
        assert {"run.updated", "stage.updated", "step.updated", "log"} <= types
        last_run_event = published.events(run.pk, "run.updated")[-1]
        assert last_run_event["data"]["status"] == run.status
    groups = {group for group, _ in published.messages()}
    assert f"pipeline.{first.pipeline_id}" in groups and f"run.{first.pk}" in groups
    # Log lines go to the run's group only, status events to the pipeline's.
    for group, message in published.messages():
        for event in message.get("events") or [message["event"]]:
            assert group.startswith("run.") == (event["type"] == "log"), (group, event)

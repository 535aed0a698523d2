"""A worker that goes on with its run: the Celery task (tasks.execute_step) runs the next
ready step of the same run itself, claimed in the transaction that finished the step before
(executors.execute_step with `chain`, actions.finish_step_and_claim_next). Also the batched
audit rows and events those transactions write (audit.batch, events.batch)."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from governance import audit
from governance.models import AuditEvent
from orchestrator import actions, events, executors, tasks
from orchestrator.models import Run, RunStatus, StageRun, StepRun, StepStatus

from .conftest import log_text, steps_of
from .test_engine import DIAMOND

pytestmark = pytest.mark.django_db(transaction=True)


def chain_of(count: int) -> str:
    lines = ["name: chain", "stages:"]
    for i in range(count):
        lines.append(f"  - name: s{i}")
        if i:
            lines.append(f"    needs: [s{i - 1}]")
        lines += ["    steps:", f"      - name: step{i}", f'        run: echo "stage {i}"']
    return "\n".join(lines) + "\n"


def run_chained(item, chain: int = tasks.INLINE_STEPS) -> None:
    """What the Celery task does with a message."""
    executors.execute_step(item.step_id, item.attempt, chain=chain)


def test_the_task_runs_a_sequential_run_to_its_end_without_the_broker(start, worker, published):
    run = start(chain_of(5))
    [first] = worker.take()
    run_chained(first)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert worker.take() == [], "every later step was claimed by the finishing transaction"
    steps = sorted(steps_of(run).values(), key=lambda s: s.stage.position)
    for i, step in enumerate(steps):
        assert step.status == StepStatus.SUCCEEDED and step.attempt == 1
        assert step.worker == executors.worker_name()
        assert step.queued_at <= step.started_at <= step.finished_at
        if i:  # claimed by the transaction that queued it
            assert step.queued_at == step.started_at
        assert f"stage {i}" in log_text(step)
    stages = list(StageRun.objects.filter(run=run).order_by("position"))
    for prev, nxt in zip(stages, stages[1:], strict=False):
        assert prev.finished_at <= nxt.started_at
    # Every transition on record, in the order it happened, and the chain verifies.
    result = audit.verify()
    assert result.ok, result.problem
    for stage in stages:
        actions_of = list(
            AuditEvent.objects.filter(target_type="stagerun", target_id=str(stage.pk))
            .order_by("seq")
            .values_list("action", flat=True)
        )
        assert actions_of == ["stage.queued", "stage.running", "stage.succeeded"], actions_of
    for step in steps:
        actions_of = list(
            AuditEvent.objects.filter(target_type="steprun", target_id=str(step.pk))
            .order_by("seq")
            .values_list("action", flat=True)
        )
        assert actions_of == ["step.start", "step.succeeded"], actions_of
    # Live events: strictly increasing per run, ending at the run's event_seq, and every
    # stage announced queued, running and succeeded, in that order.
    seen = published.events(run.pk)
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert seqs[-1] == run.event_seq
    for stage in stages:
        statuses = [
            e["data"]["status"]
            for e in seen
            if e["type"] == "stage.updated" and e["data"]["id"] == stage.pk
        ]
        assert statuses == ["queued", "running", "succeeded"], statuses
    assert seen[-1]["type"] == "run.updated" and seen[-1]["data"]["status"] == "succeeded"


def test_parallel_stages_still_go_to_other_workers(start, worker):
    run = start(DIAMOND)
    steps = steps_of(run)
    [build] = worker.take()
    # The worker goes on with one of unit/lint and hands the other to the broker...
    executors.execute_step(build.step_id, build.attempt, chain=1)
    [other] = worker.take()
    assert other.step_id in {steps["unit/unit"].pk, steps["lint/lint"].pk}
    assert other.countdown == 0
    taken = ({steps["unit/unit"].pk, steps["lint/lint"].pk} - {other.step_id}).pop()
    assert StepRun.objects.get(pk=taken).status == StepStatus.SUCCEEDED
    assert StepRun.objects.get(pk=other.step_id).status == StepStatus.QUEUED
    # ...whose worker then finishes the run (package's two steps, one after the other).
    run_chained(other)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert worker.take() == []


def test_the_chain_is_capped_and_the_rest_goes_through_the_broker(start, worker):
    run = start(chain_of(5))
    [first] = worker.take()
    run_chained(first, chain=2)  # its own step + 2 more
    assert [s.status for s in sorted(steps_of(run).values(), key=lambda s: s.stage_id)] == [
        StepStatus.SUCCEEDED,
        StepStatus.SUCCEEDED,
        StepStatus.SUCCEEDED,
        StepStatus.QUEUED,
        StepStatus.PENDING,
    ]
    [fourth] = worker.take()
    run_chained(fourth)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_a_redelivered_message_after_a_chain_does_nothing(start, worker):
    run = start(chain_of(3).replace('echo "stage 0"', "echo ran-once"))
    [first] = worker.take()
    run_chained(first)
    before = AuditEvent.objects.count()
    run_chained(first)  # the worker died before acknowledging: the message comes again
    step = StepRun.objects.get(pk=first.step_id)
    outputs = [line for line in log_text(step).splitlines() if line.split(" ", 1)[1] == "ran-once"]
    assert len(outputs) == 1, "the step ran again"
    assert AuditEvent.objects.count() == before
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_a_failed_step_stops_the_chain_and_the_run(start, worker):
    run = start(chain_of(3).replace('echo "stage 1"', "exit 4"))
    [first] = worker.take()
    run_chained(first)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.reason == "stage s1: step step1 failed"
    steps = steps_of(run)
    assert steps["s2/step2"].status == StepStatus.SKIPPED
    assert worker.take() == []


def test_a_retry_keeps_its_backoff_through_the_broker(start, worker):
    flaky = """
name: flaky
stages:
  - name: build
    steps:
      - name: flaky
        retries: 1
        run: test -f done || { touch done; exit 1; }
  - name: after
    needs: [build]
    steps:
      - name: after
        run: echo after
"""
    run = start(flaky)
    [first] = worker.take()
    run_chained(first)
    [again] = worker.take()
    assert again.attempt == 2 and again.countdown > 0
    run_chained(again)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert worker.take() == []


def test_a_canceled_run_is_not_continued(start, worker, developer):
    run = start(chain_of(3))
    [first] = worker.take()
    step = actions.claim_step(first.step_id, first.attempt, worker="w")
    actions.cancel_run(run, actor=developer)
    log = executors.LogWriter(step, run.pk)
    log.add("late output")
    nxt = actions.finish_step_and_claim_next(
        step.pk, step.attempt, worker="w", succeeded=True, exit_code=0, log=log
    )
    assert nxt is None
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert {s.status for s in steps_of(run).values()} == {StepStatus.CANCELED}
    # What the step printed is kept, even though its outcome was not recorded.
    assert "late output" in log_text(StepRun.objects.get(pk=step.pk))


def test_a_shutting_down_worker_stops_chaining(start, worker, monkeypatch):
    monkeypatch.setattr(executors, "_stopping", type(executors._stopping)())
    run = start(chain_of(3))
    [first] = worker.take()
    executors.stop_chaining()
    run_chained(first)
    assert len(worker.take()) == 1
    assert StepRun.objects.filter(stage__run=run, status=StepStatus.SUCCEEDED).count() == 1


def test_a_chain_claims_nothing_more_after_its_time_budget(start, worker, monkeypatch):
    """Long chains go back to the broker: a warm shutdown waits for at most one step."""
    monkeypatch.setattr(executors, "CHAIN_SECONDS", 0.0)
    run = start(chain_of(3))
    [first] = worker.take()
    run_chained(first)
    [second] = worker.take()  # the next step went through the broker
    assert StepRun.objects.filter(stage__run=run, status=StepStatus.SUCCEEDED).count() == 1
    assert StepRun.objects.get(pk=second.step_id).status == StepStatus.QUEUED


def test_statements_per_transition(start, worker):
    """Pins, BEGIN and COMMIT included. A claim: lock the run (found by the step) and read
    its pipeline, the conditional UPDATE, read the step and its stage, stage running, then
    the events (1) and audit rows (3) at once — plain statements (orchestrator.kernel.fastsql), one
    more than a join would take but a third of the CPU. A finish that
    claims the next step: lock the run, read stages and steps, last log lines, step done,
    next step claimed, stage done, next stage running, events (1), audit rows (lock, two
    INSERTs of at most three rows, head). Before the batching and the in-transaction claim,
    a stage cost 15 (claim) + 5 (flush) + 24 (finish) statements and four commits on
    PostgreSQL."""
    run = start(chain_of(3))
    [first] = worker.take()
    with CaptureQueriesContext(connection) as claim:
        step = actions.claim_step(first.step_id, first.attempt, worker="w")
    log = executors.LogWriter(step, run.pk)
    log.add("a line")
    with CaptureQueriesContext(connection) as finish:
        nxt = actions.finish_step_and_claim_next(
            step.pk, step.attempt, worker="w", succeeded=True, exit_code=0, log=log
        )
    assert nxt is not None and nxt.status == StepStatus.RUNNING
    assert len(claim) <= 12, [q["sql"] for q in claim]
    assert len(finish) <= 15, [q["sql"] for q in finish]


# --- audit.batch and events.batch -----------------------------------------------------------


def _a_run(start, worker) -> Run:
    run = start(chain_of(1))
    worker.take()
    return run


def test_a_batch_appends_its_rows_in_order_at_its_end(start, worker, published):
    run = _a_run(start, worker)
    head_before, _ = audit.chain_head()
    seq_before = Run.objects.get(pk=run.pk).event_seq
    with transaction.atomic(), audit.batch(), events.batch():
        run = Run.objects.select_for_update().get(pk=run.pk)
        first = audit.record(None, "test.one", run)
        audit.record(None, "test.two", run)
        events.publish_run(run)
        events.publish_run(run)
        assert audit.chain_head()[0] == head_before, "nothing written before the end"
        assert first.seq is None
    assert first.seq == head_before + 1
    assert list(
        AuditEvent.objects.filter(seq__gt=head_before).values_list("action", flat=True)
    ) == ["test.one", "test.two"]
    assert audit.verify().ok
    assert [e["seq"] for e in published.events(run.pk)[-2:]] == [seq_before + 1, seq_before + 2]
    assert run.event_seq == Run.objects.get(pk=run.pk).event_seq == seq_before + 2


def test_a_failed_batch_writes_nothing(start, worker, published):
    run = _a_run(start, worker)
    head_before, _ = audit.chain_head()
    count = len(published)
    with pytest.raises(RuntimeError), transaction.atomic(), audit.batch(), events.batch():
        audit.record(None, "test.lost", run)
        events.publish_run(run)
        raise RuntimeError("boom")
    assert audit.chain_head()[0] == head_before
    assert len(published) == count


def test_rows_recorded_in_a_rolled_back_savepoint_are_dropped(start, worker, published):
    run = _a_run(start, worker)
    head_before, _ = audit.chain_head()
    count = len(published)
    with transaction.atomic(), audit.batch(), events.batch():
        audit.record(None, "test.kept", run)
        try:
            with transaction.atomic():
                audit.record(None, "test.undone", run)
                events.publish_run(run)
                raise ValueError
        except ValueError:
            pass
        with transaction.atomic():
            audit.record(None, "test.nested", run)
        events.publish_run(run)
    actions_seen = list(
        AuditEvent.objects.filter(seq__gt=head_before).values_list("action", flat=True)
    )
    assert actions_seen == ["test.kept", "test.nested"]
    assert audit.verify().ok
    assert len(published) == count + 1


def test_a_batch_needs_a_transaction():
    with pytest.raises(RuntimeError), audit.batch():
        pass
    with pytest.raises(RuntimeError), events.batch():
        pass


def test_a_transactions_events_are_sent_before_its_steps_are_dispatched(
    start, worker, published, monkeypatch
):
    """The worker that takes a dispatched step publishes the run's next events from its own
    process: the dispatching process's events must be out (handed to the sender, and the
    sender done with them: events.wait_sent) before the step is."""
    waits: list[int] = []
    real_wait = events.wait_sent
    monkeypatch.setattr(
        events, "wait_sent", lambda: waits.append(len(published.events())) or real_wait()
    )
    seen_at_dispatch: list[list[int]] = []
    real_dispatch = worker.dispatch

    def dispatch(step_id, attempt, countdown=0):
        seen_at_dispatch.append([e["seq"] for e in published.events()])
        real_dispatch(step_id, attempt, countdown)

    monkeypatch.setattr(actions, "dispatch_step", dispatch)
    run = start(DIAMOND)
    run.refresh_from_db()
    assert seen_at_dispatch == [list(range(1, run.event_seq + 1))]
    assert waits == [run.event_seq]
    [build] = worker.take()
    step = actions.claim_step(build.step_id, build.attempt, worker="w")
    nxt = actions.finish_step_and_claim_next(
        step.pk, step.attempt, worker="w", succeeded=True, exit_code=0
    )
    assert nxt is not None  # unit or lint, started here; the other one was dispatched
    run.refresh_from_db()
    assert seen_at_dispatch[-1] == list(range(1, run.event_seq + 1))
    assert waits[-1] == run.event_seq


def test_a_transitions_events_travel_together_in_order(start, worker, published):
    """Consecutive events of one transaction for the same group are one channel-layer
    message (clearway.events); the order across groups is kept (the log lines of a finished
    step, for the run's group, go before the status events of the pipeline's group)."""
    run = start(chain_of(2))
    [first] = worker.take()
    del published[:]
    run_chained(first)
    run.refresh_from_db()
    messages = published.messages()
    shapes = [
        (group.split(".")[0], [e["type"] for e in m.get("events") or [m["event"]]])
        for group, m in messages
    ]
    # The claim of the first step (stage running, step started); the finish that claims
    # the second: its last log lines first, then step done, stage done, next stage queued
    # and running, next step started; the finish of the second, which ends the run.
    assert shapes == [
        ("pipeline", ["stage.updated", "step.updated"]),
        ("run", ["log"]),
        (
            "pipeline",
            ["step.updated", "stage.updated", "stage.updated", "stage.updated", "step.updated"],
        ),
        ("run", ["log"]),
        ("pipeline", ["step.updated", "stage.updated", "run.updated"]),
    ], shapes
    assert all(m["type"] == "clearway.events" for _, m in messages if "events" in m)
    assert all(len(m["events"]) > 1 for _, m in messages if "events" in m)
    seqs = [e["seq"] for e in published.events(run.pk)]
    assert seqs == sorted(seqs) and seqs[-1] == run.event_seq

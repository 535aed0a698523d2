"""The only publisher of live events.

`publish_*` functions are called inside the transaction of the change they announce: they
take the run's next sequence number (an UPDATE on the run row, so concurrent writers are
ordered by the row lock) and send after commit. A client that sees a gap in a run's sequence
re-reads the run over HTTP: the database, not the stream, is the source of truth.

Groups: "pipeline.<id>" receives status events of the pipeline's runs; "run.<id>" receives
the log lines of one run; "user.<id>" is told when that user's access changes. Delivery is
fire-and-forget from one sender loop per process, which keeps events in order. In
standalone mode the sender is the web server's own loop, because the in-memory channel layer
is not thread-safe (see docs/architecture.md).

Inside `batch()` (the engine's transitions use it, with the run row already locked), events
are numbered when the block ends: one `event_seq = event_seq + n` for all of them, in the
order they were published, instead of one UPDATE each.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from typing import Any

from django.db import connection, transaction

from .kernel.batching import TransactionBatch, batching
from .models import Run

logger = logging.getLogger(__name__)

GROUP_PIPELINE = "pipeline.{}"
GROUP_RUN = "run.{}"


GROUP_USER = "user.{}"


def user_group(user_id: int) -> str:
    """Each connected user's own group: told when what they may see changes."""
    return GROUP_USER.format(user_id)


def publish_access_changed(user_ids) -> None:
    """After commit, tell these users' live connections that their access changed (a role,
    a team, an object permission): they re-decide which pipelines they follow at once,
    instead of on their next reconnect. Not numbered: it belongs to no run."""
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return

    def send() -> None:
        for user_id in user_ids:
            sender.send(user_group(user_id), {"type": "clearway.access"})

    transaction.on_commit(send)


def pipeline_group(pipeline_id: int) -> str:
    return GROUP_PIPELINE.format(pipeline_id)


def run_group(run_id: int) -> str:
    return GROUP_RUN.format(run_id)


class _Sender:
    """Sends group messages in order from one event loop (the server's, when bound, or a
    private thread's)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.pid: int | None = None
        self.lock = threading.Lock()
        self.bound = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` (already running, or about to) for sending."""
        with self.lock:
            self.loop, self.pid, self.bound = loop, os.getpid(), True
            self.queue = None
            loop.call_soon_threadsafe(self._start_drain)

    def unbind(self) -> None:
        with self.lock:
            self.loop = self.queue = self.pid = None
            self.bound = False

    def _start_drain(self) -> None:
        self.queue = asyncio.Queue()
        asyncio.ensure_future(self._drain(self.queue))

    async def _drain(self, queue: asyncio.Queue) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        while True:
            group, message = await queue.get()
            if group is None:  # a marker (see `mark`): everything before it was sent
                message.set()
                continue
            try:
                await layer.group_send(group, message)
            except Exception:  # a lost event is recovered by clients re-reading over HTTP
                logger.exception("could not publish to %s", group)

    def _ensure_private_loop(self) -> None:
        if self.loop is not None and self.pid == os.getpid():
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(self._start_drain)
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=run, name="clearway-events", daemon=True).start()
        ready.wait(5)
        self.loop, self.pid = loop, os.getpid()

    def send(self, group: str, message: dict) -> None:
        with self.lock:
            if not self.bound:
                self._ensure_private_loop()
            loop = self.loop

        def put() -> None:
            if self.queue is None:
                self._start_drain()
            self.queue.put_nowait((group, message))

        loop.call_soon_threadsafe(put)

    def mark(self) -> threading.Event:
        """An event set once everything handed to `send` before this call was sent."""
        done = threading.Event()
        with self.lock:
            if not self.bound and (self.loop is None or self.pid != os.getpid()):
                done.set()  # this process has sent nothing yet
                return done
            loop = self.loop

        def put() -> None:
            if self.queue is None:
                self._start_drain()
            self.queue.put_nowait((None, done))

        loop.call_soon_threadsafe(put)
        return done

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far was handed to the channel layer (tests)."""
        if self.loop is None:
            return
        done = threading.Event()

        async def wait_empty() -> None:
            while self.queue is not None and not self.queue.empty():
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.005)
            done.set()

        asyncio.run_coroutine_threadsafe(wait_empty(), self.loop)
        done.wait(timeout)


sender = _Sender()


def bind_loop(loop: asyncio.AbstractEventLoop) -> None:
    sender.bind(loop)


def _take_seqs(run_id: int, count: int = 1) -> int:
    """Reserve `count` sequence numbers of the run in one statement; returns the last. The
    row stays locked until commit, so sequence order is commit order."""
    table = connection.ops.quote_name(Run._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET event_seq = event_seq + %s WHERE id = %s "  # noqa: S608
            "RETURNING event_seq",
            [count, run_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Run.DoesNotExist(f"run {run_id}")
    return row[0]


def _next_seq(run_id: int) -> int:
    return _take_seqs(run_id, 1)


def _emit(groups: list[str], event: dict[str, Any]) -> None:
    """Send a numbered event after commit (on-commit callbacks run in registration order;
    a batch's events go out with the batch, see _Batch.deliver)."""
    message = {"type": "clearway.event", "event": event}
    outbox = _outbox.get()
    if outbox is not None:
        outbox.append((groups, message))
        return

    def send() -> None:
        for group in groups:
            sender.send(group, message)

    transaction.on_commit(send)


_outbox: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "clearway_events_outbox", default=None
)


def wait_sent(timeout: float = 0.5) -> bool:
    """Wait until the events this process handed to the sender so far were sent (the
    channel layer has them). Called after commit before dispatching a step: the worker that
    takes it publishes the run's next events from another process, which must not overtake
    these. Bounded: a stuck channel layer delays a dispatch by `timeout` at most."""
    return sender.mark().wait(timeout)


class _Batch(TransactionBatch):
    """Events published inside `batch()`, in call order, without their sequence numbers yet
    (items: (run id, groups, event))."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[int, Any] = {}  # Run objects to hand their new event_seq
        self.outbox: list[tuple[list[str], dict]] = []
        # Registered first, so that after commit the events are handed to the sender before
        # anything the transaction registers later (the dispatch of steps: see wait_sent).
        transaction.on_commit(self.deliver)

    def deliver(self) -> None:
        """Consecutive events for the same groups travel as one channel-layer message
        ("clearway.events", the consumer relays them one by one): a transition announces
        4–6 status events, and each group_send is several Redis commands. Only consecutive
        ones, so that the order of events across groups is kept."""
        runs: list[tuple[list[str], list[dict]]] = []
        for groups, message in self.outbox:
            if runs and runs[-1][0] == groups:
                runs[-1][1].append(message["event"])
            else:
                runs.append((groups, [message["event"]]))
        for groups, batch in runs:
            if len(batch) == 1:
                message = {"type": "clearway.event", "event": batch[0]}
            else:
                message = {"type": "clearway.events", "events": batch}
            for group in groups:
                sender.send(group, message)

    def keep_event(self, run_id: int, groups: list[str], event: dict, run=None) -> bool:
        if not self.keep((run_id, groups, event)):
            return False
        if run is not None:
            self.runs[run_id] = run
        return True

    def flush(self) -> None:
        items = _one_per_gate(self.survivors())
        if not items:
            return
        counts: dict[int, int] = {}
        for run_id, *_ in items:
            counts[run_id] = counts.get(run_id, 0) + 1
        # Runs in id order: two batches touching the same runs lock them in the same order.
        following = {run_id: _take_seqs(run_id, n) - n + 1 for run_id, n in sorted(counts.items())}
        token = _outbox.set(self.outbox)
        try:
            for run_id, groups, event in items:
                event["seq"] = following[run_id]
                following[run_id] += 1
                _emit(groups, event)
        finally:
            _outbox.reset(token)
        for run_id, run in self.runs.items():
            if run_id in following:
                run.event_seq = following[run_id] - 1


def _one_per_gate(items: list) -> list:
    """A gate is announced once per transaction, with its final state, where its last
    announcement was: a check may rewrite a gate's reason, and the verb that caused the check
    (an approval) announces the gate too."""
    last = {
        event["data"]["id"]: i
        for i, (_, _, event) in enumerate(items)
        if event["type"] == "gate.updated"
    }
    return [
        item
        for i, item in enumerate(items)
        if item[2]["type"] != "gate.updated" or last[item[2]["data"]["id"]] == i
    ]


_batch: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar(
    "clearway_events_batch", default=None
)


def batching_now() -> bool:
    """Inside a batch() block (orchestrator.actions.transition)?"""
    return _batch.get() is not None


def batch():
    """Number the events published inside the block when it ends without an exception, with
    one UPDATE per run, and send them after commit in publication order. Use it inside the
    transaction, after the run row is locked, as an innermost block (see audit.batch)."""
    return batching(_batch, _Batch, _Batch.flush, "events.batch()")


def _publish(run_id: int, groups: list[str], event: dict[str, Any], run=None) -> None:
    """Number `event` (now, or at the end of the current batch) and send it after commit.
    `run`, when given, is told its new event_seq."""
    pending = _batch.get()
    if pending is not None and pending.keep_event(run_id, groups, event, run):
        return
    event["seq"] = _next_seq(run_id)
    if run is not None:
        run.event_seq = event["seq"]
    _emit(groups, event)


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def run_payload(run) -> dict:
    return {
        "id": run.pk,
        "number": run.number,
        "pipeline": run.pipeline_id,
        "status": run.status,
        "reason": run.reason,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }


def publish_run(run) -> None:
    _publish(
        run.pk,
        [pipeline_group(run.pipeline_id)],
        {"type": "run.updated", "run": run.pk, "seq": None, "data": run_payload(run)},
        run,
    )


def publish_stage(stage, run) -> None:
    data = {
        "id": stage.pk,
        "name": stage.name,
        "status": stage.status,
        "reason": stage.reason,
        "started_at": _iso(stage.started_at),
        "finished_at": _iso(stage.finished_at),
    }
    _publish(
        run.pk,
        [pipeline_group(run.pipeline_id)],
        {"type": "stage.updated", "run": run.pk, "seq": None, "data": data},
        run,
    )


def publish_step(step, run) -> None:
    data = {
        "id": step.pk,
        "stage": step.stage_id,
        "name": step.name,
        "status": step.status,
        "attempt": step.attempt,
        "exit_code": step.exit_code,
        "error": step.error,
        "started_at": _iso(step.started_at),
        "finished_at": _iso(step.finished_at),
    }
    _publish(
        run.pk,
        [pipeline_group(run.pipeline_id)],
        {"type": "step.updated", "run": run.pk, "seq": None, "data": data},
        run,
    )


def publish_gate(gate, run) -> None:
    data = {
        "id": gate.pk,
        "stage": gate.stage_run_id,
        "status": gate.status,
        "environment": gate.environment.name,
        "reason": gate.reason,
    }
    _publish(
        run.pk,
        [pipeline_group(run.pipeline_id)],
        {"type": "gate.updated", "run": run.pk, "seq": None, "data": data},
        run,
    )


def publish_log(step, run_id: int, offset: int, lines: list[str]) -> None:
    _publish(
        run_id,
        [run_group(run_id)],
        {
            "type": "log",
            "run": run_id,
            "seq": None,
            "data": {"step": step.pk, "offset": offset, "lines": lines},
        },
    )

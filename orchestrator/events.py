"""The only publisher of live events.

`publish_*` functions are called inside the transaction of the change they announce: they
take the run's next sequence number (an UPDATE on the run row, so concurrent writers are
ordered by the row lock) and send after commit. A client that sees a gap in a run's sequence
re-reads the run over HTTP: the database, not the stream, is the source of truth.

Groups: "pipeline.<id>" receives status events of the pipeline's runs; "run.<id>" receives
the log lines of one run. Delivery is fire-and-forget from one sender loop per process, which
keeps events in order. In standalone mode the sender is the web server's own loop, because
the in-memory channel layer is not thread-safe (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)

GROUP_PIPELINE = "pipeline.{}"
GROUP_RUN = "run.{}"


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


def _next_seq(run_id: int) -> int:
    """The run's next sequence number, in one statement (the row stays locked until commit,
    so sequence order is commit order)."""
    from django.db import connection

    from .models import Run

    table = connection.ops.quote_name(Run._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET event_seq = event_seq + 1 WHERE id = %s "  # noqa: S608
            "RETURNING event_seq",
            [run_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Run.DoesNotExist(f"run {run_id}")
    return row[0]


def _emit(groups: list[str], event: dict[str, Any]) -> None:
    message = {"type": "clearway.event", "event": event}

    def send() -> None:
        for group in groups:
            sender.send(group, message)

    transaction.on_commit(send)


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
    seq = _next_seq(run.pk)
    _emit(
        [pipeline_group(run.pipeline_id)],
        {"type": "run.updated", "run": run.pk, "seq": seq, "data": run_payload(run)},
    )


def publish_stage(stage, run) -> None:
    seq = _next_seq(run.pk)
    data = {
        "id": stage.pk,
        "name": stage.name,
        "status": stage.status,
        "reason": stage.reason,
        "started_at": _iso(stage.started_at),
        "finished_at": _iso(stage.finished_at),
    }
    _emit(
        [pipeline_group(run.pipeline_id)],
        {"type": "stage.updated", "run": run.pk, "seq": seq, "data": data},
    )


def publish_step(step, run) -> None:
    seq = _next_seq(run.pk)
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
    _emit(
        [pipeline_group(run.pipeline_id)],
        {"type": "step.updated", "run": run.pk, "seq": seq, "data": data},
    )


def publish_gate(gate, run) -> None:
    seq = _next_seq(run.pk)
    data = {
        "id": gate.pk,
        "stage": gate.stage_run_id,
        "status": gate.status,
        "environment": gate.environment.name,
        "reason": gate.reason,
    }
    _emit(
        [pipeline_group(run.pipeline_id)],
        {"type": "gate.updated", "run": run.pk, "seq": seq, "data": data},
    )


def publish_log(step, run_id: int, offset: int, lines: list[str]) -> None:
    seq = _next_seq(run_id)
    _emit(
        [run_group(run_id)],
        {
            "type": "log",
            "run": run_id,
            "seq": seq,
            "data": {"step": step.pk, "offset": offset, "lines": lines},
        },
    )

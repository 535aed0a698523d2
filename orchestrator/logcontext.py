"""What every log record carries besides its message: the request id (web), the Celery task
id (worker) and, where there is one, the run id. The values live in context variables, so
threads (the standalone worker's pool) and asyncio tasks each see their own.

`ContextFilter` (settings.LOGGING) copies them onto each record: `%(context)s` for the plain
format, separate `request_id` / `task_id` / `run_id` / `step_id` keys in JSON."""

from __future__ import annotations

import contextvars
import logging

from celery.signals import task_postrun, task_prerun

_FIELDS = ("request_id", "task_id", "run_id", "step_id")
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "clearway_log_context", default=None
)


def bind(**values) -> None:
    """Add values (run_id=..., step_id=...) to the current context; None removes one."""
    current = dict(_context.get() or {})
    for key, value in values.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    _context.set(current)


def clear() -> None:
    _context.set(None)


def current() -> dict:
    return dict(_context.get() or {})


def bind_token(**values) -> contextvars.Token:
    """Like bind, returning a token for `reset` (the web middleware's request scope)."""
    return _context.set({**(_context.get() or {}), **values})


def reset(token: contextvars.Token) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        values = _context.get() or {}
        parts = []
        for field in _FIELDS:
            value = values.get(field)
            if value is None:
                continue
            if not hasattr(record, field):
                setattr(record, field, value)
            parts.append(f"{field}={value}")
        record.context = " ".join(parts) or "-"
        return True


@task_prerun.connect
def _task_started(task_id=None, **_kwargs) -> None:
    # Worker threads run one task after another: start each from a clean context.
    _context.set({"task_id": task_id} if task_id else None)


@task_postrun.connect
def _task_finished(**_kwargs) -> None:
    clear()

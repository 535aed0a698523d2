"""Thin Celery wrappers for governance work: take ids, re-fetch, call a plain function."""

from __future__ import annotations

import smtplib

from celery import Task, shared_task

from . import actions, notifications
from .notifications import WebhookError


@shared_task(name="clearway.gate_housekeeping")
def gate_housekeeping() -> dict:
    """Void expired and stale approvals, re-check waiting gates, send reminders (see
    governance.actions.housekeeping)."""
    return actions.housekeeping()


class NotificationTask(Task):
    """Retries with exponential backoff; after the last retry the failure is logged and
    audited, and the gate is left alone."""

    abstract = True
    channel = ""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        gate_id, kind = (list(args) + [None, None])[:2]
        notifications.failed(gate_id, kind or "", self.channel, str(exc))


_RETRY = {
    "bind": True,
    "base": NotificationTask,
    "max_retries": 5,
    "retry_backoff": 5,  # 5, 10, 20, 40, 80 s (jittered), at most retry_backoff_max
    "retry_backoff_max": 300,
    "retry_jitter": True,
}


@shared_task(
    name="clearway.notify_gate_email",
    autoretry_for=(smtplib.SMTPException, OSError),
    channel="email",
    **_RETRY,
)
def notify_gate_email(self, gate_id: int, kind: str) -> int:
    return notifications.send_email(gate_id, kind)


@shared_task(
    name="clearway.notify_gate_webhook",
    autoretry_for=(WebhookError,),
    channel="webhook",
    **_RETRY,
)
def notify_gate_webhook(self, gate_id: int, kind: str) -> int:
    return notifications.post_webhook(gate_id, kind)


@shared_task(name="clearway.generate_report_pdf")
def generate_report_pdf(job_id: int) -> str | None:
    """Build a queued PDF change report (governance.actions.generate_report_pdf)."""
    return actions.generate_report_pdf(job_id)

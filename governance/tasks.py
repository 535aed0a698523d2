"""Thin Celery wrappers for governance work: take ids, re-fetch, call a plain function."""

from __future__ import annotations

import smtplib

from celery import Task, current_app, shared_task
from django.conf import settings

from . import actions, checkpoints, notifications, siem
from .notifications import DeliveryError, WebhookError


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


@shared_task(
    name="clearway.notify_change_request",
    autoretry_for=(smtplib.SMTPException, OSError),
    bind=True,
    max_retries=5,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
)
def notify_change_request(self, request_id: int) -> int:
    """E-mail the reviewers of a governance change request."""
    return notifications.send_change_request_email(request_id)


@shared_task(name="clearway.generate_report_pdf")
def generate_report_pdf(job_id: int) -> str | None:
    """Build a queued PDF change report (governance.actions.generate_report_pdf)."""
    return actions.generate_report_pdf(job_id)


@shared_task(name="clearway.audit_checkpoint")
def audit_checkpoint() -> int | None:
    """Sign the audit chain head and write it to the checkpoint sinks (beat, every
    CLEARWAY_AUDIT_CHECKPOINT_INTERVAL seconds, and after each export). Without a signing key
    configured there is nothing to do; returns the signed seq."""
    if not settings.CLEARWAY.get("AUDIT_SIGNING_KEY"):
        return None
    row = checkpoints.make_checkpoint()
    return row.seq if row else None


@shared_task(name="clearway.stream_audit")
def stream_audit() -> list[str]:
    """Fan out one delivery task per configured SIEM destination (beat)."""
    names = list(siem.destinations())
    for name in names:
        current_app.send_task("clearway.stream_audit_destination", args=[name])
    return names


@shared_task(name="clearway.stream_audit_destination")
def stream_audit_destination(name: str) -> dict:
    """Deliver the unacknowledged audit events to one destination (governance.siem)."""
    return siem.deliver(name)


@shared_task(name="clearway.notify_gate_channels")
def notify_gate_channels(gate_id: int, kind: str) -> int:
    """Create the apprise deliveries of a gate notification and queue each one."""
    ids = notifications.fan_out(gate_id, kind)
    for delivery_id in ids:
        deliver_notification.delay(delivery_id)
    return len(ids)


@shared_task(name="clearway.notify_change_request_channels")
def notify_change_request_channels(request_id: int) -> int:
    """Create the apprise deliveries of "a governance change request waits for you" (the
    channels and the reviewers' personal URLs) and queue each one."""
    ids = notifications.fan_out_change_request(request_id)
    for delivery_id in ids:
        deliver_notification.delay(delivery_id)
    return len(ids)


class DeliveryTask(Task):
    """After the last retry the delivery is marked failed and audited; the gate is untouched."""

    abstract = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        notifications.delivery_failed(args[0], str(exc))


@shared_task(
    name="clearway.deliver_notification",
    bind=True,
    base=DeliveryTask,
    autoretry_for=(DeliveryError,),
    max_retries=5,
    retry_backoff=5,  # 5, 10, 20, 40, 80 s (jittered)
    retry_backoff_max=300,
    retry_jitter=True,
)
def deliver_notification(self, delivery_id: int) -> bool:
    return notifications.deliver(delivery_id)

"""Gate notifications: email (Django's email backend) and a Slack-compatible webhook.

A gate that starts waiting tells its eligible approvers; a reminder follows after the
environment's reminder_minutes; the decision (open, overridden, rejected, blocked) is
announced the same way. Everything is sent from Celery tasks (governance/tasks.py) after
the gate's transaction commits, with retries and backoff. A failing channel never touches
the gate: after the last retry the failure is logged and audited ("notification.failed").
"""

from __future__ import annotations

import logging

import httpx
from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.message import EmailMessage
from django.db import transaction

from orchestrator.kernel.queue import enqueue

from . import audit
from .approvers import eligible_approvers, overriders
from .models import Enforcement, Gate, GateStatus, Outcome

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 5.0

KINDS = (
    "waiting",
    "reminder",
    "escalated",
    "open",
    "overridden",
    "rejected",
    "timed_out",
    "blocked",
)


class WebhookError(Exception):
    """The webhook did not accept the message (network error or a non-2xx answer)."""


def schedule(gate: Gate, kind: str) -> None:
    """Send the `kind` notification of `gate` after the current transaction commits."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    gate_id = gate.pk
    webhook = bool(gate.environment.notify_webhook_url)

    def send() -> None:
        try:  # by task name: the tasks module sits above this one
            enqueue("clearway.notify_gate_email", (gate_id, kind))
            if webhook:
                enqueue("clearway.notify_gate_webhook", (gate_id, kind))
        except Exception:  # broker down: a lost notification must not break the caller
            logger.exception("could not queue the %s notification of gate %s", kind, gate_id)

    transaction.on_commit(send)


def gate_url(gate: Gate) -> str:
    return f"{settings.CLEARWAY['SITE_URL'].rstrip('/')}/gates/{gate.pk}/"


def _load(gate_id: int) -> Gate | None:
    return (
        Gate.objects.select_related(
            "environment",
            "stage_run__run__pipeline",
            "stage_run__run__version",
            "stage_run__run__triggered_by",
        )
        .filter(pk=gate_id)
        .first()
    )


def message(gate: Gate, kind: str) -> tuple[str, str]:
    """(subject, body) of a notification."""
    run = gate.stage_run.run
    what = f"{run.pipeline.slug} #{run.number} → {gate.environment.name}"
    by = run.triggered_by.get_username() if run.triggered_by else "a schedule"
    headline = {
        "waiting": f"{what} waits for your approval",
        "reminder": f"Reminder: {what} is still waiting for approval",
        "open": f"{what} was approved; the gate is open",
        "overridden": f"{what} passed its gate with an OVERRIDE (break-glass)",
        "escalated": f"Escalated to you: {what} waits for approval past its SLA",
        "rejected": f"{what} was rejected",
        "timed_out": f"{what} waited too long and was rejected by the system",
        "blocked": f"{what} was blocked by policy",
    }[kind]
    lines = [
        headline,
        "",
        f"Pipeline: {run.pipeline.name} (version {run.version.number})",
        f"Run: #{run.number}, triggered by {by}",
        f"Stage: {gate.stage_run.name}",
        f"Environment: {gate.environment.name}",
        f"Gate status: {gate.status}",
    ]
    if gate.reason:
        lines.append(f"Reason: {gate.reason}")
    if kind == "overridden":
        for override in gate.overrides.select_related("user").order_by("created_at"):
            lines.append(f"Override by {override.user.get_username()}: {override.justification}")
    lines += ["", gate_url(gate)]
    return f"[Clearway] {headline}", "\n".join(lines)


def recipients(gate: Gate, kind: str) -> list[str]:
    """Email addresses for a notification: the eligible approvers while the gate waits (and
    who may override, when a soft-mandatory denial holds it); for a decision, also the
    person who triggered the run."""
    run = gate.stage_run.run
    users = list(eligible_approvers(gate, run))
    held_by_soft_denial = gate.decisions.filter(
        current=True, enforcement=Enforcement.SOFT_MANDATORY, result__in=("deny", "error")
    ).exists()
    if kind in ("waiting", "reminder", "escalated") and held_by_soft_denial:
        users += overriders(gate)
    if kind not in ("waiting", "reminder", "escalated") and run.triggered_by is not None:
        users.append(run.triggered_by)
    seen: set[str] = set()
    result = []
    for user in users:
        email = (user.email or "").strip()
        if email and email.lower() not in seen:
            seen.add(email.lower())
            result.append(email)
    return result


def send_email(gate_id: int, kind: str) -> int:
    """Email the notification; one message per recipient. Returns how many were sent."""
    gate = _load(gate_id)
    if gate is None or not _still_relevant(gate, kind):
        return 0
    to = recipients(gate, kind)
    if not to:
        return 0
    subject, body = message(gate, kind)
    connection = get_connection()
    mails = [EmailMessage(subject, body, None, [address], connection=connection) for address in to]
    return connection.send_messages(mails) or 0


def post_webhook(gate_id: int, kind: str) -> int:
    """POST `{"text": ...}` to the environment's webhook. Raises WebhookError on failure."""
    gate = _load(gate_id)
    if gate is None or not _still_relevant(gate, kind):
        return 0
    url = gate.environment.notify_webhook_url
    if not url:
        return 0
    subject, body = message(gate, kind)
    text = body.replace(gate_url(gate), f"<{gate_url(gate)}|open the gate>")
    try:
        response = httpx.post(
            url, json={"text": text}, timeout=WEBHOOK_TIMEOUT, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        raise WebhookError(f"webhook of {gate.environment.name} failed: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise WebhookError(
            f"webhook of {gate.environment.name} answered HTTP {response.status_code}"
        )
    return response.status_code


def _still_relevant(gate: Gate, kind: str) -> bool:
    """A waiting notice or reminder for a gate that was decided meanwhile is dropped."""
    if kind in ("waiting", "reminder"):
        return gate.status == GateStatus.WAITING
    return True


def failed(gate_id: int, kind: str, channel: str, error: str) -> None:
    """Record a notification that failed after its last retry."""
    logger.error("%s notification %s of gate %s failed: %s", channel, kind, gate_id, error)
    gate = Gate.objects.filter(pk=gate_id).first()
    target = gate if gate is not None else ("gate", gate_id, "")
    with transaction.atomic():
        audit.record(
            None,
            "notification.failed",
            target,
            outcome=Outcome.FAILURE,
            channel=channel,
            kind=kind,
            error=error[:500],
        )

"""Gate notifications: email (Django's email backend), channels addressed by apprise URLs,
and the legacy Slack-compatible webhook of an environment.

A gate that starts waiting tells its eligible approvers (and whoever stands in for one of
them: governance.delegation); a reminder follows after the environment's reminder_minutes;
an escalation tells the backup group; the decision (open, overridden, rejected, timed out,
blocked) is announced the same way; a run that passed a protected environment's gate and
then failed ("run_failed") is told to the environment's channels and its triggerer.
Everything is sent from Celery tasks (governance/tasks.py) after
the gate's transaction commits, with retries and backoff. A failing channel never touches
the gate: after the last retry the failure is logged and audited ("notification.failed").

Channels (NotificationChannel) belong to an environment or to all of them, and each has an
apprise URL: Slack (slack://… or https://hooks.slack.com/services/…), Microsoft Teams
(workflows://… — Power Automate, which replaced Office 365 connectors), e-mail (mailto://…)
or a generic JSON webhook (json:// / jsons://). Each user may opt out of kinds or of e-mail
and add a personal apprise URL (NotificationPreference). Every channel message is one
NotificationDelivery row, retried by clearway.deliver_notification with exponential backoff;
one that still fails is marked failed (the admin lists them) and audited.
"""

from __future__ import annotations

import logging
import re

import apprise
import httpx
from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.message import EmailMessage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.kernel.queue import enqueue

from . import audit
from .approvers import eligible_approvers, overriders
from .models import (
    ChangeRequest,
    Enforcement,
    Gate,
    GateStatus,
    NotificationChannel,
    NotificationDelivery,
    NotificationPreference,
    Outcome,
)

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
    "change_request",  # a governance change request waits for you (not a gate's)
    "run_failed",
)

# How each kind reads in the preference list.
KIND_LABELS = {
    "waiting": "a gate waits for your approval",
    "reminder": "a reminder that a gate still waits",
    "escalated": "a gate escalated to you (its SLA passed)",
    "open": "a gate was approved",
    "overridden": "a gate was overridden (break-glass)",
    "rejected": "a gate was rejected",
    "timed_out": "a gate waited too long and was rejected by the system",
    "blocked": "a gate was blocked by policy",
    "run_failed": "a run failed after passing the gate of a protected environment",
    "change_request": "a governance change request waits for your review",
}

# Kinds about the run rather than the decision: told to the person who triggered it and to
# the environment's channels, not to the approvers.
RUN_KINDS = frozenset({"run_failed"})


class WebhookError(Exception):
    """The webhook did not accept the message (network error or a non-2xx answer)."""


class DeliveryError(Exception):
    """An apprise channel did not take the notification (retried with backoff)."""


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
            enqueue("clearway.notify_gate_channels", (gate_id, kind))
        except Exception:  # broker down: a lost notification must not break the caller
            logger.exception("could not queue the %s notification of gate %s", kind, gate_id)

    transaction.on_commit(send)


def run_failed(run) -> int:
    """A run that passed the gate of a protected environment (its stage there was allowed to
    deploy) ended failed: tell that environment's channels and the person who triggered it,
    once per such gate, after the run's transaction commits. Called by
    orchestrator.actions.advance when a run becomes failed; returns how many gates told."""
    passed = list(
        Gate.objects.filter(
            stage_run__run_id=run.pk,
            status__in=(GateStatus.OPEN, GateStatus.OVERRIDDEN),
            environment__protected=True,
        )
        .select_related("environment")
        .order_by("pk")
    )
    for gate in passed:
        schedule(gate, "run_failed")
    return len(passed)


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
        "run_failed": f"{what} failed after passing its gate",
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
    if kind == "run_failed":
        lines.append(f"Run status: {run.status}" + (f" ({run.reason})" if run.reason else ""))
    if kind == "overridden":
        for override in gate.overrides.select_related("user").order_by("created_at"):
            lines.append(f"Override by {override.user.get_username()}: {override.justification}")
    lines += ["", gate_url(gate)]
    return f"[Clearway] {headline}", "\n".join(lines)


def recipient_users(gate: Gate, kind: str) -> list:
    """Who a notification is for: the eligible approvers while the gate waits (and who may
    override, when a soft-mandatory denial holds it); for a decision, also the person who
    triggered the run (only them for a run kind: run_failed). Whoever stands in for an
    eligible approver (a delegation in force) is told too. Users who opted out of this kind
    are left out."""
    run = gate.stage_run.run
    users = [] if kind in RUN_KINDS else list(eligible_approvers(gate, run, with_delegates=True))
    held_by_soft_denial = gate.decisions.filter(
        current=True, enforcement=Enforcement.SOFT_MANDATORY, result__in=("deny", "error")
    ).exists()
    if kind in ("waiting", "reminder", "escalated") and held_by_soft_denial:
        users += overriders(gate)
    if kind not in ("waiting", "reminder", "escalated") and run.triggered_by is not None:
        users.append(run.triggered_by)
    prefs = {
        p.user_id: p for p in NotificationPreference.objects.filter(user__in=[u.pk for u in users])
    }
    seen: set[int] = set()
    result = []
    for user in users:
        pref = prefs.get(user.pk)
        if user.pk in seen or (pref is not None and not pref.wants(kind)):
            continue
        seen.add(user.pk)
        user.notification_preference = pref
        result.append(user)
    return result


def recipients(gate: Gate, kind: str) -> list[str]:
    """E-mail addresses for a notification (recipient_users who keep e-mail on)."""
    seen: set[str] = set()
    result = []
    for user in recipient_users(gate, kind):
        pref = user.notification_preference
        if pref is not None and not pref.email:
            continue
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


def failed(
    gate_id: int | None, kind: str, channel: str, error: str, request_id: int | None = None
) -> None:
    """Record a notification (of a gate, or of a change request) that failed after its last
    retry."""
    if request_id is not None:
        logger.error("%s notification of change request %s failed: %s", channel, request_id, error)
        request = ChangeRequest.objects.filter(pk=request_id).first()
        target = request if request is not None else ("change_request", request_id, "")
    else:
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


# --- apprise channels ---------------------------------------------------------------------

_SECRETISH = re.compile(r"^([a-z0-9+]+://)([^/?#@]*@)?([^/?#]*)(.*)$", re.IGNORECASE)


def mask(url: str) -> str:
    """An apprise URL fit to show and store: the scheme and host, nothing that may be a
    credential (user info, path tokens, query)."""
    match = _SECRETISH.match(url.strip())
    if not match:
        return "(unparsable URL)"
    scheme, _, host, rest = match.groups()
    if not re.fullmatch(r"(localhost|[\w-]+(\.[\w-]+)+)(:\d+)?", host):
        return f"{scheme}…"  # slack://TokenA/… : the "host" is a credential
    return f"{scheme}{host}/…" if rest.strip("/") else f"{scheme}{host}"


def valid_url(url: str) -> bool:
    return bool(apprise.Apprise().add(url))


def fan_out(gate_id: int, kind: str) -> list[int]:
    """One pending NotificationDelivery per channel of the gate's environment (or of all
    environments) that wants `kind`, and per recipient with a personal URL. Returns their
    ids, for the caller to queue."""
    gate = _load(gate_id)
    if gate is None or not _still_relevant(gate, kind):
        return []
    where = Q(environment=gate.environment) | Q(environment__isnull=True)
    people = [(u, u.notification_preference) for u in recipient_users(gate, kind)]
    return _create_deliveries(kind, where, people, gate=gate)


def _create_deliveries(kind: str, where: Q, people, **about) -> list[int]:
    """One pending delivery per enabled channel matching `where` that wants `kind`, and per
    (user, preference) of `people` with a personal URL; `about` is the gate or the change
    request. Returns their ids."""
    rows = [
        NotificationDelivery(kind=kind, channel=channel, target=mask(channel.url)[:255], **about)
        for channel in NotificationChannel.objects.filter(enabled=True).filter(where)
        if not channel.events or kind in channel.events
    ]
    rows += [
        NotificationDelivery(kind=kind, user=user, target=mask(pref.url)[:255], **about)
        for user, pref in people
        if pref is not None and pref.url.strip()
    ]
    return [row.pk for row in NotificationDelivery.objects.bulk_create(rows)]


def _url_of(delivery: NotificationDelivery) -> str:
    if delivery.channel is not None:
        return delivery.channel.url
    pref = NotificationPreference.objects.filter(user=delivery.user).first()
    return pref.url if pref else ""


def deliver(delivery_id: int) -> bool:
    """Send one delivery through apprise. True when sent (or nothing left to do); raises
    DeliveryError when the service did not take it, for the task to retry."""
    delivery = (
        NotificationDelivery.objects.select_related("channel", "user")
        .filter(pk=delivery_id)
        .first()
    )
    if delivery is None or delivery.status != NotificationDelivery.Status.PENDING:
        return True
    gate = _load(delivery.gate_id) if delivery.gate_id else None
    request = _pending_request(delivery.change_request_id) if delivery.change_request_id else None
    url = _url_of(delivery)
    if delivery.change_request_id and delivery.kind == "change_request":
        if request is None:  # decided, withdrawn or gone meanwhile: nothing left to say
            NotificationDelivery.objects.filter(pk=delivery_id).update(
                status=NotificationDelivery.Status.FAILED,
                last_error="the change request is no longer pending",
            )
            return True
    elif gate is None:
        url = ""
    if not url:
        NotificationDelivery.objects.filter(pk=delivery_id).update(
            status=NotificationDelivery.Status.FAILED, last_error="channel or gate is gone"
        )
        return True
    if request is not None:
        title, body = change_request_message(request)
    else:
        title, body = message(gate, delivery.kind)
    sender = apprise.Apprise()
    if not sender.add(url):
        error = f"{delivery.target}: not an apprise URL apprise can use"
        NotificationDelivery.objects.filter(pk=delivery_id).update(
            status=NotificationDelivery.Status.FAILED, attempts=delivery.attempts + 1,
            last_error=error,
        )  # fmt: skip
        failed(delivery.gate_id, delivery.kind, delivery.target, error, delivery.change_request_id)
        return True
    with apprise.LogCapture(level=apprise.logging.WARNING, fmt="%(message)s") as logs:
        ok = bool(sender.notify(title=title, body=body))
    if ok:
        NotificationDelivery.objects.filter(pk=delivery_id).update(
            status=NotificationDelivery.Status.SENT,
            attempts=delivery.attempts + 1,
            sent_at=timezone.now(),
            last_error="",
        )
        return True
    lines = logs.getvalue().strip().splitlines() or ["the service refused the notification"]
    error = "; ".join(dict.fromkeys(lines))
    error = error.replace(url, delivery.target)[:1000]
    NotificationDelivery.objects.filter(pk=delivery_id).update(
        attempts=delivery.attempts + 1, last_error=error
    )
    raise DeliveryError(f"{delivery.target}: {error}")


def delivery_failed(delivery_id: int, error: str) -> None:
    """After the last retry: the delivery is failed (listed for admins) and audited."""
    delivery = NotificationDelivery.objects.filter(pk=delivery_id).first()
    if delivery is None:
        return
    NotificationDelivery.objects.filter(pk=delivery_id).update(
        status=NotificationDelivery.Status.FAILED, last_error=error[:1000]
    )
    failed(delivery.gate_id, delivery.kind, delivery.target, error, delivery.change_request_id)


# --- governance change requests ---------------------------------------------------------


def change_request_reviewers(request: ChangeRequest) -> list:
    """Who may approve `request` (the holders of the permission the change needs, through a
    group or directly; not its proposer), less those who opted out of "change_request"."""
    from django.contrib.auth import get_user_model

    perm = "governance.change_policy" if request.policy_id else "governance.change_environment"
    users = (
        get_user_model()
        .objects.with_perm(
            perm, include_superusers=False, backend="django.contrib.auth.backends.ModelBackend"
        )
        .filter(is_active=True)
        .exclude(pk=request.proposed_by_id)
        .order_by("username")
    )
    users = list(users)
    prefs = {
        p.user_id: p for p in NotificationPreference.objects.filter(user__in=[u.pk for u in users])
    }
    return [u for u in users if prefs.get(u.pk) is None or prefs[u.pk].wants("change_request")]


def change_request_message(request: ChangeRequest) -> tuple[str, str]:
    url = f"{settings.CLEARWAY['SITE_URL'].rstrip('/')}/change-requests/{request.pk}/"
    who = request.proposed_by.get_username()
    headline = f"A governance change request waits for you: {request.summary}"
    body = "\n".join(
        [
            headline,
            "",
            f"Proposed by {who}. It takes effect only when someone else approves it.",
            "",
            url,
        ]
    )
    return f"[Clearway] {headline}"[:200], body


def _pending_request(request_id: int) -> ChangeRequest | None:
    return (
        ChangeRequest.objects.select_related("proposed_by", "policy", "environment")
        .filter(pk=request_id, status="pending")
        .first()
    )


def fan_out_change_request(request_id: int) -> list[int]:
    """One pending NotificationDelivery per apprise channel that wants "change_request" — the
    environment's own and the all-environment ones for an environment's change, the
    all-environment ones for a policy's — and per reviewer with a personal URL. Returns
    their ids, for the caller to queue (delivered and retried like a gate's)."""
    request = _pending_request(request_id)
    if request is None:
        return []
    kind = "change_request"
    where = Q(environment__isnull=True)
    if request.environment_id:
        where |= Q(environment_id=request.environment_id)
    reviewers = change_request_reviewers(request)
    prefs = NotificationPreference.objects.filter(user__in=[u.pk for u in reviewers])
    people = [(pref.user, pref) for pref in prefs.select_related("user")]
    return _create_deliveries(kind, where, people, change_request=request)


def send_change_request_email(request_id: int) -> int:
    """E-mail the reviewers of a pending change request; one message each."""
    request = (
        ChangeRequest.objects.select_related("proposed_by", "policy", "environment")
        .filter(pk=request_id, status="pending")
        .first()
    )
    if request is None:
        return 0
    to = []
    for user in change_request_reviewers(request):
        pref = NotificationPreference.objects.filter(user=user).first()
        if (pref is None or pref.email) and (user.email or "").strip():
            to.append(user.email.strip())
    if not to:
        return 0
    subject, body = change_request_message(request)
    connection = get_connection()
    mails = [EmailMessage(subject, body, None, [address], connection=connection) for address in to]
    return connection.send_messages(mails) or 0


def schedule_change_request(request: ChangeRequest) -> None:
    """Tell the eligible reviewers "a governance change request waits for you", after the
    current transaction commits (a Celery task by name, retried like the gate e-mails)."""
    request_id = request.pk

    def send() -> None:
        try:
            enqueue("clearway.notify_change_request", (request_id,))
            enqueue("clearway.notify_change_request_channels", (request_id,))
        except Exception:  # broker down: a lost notification must not break the caller
            logger.exception("could not queue the notification of change request %s", request_id)

    transaction.on_commit(send)

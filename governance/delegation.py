"""Delegation (out of office): the verbs that create and revoke a Delegation.

While a delegation is in force its delegate may decide gates the delegator may decide — the
delegator's approve permission and approval groups count, and the decision records
`on_behalf_of` ("sara for sam"). Who may decide what is governance.approvers; this module
only writes the delegations, each change in one transaction with its audit row, and a
refused attempt audited as denied.

Rules checked here: nobody delegates to themselves; the period ends after it starts and
in the future; one delegator has at most one delegation in force at any moment (periods
may not overlap — revoke the current one first); only the delegator themselves or a
superuser creates or revokes a delegation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from . import audit
from .models import Delegation, Environment, Outcome
from .permissions import restrict

REASON_MAX = 200


class DelegationError(Exception):
    """A refused delegation change, with a message that says what to fix and the rule that
    refused (audit details). `status_code` is what the API answers."""

    status_code = 400

    def __init__(self, message: str, *, rule: str, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.rule = rule
        if status_code:
            self.status_code = status_code


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


def _refused(actor, action: str, target, exc: DelegationError, **details) -> None:
    with transaction.atomic():
        audit.record(
            actor,
            action,
            target,
            outcome=Outcome.DENIED,
            rule=exc.rule,
            message=exc.message,
            **details,
        )


def _check_new(actor, delegator, delegate, starts_at, ends_at, now) -> None:
    if delegator is None or not getattr(delegator, "is_authenticated", False):
        raise DelegationError("sign in to delegate", rule="permission", status_code=403)
    if actor.pk != delegator.pk and not actor.is_superuser:
        raise DelegationError(
            f"{actor.get_username()} may not delegate {delegator.get_username()}'s approvals: "
            "only the approver themselves (or an administrator) may",
            rule="permission",
            status_code=403,
        )
    if delegate is None:
        raise DelegationError("name the colleague to delegate to", rule="delegate")
    if delegate.pk == delegator.pk:
        raise DelegationError(
            f"{delegator.get_username()} cannot delegate to themselves: name a colleague",
            rule="self-delegation",
        )
    if not delegate.is_active:
        raise DelegationError(
            f"{delegate.get_username()} is not an active user and cannot be a delegate",
            rule="delegate",
        )
    if starts_at is None or ends_at is None:
        raise DelegationError("a delegation needs a start and an end", rule="period")
    if ends_at <= starts_at:
        raise DelegationError(
            f"the delegation ends ({_iso(ends_at)}) before it starts ({_iso(starts_at)}): "
            "the end must come after the start",
            rule="period",
        )
    if ends_at <= now:
        raise DelegationError(
            f"the delegation would end in the past ({_iso(ends_at)}): choose a future end",
            rule="period",
        )
    if not restrict(Environment.objects.all(), delegator, "approve").exists():
        raise DelegationError(
            f"{delegator.get_username()} approves deployments nowhere, so there is nothing to "
            "delegate",
            rule="eligibility",
        )
    clash = (
        Delegation.objects.filter(
            delegator=delegator,
            revoked_at__isnull=True,
            starts_at__lt=ends_at,
            ends_at__gt=max(starts_at, now),
        )
        .select_related("delegate")
        .order_by("starts_at")
        .first()
    )
    if clash is not None:
        raise DelegationError(
            f"{delegator.get_username()} already delegates to "
            f"{clash.delegate.get_username()} from {_iso(clash.starts_at)} to "
            f"{_iso(clash.ends_at)}, which overlaps this period: revoke that delegation "
            "first or choose dates outside it",
            rule="overlap",
        )


def create_delegation(
    *,
    actor,
    delegate,
    starts_at: datetime,
    ends_at: datetime,
    reason: str = "",
    delegator=None,
    now: datetime | None = None,
) -> Delegation:
    """`delegator` (default: the actor) lets `delegate` decide gates in their place from
    `starts_at` to `ends_at`. Audited as "delegation.create"; a refusal (DelegationError) is
    audited as denied."""
    now = now or timezone.now()
    delegator = delegator if delegator is not None else actor
    reason = (reason or "").strip()[:REASON_MAX]
    details = {
        "delegator": delegator.get_username() if delegator is not None else None,
        "delegate": delegate.get_username() if delegate is not None else None,
        "starts_at": _iso(starts_at) if starts_at else None,
        "ends_at": _iso(ends_at) if ends_at else None,
        "reason": reason,
    }
    try:
        with transaction.atomic():
            # One delegator's changes one at a time (the overlap check holds under races).
            get_user_model().objects.select_for_update().filter(pk=delegator.pk).first()
            _check_new(actor, delegator, delegate, starts_at, ends_at, now)
            delegation = Delegation.objects.create(
                delegator=delegator,
                delegate=delegate,
                starts_at=starts_at,
                ends_at=ends_at,
                reason=reason,
                created_by=actor,
                created_at=now,
            )
            audit.record(actor, "delegation.create", delegation, at=now, **details)
    except DelegationError as exc:
        target = ("user", getattr(delegator, "pk", ""), details["delegator"] or "")
        _refused(actor, "delegation.create", target, exc, **details)
        raise
    return delegation


def revoke_delegation(delegation: Delegation, *, actor, now: datetime | None = None) -> Delegation:
    """End a delegation now (or cancel one that has not started). The delegator or a
    superuser may. Audited as "delegation.revoke"; a refusal is audited as denied."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            row = (
                Delegation.objects.select_for_update(of=("self",))
                .select_related("delegator", "delegate")
                .get(pk=delegation.pk)
            )
            if actor.pk != row.delegator_id and not actor.is_superuser:
                raise DelegationError(
                    f"{actor.get_username()} may not revoke a delegation of "
                    f"{row.delegator.get_username()}",
                    rule="permission",
                    status_code=403,
                )
            if row.revoked_at is not None:
                raise DelegationError(
                    f"delegation {row.pk} was already revoked at {_iso(row.revoked_at)}",
                    rule="state",
                    status_code=409,
                )
            if row.ends_at <= now:
                raise DelegationError(
                    f"delegation {row.pk} already ended at {_iso(row.ends_at)}",
                    rule="state",
                    status_code=409,
                )
            row.revoked_at, row.revoked_by = now, actor
            row.save(update_fields=["revoked_at", "revoked_by"])
            audit.record(
                actor,
                "delegation.revoke",
                row,
                at=now,
                delegator=row.delegator.get_username(),
                delegate=row.delegate.get_username(),
                starts_at=_iso(row.starts_at),
                ends_at=_iso(row.ends_at),
            )
    except DelegationError as exc:
        _refused(actor, "delegation.revoke", delegation, exc)
        raise
    return row

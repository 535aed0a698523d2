"""The querysets of a report: deployments to protected environments that the user may see."""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Cast, Coalesce

from orchestrator.models import StageRun, StageStatus

from ..models import (
    Approval,
    ApprovalDecision,
    AuditEvent,
    GateStatus,
    Outcome,
    Override,
    Tier,
)
from ..permissions import restrict
from .constants import APPROVE_ACTIONS, OVERRIDE_ACTIONS
from .filters import AuditFilters, ChangeFilters

# --- querysets --------------------------------------------------------------------------


def _denied_approval_events() -> QuerySet:
    """Refused attempts to approve or override a gate (audited by governance.actions even
    though the attempt itself rolled back)."""
    return AuditEvent.objects.filter(
        target_type="gate", action__in=APPROVE_ACTIONS + OVERRIDE_ACTIONS, outcome=Outcome.DENIED
    )


def exception_q() -> Q:
    """Which changes are exceptions (the same test as `_row_exceptions`)."""
    refused = Exists(
        _denied_approval_events().filter(
            target_id=Cast(OuterRef("gate__id"), output_field=models.CharField())
        )
    )
    expired = Approval.objects.filter(
        gate__stage_run=OuterRef("pk"),
        void=False,
        decision=ApprovalDecision.APPROVE,
        expires_at__lt=OuterRef("started_at"),
    )
    return (
        Q(Exists(Override.objects.filter(gate__stage_run=OuterRef("pk"))))
        | Q(Exists(expired))
        | Q(gate__status__in=[GateStatus.REJECTED, GateStatus.BLOCKED])
        | Q(status=StageStatus.FAILED, environment__tier=Tier.PRODUCTION)
        | Q(refused)
    )


def change_queryset(user, filters: ChangeFilters, *, as_of: datetime) -> QuerySet:
    """One row per deployment to a protected environment that the user may see: a stage run
    with a gate, or one that started against an environment marked protected. Ordered by the
    moment it was requested, then id, so a re-export lists the same rows in the same order."""
    qs = StageRun.objects.filter(
        Q(gate__isnull=False) | Q(environment__protected=True, started_at__isnull=False)
    ).annotate(requested_at=Coalesce("gate__created_at", "started_at"))
    qs = restrict(qs, user, "view")
    end = min(filters.end, as_of) if filters.end else as_of
    qs = qs.filter(requested_at__lt=end)
    if filters.start:
        qs = qs.filter(requested_at__gte=filters.start)
    if filters.environment:
        qs = qs.filter(environment__name=filters.environment)
    if filters.pipeline:
        qs = qs.filter(run__pipeline__slug=filters.pipeline)
    if filters.team:
        qs = qs.filter(run__pipeline__team__slug=filters.team)
    if filters.outcome:
        qs = qs.filter(status=filters.outcome)
    if filters.exceptions_only:
        qs = qs.filter(exception_q())
    return qs.order_by("requested_at", "id")


def audit_queryset(user, filters: AuditFilters, *, up_to_seq: int) -> QuerySet:
    qs = restrict(AuditEvent.objects.filter(seq__lte=up_to_seq), user, "export")
    if filters.start:
        qs = qs.filter(at__gte=filters.start)
    if filters.end:
        qs = qs.filter(at__lt=filters.end)
    if filters.actor:
        qs = qs.filter(actor_name=filters.actor)
    if filters.action:
        if filters.action.endswith("*") or filters.action.endswith("."):
            qs = qs.filter(action__startswith=filters.action.rstrip("*"))
        else:
            qs = qs.filter(action=filters.action)
    if filters.target:
        kind, _, ident = filters.target.partition(":")
        qs = qs.filter(target_type=kind)
        if ident:
            qs = qs.filter(target_id=ident)
    if filters.outcome:
        qs = qs.filter(outcome=filters.outcome)
    return qs.order_by("seq")

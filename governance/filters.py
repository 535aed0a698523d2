"""List filters of governance's API (django-filter FilterSets; see orchestrator/filters.py
for the fields and the error shape)."""

from __future__ import annotations

import django_filters

from orchestrator.filters import (
    ChoiceListFilter,
    IdFilter,
    IsoDateTimeFilter,
    TrueFalseFilter,
)

from .models import AuditEvent, Gate, GateStatus, Outcome, Policy, PolicyDecision

DECISION_RESULTS = ["pass", "warn", "deny", "error"]


class GateFilter(django_filters.FilterSet):
    # "waiting" alone is the caller's inbox: GateViewSet.get_queryset narrows the gates to
    # those the caller may decide now; the filter then keeps the waiting ones (all of them).
    status = ChoiceListFilter(
        allowed=GateStatus.values,
        noun="status",
        help_text='"waiting" lists the gates the caller may decide now (an approver\'s '
        "inbox); any other status, or a comma-separated list, filters the gates the "
        "caller may view",
    )
    environment = django_filters.CharFilter(
        field_name="environment__name", help_text="environment name"
    )
    pipeline = django_filters.CharFilter(
        field_name="stage_run__run__pipeline__slug", help_text="pipeline slug"
    )
    run = IdFilter(field_name="stage_run__run_id", noun="run id", help_text="run id")

    class Meta:
        model = Gate
        fields: list[str] = []


class PolicyFilter(django_filters.FilterSet):
    enabled = TrueFalseFilter(help_text="true: enabled policies only; false: disabled only")

    class Meta:
        model = Policy
        fields: list[str] = []


class DecisionFilter(django_filters.FilterSet):
    gate = IdFilter(field_name="gate_id", noun="gate id", help_text="gate id")
    policy = django_filters.CharFilter(
        field_name="policy_version__policy__name", help_text="policy name"
    )
    result = ChoiceListFilter(allowed=DECISION_RESULTS, noun="result", help_text="result")
    current = TrueFalseFilter(
        help_text="true: the decisions the gate holds now; false: superseded ones"
    )

    class Meta:
        model = PolicyDecision
        fields: list[str] = []


class AuditEventFilter(django_filters.FilterSet):
    since = IsoDateTimeFilter(
        field_name="at", lookup_expr="gte", help_text="ISO 8601 date-time (inclusive)"
    )
    until = IsoDateTimeFilter(
        field_name="at", lookup_expr="lt", help_text="ISO 8601 date-time (exclusive)"
    )
    actor = django_filters.CharFilter(field_name="actor_name", help_text="username (or system)")
    action = django_filters.CharFilter(
        method="filter_action", help_text="exact action, or a prefix ending in * (policy.*)"
    )
    target = django_filters.CharFilter(
        method="filter_target", help_text="target type, or type:id (policy:3)"
    )
    outcome = ChoiceListFilter(
        allowed=Outcome.values, noun="outcome", lookup_expr="in", help_text="outcome"
    )

    class Meta:
        model = AuditEvent
        fields: list[str] = []

    def filter_action(self, qs, name, value):
        if value.endswith("*"):
            return qs.filter(action__startswith=value[:-1])
        return qs.filter(action=value)

    def filter_target(self, qs, name, value):
        kind, _, ident = value.partition(":")
        qs = qs.filter(target_type=kind)
        return qs.filter(target_id=ident) if ident else qs

"""Delivery (DORA) and governance metrics for the overview, computed with SQL aggregates and
always restricted to the pipelines the user may view.

Definitions (period = the last `days` days, by the time a deploy finished):
- a *production deploy* is a stage run in a production-tier environment that ran to an end,
  succeeded or failed (a stage blocked at its gate never deployed anything);
- deployment frequency: successful production deploys per day;
- lead time for changes: median of run created → production stage finished, over successful
  production deploys;
- change failure rate: failed production deploys / all production deploys;
- time to restore: median of failed production deploy → next successful production deploy of
  the same pipeline (failures not yet restored are counted apart);
- approval wait: median of gate created → decided, over gates decided in the period;
- override rate: overridden gates / decided gates;
- blocks per policy: per mandatory (soft or hard) policy, the gates whose *final outcome* was
  blocked or overridden because of it — the gate ended BLOCKED or OVERRIDDEN and the policy's
  current (last) decision on it denied or failed — as a count and as a rate of the gates the
  policy evaluated (gates with a current decision of it). A denial that approvals later lifted
  (a curable hard-mandatory policy such as "2 approvals needed"), a re-evaluation and a gate
  that was rejected by a person are not blocks.

The median is an aggregate function of our own: PERCENTILE_CONT on PostgreSQL, a small
registered aggregate on SQLite; both ignore NULLs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import (
    Aggregate,
    Case,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Subquery,
    When,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from governance.models import Enforcement, Gate, GateStatus, PolicyDecision, Tier
from governance.permissions import pipelines
from orchestrator.models import StageRun, StageStatus

PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30


def period_days(value) -> int:
    """The period asked for, if it is one we offer; otherwise the default."""
    try:
        days = int(value)
    except (TypeError, ValueError):
        return DEFAULT_PERIOD
    return days if days in PERIODS else DEFAULT_PERIOD


class _SqliteMedian:
    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self):
        return statistics.median(self.values) if self.values else None


class Median(Aggregate):
    """The median of an expression (NULLs ignored). Durations come back as timedelta."""

    function = "CLEARWAY_MEDIAN"
    name = "Median"

    def as_sqlite(self, compiler, connection, **extra_context):
        # Register on the live connection: cheap, idempotent, and correct for connections
        # opened before this module was imported.
        connection.ensure_connection()
        connection.connection.create_aggregate("CLEARWAY_MEDIAN", 1, _SqliteMedian)
        return self.as_sql(compiler, connection, **extra_context)

    def as_postgresql(self, compiler, connection, **extra_context):
        # On a copy: Aggregate.as_sql derives its FILTER template from self.template.
        clone = self.copy()
        clone.function = "PERCENTILE_CONT"
        clone.template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
        return clone.as_sql(compiler, connection, **extra_context)


def _span(end_field: str, start_field: str) -> ExpressionWrapper:
    return ExpressionWrapper(F(end_field) - F(start_field), output_field=DurationField())


@dataclass
class Metrics:
    days: int
    since: datetime
    deployments: int = 0
    failed_deployments: int = 0
    deploys_per_day: float = 0.0
    lead_time: timedelta | None = None
    change_failure_rate: float | None = None
    time_to_restore: timedelta | None = None
    unrestored: int = 0
    approval_wait: timedelta | None = None
    gates: int = 0
    decided_gates: int = 0
    overridden_gates: int = 0
    override_rate: float | None = None
    blocks_per_policy: list[dict] = field(default_factory=list)
    chart: dict = field(default_factory=dict)


def production_deploys(user, since: datetime):
    return StageRun.objects.filter(
        run__pipeline__in=pipelines(user),
        environment__tier=Tier.PRODUCTION,
        status__in=[StageStatus.SUCCEEDED, StageStatus.FAILED],
        finished_at__gte=since,
    )


def compute(user, days: int = DEFAULT_PERIOD, *, now: datetime | None = None) -> Metrics:
    """All overview metrics for `user` over the last `days` days: four queries whatever the
    amount of history."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    m = Metrics(days=days, since=since)
    ok, bad = Q(status=StageStatus.SUCCEEDED), Q(status=StageStatus.FAILED)
    deploys = production_deploys(user, since)

    # For a failed deploy: the next successful production deploy of the same pipeline, found
    # through the runs index (pipeline, created_at) — later runs are walked in order until
    # one deployed. CASE keeps the subquery to failed rows.
    next_success = (
        StageRun.objects.filter(
            run__pipeline=OuterRef("run__pipeline"),
            run__created_at__gt=OuterRef("run__created_at"),
            environment__tier=Tier.PRODUCTION,
            status=StageStatus.SUCCEEDED,
            finished_at__gt=OuterRef("finished_at"),
        )
        .order_by("run__created_at")
        .values("finished_at")[:1]
    )
    row = deploys.annotate(
        restored_at=Case(When(bad, then=Subquery(next_success)), output_field=DateTimeField())
    ).aggregate(
        ok=Count("pk", filter=ok),
        bad=Count("pk", filter=bad),
        lead=Median(_span("finished_at", "run__created_at"), filter=ok),
        restore=Median(_span("restored_at", "finished_at"), filter=bad),
        unrestored=Count("pk", filter=bad & Q(restored_at__isnull=True)),
    )
    m.deployments, m.failed_deployments = row["ok"], row["bad"]
    m.deploys_per_day = m.deployments / days
    total = m.deployments + m.failed_deployments
    m.change_failure_rate = m.failed_deployments / total if total else None
    m.lead_time = row["lead"]
    m.time_to_restore, m.unrestored = row["restore"], row["unrestored"]

    gates = Gate.objects.filter(stage_run__run__pipeline__in=pipelines(user), created_at__gte=since)
    decided = Q(decided_at__isnull=False)
    row = gates.aggregate(
        total=Count("pk"),
        decided=Count("pk", filter=decided),
        overridden=Count("pk", filter=Q(status=GateStatus.OVERRIDDEN)),
        wait=Median(_span("decided_at", "created_at"), filter=decided),
    )
    m.gates, m.decided_gates, m.overridden_gates = row["total"], row["decided"], row["overridden"]
    m.approval_wait = row["wait"]
    m.override_rate = m.overridden_gates / m.decided_gates if m.decided_gates else None

    blocked = Q(
        result__in=["deny", "error"],
        gate__status__in=[GateStatus.BLOCKED, GateStatus.OVERRIDDEN],
    )
    rows = (
        PolicyDecision.objects.filter(
            gate__in=gates,
            current=True,
            enforcement__in=[Enforcement.SOFT_MANDATORY, Enforcement.HARD_MANDATORY],
        )
        .values(policy=F("policy_version__policy__name"))
        .annotate(
            gates=Count("gate", distinct=True, filter=blocked),
            evaluated=Count("gate", distinct=True),
        )
        .order_by("-gates", "policy")
    )
    m.blocks_per_policy = [
        {**row, "rate": row["gates"] / row["evaluated"] if row["evaluated"] else None}
        for row in rows
    ]

    m.chart = deployments_per_day(deploys, since.date(), now.date())
    return m


def deployments_per_day(deploys, first: date, last: date) -> dict:
    """Chart data: labels (ISO dates, every day of the period) and succeeded/failed counts."""
    rows = (
        deploys.annotate(day=TruncDate("finished_at"))
        .values("day")
        .annotate(
            ok=Count("pk", filter=Q(status=StageStatus.SUCCEEDED)),
            bad=Count("pk", filter=Q(status=StageStatus.FAILED)),
        )
        .order_by("day")
    )
    by_day = {r["day"]: (r["ok"], r["bad"]) for r in rows}
    labels, ok, bad = [], [], []
    day = first
    while day <= last:
        counts = by_day.get(day, (0, 0))
        labels.append(day.isoformat())
        ok.append(counts[0])
        bad.append(counts[1])
        day += timedelta(days=1)
    return {"labels": labels, "succeeded": ok, "failed": bad}

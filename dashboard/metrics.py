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

The tiles read these numbers from daily rollups (`overview`, orchestrator.rollups): the same
definitions over whole UTC days, as of the last rollup pass (the tile says how long ago);
the medians come from duration histograms, exact when the median's bucket holds one distinct
value and within 4.4 % otherwise. `compute` is the direct computation from the source rows.

The median is an aggregate function of our own: PERCENTILE_CONT on PostgreSQL, a small
registered aggregate on SQLite; both ignore NULLs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
    Sum,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from governance.models import Gate, GateStatus
from governance.permissions import pipelines
from orchestrator import rollups
from orchestrator.models import MetricHistogram, MetricRollup, PolicyRollup, StageStatus

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
    as_of: datetime | None = None  # the data's time: the last rollup pass, or now
    from_rollups: bool = False


def production_deploys(user, since: datetime):
    return rollups.production_deploys().filter(
        run__pipeline__in=pipelines(user), finished_at__gte=since
    )


def compute(
    user, days: int = DEFAULT_PERIOD, *, now: datetime | None = None, since: datetime | None = None
) -> Metrics:
    """All overview metrics for `user` over the last `days` days (or from `since`), straight
    from the source rows: the definitions. Four queries, but each scans every row of the
    period; the pages read `overview` (the rollups) instead."""
    now = now or timezone.now()
    since = since or now - timedelta(days=days)
    m = Metrics(days=days, since=since, as_of=now)
    ok, bad = Q(status=StageStatus.SUCCEEDED), Q(status=StageStatus.FAILED)
    deploys = production_deploys(user, since)

    row = rollups.with_restore(deploys).aggregate(
        ok=Count("pk", filter=ok),
        bad=Count("pk", filter=bad),
        lead=Median(_span("finished_at", "run__created_at"), filter=ok),
        restore=Median(_span("restored_at", "finished_at"), filter=bad),
        unrestored=Count("pk", filter=bad & Q(restored_at__isnull=True)),
    )
    m.deployments, m.failed_deployments = row["ok"], row["bad"]
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
    _finish(m, rollups.policy_blocks(gates))
    m.chart = deployments_per_day(deploys, since.date(), now.date())
    return m


def _finish(m: Metrics, policy_rows) -> None:
    """The rates, and blocks per policy in their order."""
    m.deploys_per_day = m.deployments / m.days
    total = m.deployments + m.failed_deployments
    m.change_failure_rate = m.failed_deployments / total if total else None
    m.override_rate = m.overridden_gates / m.decided_gates if m.decided_gates else None
    rows = sorted(policy_rows, key=lambda r: (-r["gates"], r["policy"]))
    m.blocks_per_policy = [
        {
            "policy": r["policy"],
            "gates": r["gates"],
            "evaluated": r["evaluated"],
            "rate": r["gates"] / r["evaluated"] if r["evaluated"] else None,
        }
        for r in rows
    ]


def overview(user, days: int = DEFAULT_PERIOD, *, now: datetime | None = None) -> Metrics:
    """The metrics the tiles show, read from the daily rollups (orchestrator.rollups): four
    queries over days × visible pipelines × buckets rows, whatever the history. The period is
    whole UTC days: from 00:00 on the day `days` days ago through the last pass (`as_of`).
    On a fresh install (no pass yet) the first request runs the first pass itself."""
    now = now or timezone.now()
    state = rollups.state()
    if state is None or state.computed_at is None:
        rollups.refresh(now=now)  # waits for a first pass running elsewhere, if any
        state = rollups.state()
    first = now.astimezone(UTC).date() - timedelta(days=days)
    since = datetime.combine(first, dtime.min, tzinfo=UTC)
    m = Metrics(days=days, since=since, as_of=state.computed_at, from_rollups=True)
    visible = pipelines(user)
    per_day = (
        MetricRollup.objects.filter(day__gte=first, pipeline__in=visible)
        .values("day")
        .annotate(
            ok=Sum("deploys_ok"),
            bad=Sum("deploys_failed"),
            unrestored=Sum("unrestored"),
            gates=Sum("gates"),
            decided=Sum("decided_gates"),
            overridden=Sum("overridden_gates"),
        )
        .order_by("day")
    )
    by_day = {}
    for r in per_day:
        by_day[r["day"]] = (r["ok"], r["bad"])
        m.deployments += r["ok"]
        m.failed_deployments += r["bad"]
        m.unrestored += r["unrestored"]
        m.gates += r["gates"]
        m.decided_gates += r["decided"]
        m.overridden_gates += r["overridden"]
    hists: dict[int, dict] = {metric: {} for metric in MetricHistogram.Metric}
    buckets = (
        MetricHistogram.objects.filter(day__gte=first, pipeline__in=visible)
        .values("metric", "bucket")
        .annotate(n=Sum("count"), low=Min("low"), high=Max("high"))
        .order_by()
    )
    for r in buckets:
        hists[r["metric"]][r["bucket"]] = [r["n"], r["low"], r["high"]]
    m.lead_time = rollups.median(hists[MetricHistogram.Metric.LEAD_TIME])
    m.time_to_restore = rollups.median(hists[MetricHistogram.Metric.TIME_TO_RESTORE])
    m.approval_wait = rollups.median(hists[MetricHistogram.Metric.APPROVAL_WAIT])
    policies = (
        PolicyRollup.objects.filter(day__gte=first, pipeline__in=visible)
        .values("policy")
        .annotate(gates=Sum("blocked"), evaluated=Sum("evaluated"))
        .order_by()
    )
    _finish(m, policies)
    m.chart = _chart(by_day, first, now.astimezone(UTC).date())
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
    return _chart({r["day"]: (r["ok"], r["bad"]) for r in rows}, first, last)


def _chart(by_day: dict, first: date, last: date) -> dict:
    labels, ok, bad = [], [], []
    day = first
    while day <= last:
        counts = by_day.get(day, (0, 0))
        labels.append(day.isoformat())
        ok.append(counts[0])
        bad.append(counts[1])
        day += timedelta(days=1)
    return {"labels": labels, "succeeded": ok, "failed": bad}

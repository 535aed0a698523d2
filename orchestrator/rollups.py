"""Daily rollups of the overview's delivery (DORA) and governance metrics, so that the tiles
read a bounded number of rows (days in the period × pipelines × buckets) whatever the
amount of history.

What a day holds (UTC days; the definitions are dashboard.metrics'):
- MetricRollup, per day and pipeline: production deploys by the day they *finished*
  (succeeded, failed, failed and not restored yet), gates by the day they were *created*
  (all, decided, overridden);
- MetricHistogram, per day, pipeline and metric: the durations behind the three medians
  (lead time, time to restore, approval wait) in log-spaced buckets, SUB per doubling, with
  each bucket's count, smallest and largest value;
- PolicyRollup, per day, pipeline and mandatory policy: gates it evaluated and gates whose
  final outcome was blocked or overridden because of it.

A pass (`refresh`, the `clearway.metric_rollups` beat task, every
CLEARWAY_METRIC_ROLLUP_INTERVAL seconds) recomputes whole days from the source rows, each
day in one transaction, under the RollupState row lock:
- today always, and yesterday when the day changed since the last pass;
- the days of the gates and stage runs named by audit events newer than the watermark (the
  audit sequence number: every status change is audited in its own transaction, so a
  decision on an old gate or a late deploy is seen);
- for each pipeline that deployed successfully on one of those days, the days that still
  had a failure not restored (its time to restore may be known now);
- everything in the horizon (HORIZON_DAYS) on the first pass and then once every
  FULL_EVERY (what no audit event names, e.g. rows written by a bulk import, is caught
  there); days beyond the horizon are deleted.
Recomputing a day costs one day of rows, so a pass costs the rate of activity, never the
history.

Medians from the buckets: the values of a bucket lie within a factor 2^(1/SUB) of each
other; the median's rank is located by the counts, and interpolated linearly between the
bucket's smallest and largest value. It is exact when that bucket holds one distinct value,
and otherwise within the bucket's width: at most 4.4 % (2^(1/16) - 1) of the true median
(PostgreSQL's PERCENTILE_CONT(0.5) over the same rows).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from django.db import transaction
from django.db.models import Case, Count, DateTimeField, F, OuterRef, Q, Subquery, When
from django.utils import timezone

from governance.models import AuditEvent, Enforcement, Gate, GateStatus, PolicyDecision, Tier

from .models import (
    MetricHistogram,
    MetricRollup,
    PolicyRollup,
    RollupState,
    StageRun,
    StageStatus,
)

STATE = "metrics"
HORIZON_DAYS = 91  # the longest period the overview offers (90 days) and today
SUB = 16  # buckets per doubling of a duration: relative width 2^(1/16) - 1 = 4.4 %
FULL_EVERY = timedelta(hours=24)
MANDATORY = [Enforcement.SOFT_MANDATORY, Enforcement.HARD_MANDATORY]
BLOCKED = Q(
    result__in=["deny", "error"],
    gate__status__in=[GateStatus.BLOCKED, GateStatus.OVERRIDDEN],
)
Metric = MetricHistogram.Metric


# --- the definitions shared with dashboard.metrics --------------------------------------


def production_deploys():
    """Stage runs in a production-tier environment that ran to an end (succeeded or
    failed); a stage blocked at its gate never deployed anything."""
    return StageRun.objects.filter(
        environment__tier=Tier.PRODUCTION,
        status__in=[StageStatus.SUCCEEDED, StageStatus.FAILED],
    )


def next_success():
    """For a failed deploy (OuterRef): the finish of the next successful production deploy of
    the same pipeline, found through the runs index (pipeline, created_at)."""
    return (
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


def with_restore(deploys):
    """`restored_at` on failed deploys (CASE keeps the subquery to the failed rows)."""
    return deploys.annotate(
        restored_at=Case(
            When(status=StageStatus.FAILED, then=Subquery(next_success())),
            output_field=DateTimeField(),
        )
    )


def policy_blocks(gates, **group):
    """Per mandatory policy (its name, and `group`'s other expressions): gates of `gates` it
    evaluated (a current decision of it) and gates whose final outcome was blocked or
    overridden because of it."""
    return (
        PolicyDecision.objects.filter(gate__in=gates, current=True, enforcement__in=MANDATORY)
        .values(policy=F("policy_version__policy__name"), **group)
        .annotate(
            gates=Count("gate", distinct=True, filter=BLOCKED),
            evaluated=Count("gate", distinct=True),
        )
        .order_by()
    )


# --- histograms -------------------------------------------------------------------------


def bucket_of(seconds: float) -> int:
    """0 for less than a second, then SUB buckets per doubling: bucket b >= 1 holds
    [2^((b-1)/SUB), 2^(b/SUB)) seconds."""
    if seconds < 1:
        return 0
    return 1 + math.floor(SUB * math.log2(seconds))


def add(hist: dict, seconds: float) -> None:
    b = bucket_of(seconds)
    entry = hist.get(b)
    if entry is None:
        hist[b] = [1, seconds, seconds]
    else:
        entry[0] += 1
        entry[1] = min(entry[1], seconds)
        entry[2] = max(entry[2], seconds)


def median(hist: dict) -> timedelta | None:
    """The median of the values a histogram {bucket: [count, low, high]} counted, as
    PERCENTILE_CONT(0.5) defines it (the mean of the two middle values of an even count),
    each middle value interpolated within its bucket."""
    n = sum(entry[0] for entry in hist.values())
    if not n:
        return None
    ranks = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
    values = []
    for rank in ranks:
        seen = 0
        for b in sorted(hist):
            count, low, high = hist[b]
            if rank < seen + count:
                j = rank - seen
                values.append(low if count == 1 else low + (high - low) * j / (count - 1))
                break
            seen += count
    return timedelta(seconds=sum(values) / len(values))


# --- one day ----------------------------------------------------------------------------


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, dtime.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def compute_day(day: date) -> tuple[list, list, list]:
    """The rollup rows of one day, from the source rows: three queries."""
    start, end = day_bounds(day)
    rows: dict[int, MetricRollup] = {}
    hists: dict[tuple[int, int], dict] = defaultdict(dict)

    def rollup(pipeline_id):
        if pipeline_id not in rows:
            rows[pipeline_id] = MetricRollup(day=day, pipeline_id=pipeline_id)
        return rows[pipeline_id]

    deploys = with_restore(
        production_deploys().filter(finished_at__gte=start, finished_at__lt=end)
    ).values_list("run__pipeline_id", "status", "finished_at", "run__created_at", "restored_at")
    deploys = deploys.order_by()  # no sort (the models' default ordering joins and sorts)
    for pipeline_id, status, finished, created, restored in deploys:
        r = rollup(pipeline_id)
        if status == StageStatus.SUCCEEDED:
            r.deploys_ok += 1
            add(hists[pipeline_id, Metric.LEAD_TIME], (finished - created).total_seconds())
        else:
            r.deploys_failed += 1
            if restored is None:
                r.unrestored += 1
            else:
                add(
                    hists[pipeline_id, Metric.TIME_TO_RESTORE],
                    (restored - finished).total_seconds(),
                )

    gates = Gate.objects.filter(created_at__gte=start, created_at__lt=end).order_by()
    for pipeline_id, status, created, decided in gates.values_list(
        "stage_run__run__pipeline_id", "status", "created_at", "decided_at"
    ):
        r = rollup(pipeline_id)
        r.gates += 1
        if status == GateStatus.OVERRIDDEN:
            r.overridden_gates += 1
        if decided is not None:
            r.decided_gates += 1
            add(hists[pipeline_id, Metric.APPROVAL_WAIT], (decided - created).total_seconds())

    policies = [
        PolicyRollup(
            day=day,
            pipeline_id=row["pipeline"],
            policy=row["policy"],
            blocked=row["gates"],
            evaluated=row["evaluated"],
        )
        for row in policy_blocks(gates, pipeline=F("gate__stage_run__run__pipeline"))
    ]
    buckets = [
        MetricHistogram(
            day=day, pipeline_id=pipeline_id, metric=metric, bucket=b, count=c, low=lo, high=hi
        )
        for (pipeline_id, metric), hist in hists.items()
        for b, (c, lo, hi) in hist.items()
    ]
    return list(rows.values()), buckets, policies


def write_day(day: date) -> None:
    rows, buckets, policies = compute_day(day)
    with transaction.atomic():
        for model in (MetricRollup, MetricHistogram, PolicyRollup):
            model.objects.filter(day=day).delete()
        MetricRollup.objects.bulk_create(rows, batch_size=1000)
        MetricHistogram.objects.bulk_create(buckets, batch_size=2000)
        PolicyRollup.objects.bulk_create(policies, batch_size=1000)


# --- a pass -----------------------------------------------------------------------------


def dirty_days(state: RollupState, today: date, first: date) -> set[date]:
    """The days a change since the last pass may have moved (see the module's docstring)."""
    days = {today}
    if state.computed_at and state.computed_at.date() < today:
        days.add(state.computed_at.date())
    events = AuditEvent.objects.filter(
        seq__gt=state.watermark_seq, target_type__in=["gate", "stagerun"]
    ).values_list("target_type", "target_id")
    ids = defaultdict(set)
    for kind, ident in events.iterator(chunk_size=5000):
        if ident.isdigit():
            ids[kind].add(int(ident))
    if ids["gate"]:
        days |= {
            d.date()
            for d in Gate.objects.filter(pk__in=ids["gate"]).values_list("created_at", flat=True)
        }
    if ids["stagerun"]:
        changed = production_deploys().filter(pk__in=ids["stagerun"])
        days |= {d.date() for d in changed.values_list("finished_at", flat=True) if d}
    days = {d for d in days if first <= d <= today}
    # A success on one of these days may restore an earlier failure of its pipeline.
    on_days = Q()
    for day in days:
        start, end = day_bounds(day)
        on_days |= Q(finished_at__gte=start, finished_at__lt=end)
    restoring = (
        production_deploys().filter(on_days, status=StageStatus.SUCCEEDED).values("run__pipeline")
    )
    days |= set(
        MetricRollup.objects.filter(
            pipeline__in=restoring, unrestored__gt=0, day__gte=first
        ).values_list("day", flat=True)
    )
    return days


def refresh(*, now: datetime | None = None, full: bool = False) -> dict:
    """One pass: recompute the days that may have changed (all of the horizon on the first
    pass, with `full`, and every FULL_EVERY). Returns what it did."""
    t0 = time.perf_counter()
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=HORIZON_DAYS - 1)
    RollupState.objects.get_or_create(name=STATE)  # (get_or_create settles a racing create)
    with transaction.atomic():
        state = RollupState.objects.select_for_update().get(name=STATE)
        # The audit head before reading: changes committed after it are the next pass's.
        head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
        rebuild = full or state.rebuilt_at is None or now - state.rebuilt_at >= FULL_EVERY
        if rebuild:
            days = {first + timedelta(days=i) for i in range(HORIZON_DAYS)}
        else:
            days = dirty_days(state, today, first)
        for day in sorted(days):
            write_day(day)
        for model in (MetricRollup, MetricHistogram, PolicyRollup):
            model.objects.filter(day__lt=first).delete()
        state.computed_at, state.watermark_seq = now, head
        if rebuild:
            state.rebuilt_at = now
        state.days = len(days)
        state.seconds = round(time.perf_counter() - t0, 3)
        state.save()
    return {"days": len(days), "rebuild": rebuild, "seconds": state.seconds}


def state() -> RollupState | None:
    """The last pass's bookkeeping; None (or no `computed_at`) before the first pass."""
    return RollupState.objects.filter(name=STATE).first()

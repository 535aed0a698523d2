"""Issue 18: the overview's tiles read daily rollups (orchestrator.rollups), so their cost does
not grow with history. The rollups give the numbers of the direct computation
(dashboard.metrics.compute, the definitions) over the same whole days, also after an
incremental pass has seen late, updated and restoring rows; the page's query count is pinned
and the same with little and with much history; the tile says how old its numbers are; a
fresh install shows the tiles on its first request."""

from __future__ import annotations

import math
import random
import statistics
from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard import metrics
from orchestrator import rollups
from tests.dashboard.test_metrics import history  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def now():
    """Noon (UTC) today: the passes below stay on one day."""
    return timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)


BOUND = 2 ** (1 / rollups.SUB) - 1  # the documented error bound of a median: 4.4 %
FIELDS = [
    "deployments",
    "failed_deployments",
    "unrestored",
    "gates",
    "decided_gates",
    "overridden_gates",
    "deploys_per_day",
    "change_failure_rate",
    "override_rate",
    "blocks_per_policy",
    "chart",
    "since",
]
MEDIANS = ["lead_time", "time_to_restore", "approval_wait"]


def assert_same(user, days, now):
    """The tiles' numbers (from the rollups) are the direct computation's over their days."""
    tiles = metrics.overview(user, days, now=now)
    direct = metrics.compute(user, days, now=now, since=tiles.since)
    assert tiles.from_rollups and not direct.from_rollups
    for name in FIELDS:
        assert getattr(tiles, name) == getattr(direct, name), (name, days)
    for name in MEDIANS:
        got, want = getattr(tiles, name), getattr(direct, name)
        if want is None:
            assert got is None, name
        else:
            assert abs(got - want) <= want * BOUND, (name, got, want)
    return tiles, direct


def test_the_rollups_give_the_direct_computation(
    history,  # noqa: F811
    now,
    developer,
    superuser,
    outsider,
):
    rollups.refresh(now=now)
    for user in (developer, superuser, outsider):
        for days in metrics.PERIODS:
            assert_same(user, days, now)
    tiles, _ = assert_same(developer, 30, now)
    # The known answers of test_metrics hold on the tiles: each median's bucket holds one
    # distinct value here, so the medians are exact.
    assert (tiles.deployments, tiles.failed_deployments, tiles.unrestored) == (3, 2, 1)
    assert tiles.lead_time == timedelta(hours=1)
    assert tiles.time_to_restore == timedelta(hours=2, minutes=30)
    assert tiles.approval_wait == timedelta(minutes=30)
    assert tiles.blocks_per_policy == [
        {"policy": "change-window", "gates": 1, "evaluated": 2, "rate": 0.5},
        {"policy": "freeze", "gates": 0, "evaluated": 2, "rate": 0.0},
    ]


def _deploy(pipeline, environment, created, finished, status, number):
    from orchestrator.models import Run, StageRun

    run = Run.objects.create(
        pipeline=pipeline, version=pipeline.current_version, number=number, status=status,
        created_at=created, finished_at=finished,
    )  # fmt: skip
    return StageRun.objects.create(
        run=run, name="deploy", position=0, environment=environment, status=status,
        started_at=created, finished_at=finished,
    )  # fmt: skip


def test_an_incremental_pass_sees_late_updated_and_restoring_rows(
    history,  # noqa: F811
    now,
    developer,
    superuser,
    pipeline,
    make_pipeline,
    environments,
):
    from governance import audit
    from governance.models import Gate, GateStatus

    prod = environments["production"]
    rollups.refresh(now=now)
    state = rollups.state()
    assert state.days == rollups.HORIZON_DAYS  # the first pass: the whole horizon

    # Today: a deploy that arrives late (written without any audit event), a gate of today
    # that is decided afterwards (updated in place).
    two = now - timedelta(hours=2)
    late = _deploy(pipeline, prod, two, now - timedelta(hours=1), "succeeded", 300)
    gate = Gate.objects.create(
        stage_run=late, environment=prod, status=GateStatus.WAITING, created_at=two
    )
    rollups.refresh(now=now + timedelta(seconds=30))
    Gate.objects.filter(pk=gate.pk).update(
        status=GateStatus.OVERRIDDEN, decided_at=now - timedelta(minutes=90)
    )
    # An old day: a gate opened 10 days ago and decided only now — its day is found through
    # the audit event the decision wrote, as orchestrator.lifecycle writes one.
    old = history["c"]
    Gate.objects.filter(pk=old.pk).update(status=GateStatus.OPEN, decided_at=now)
    old.refresh_from_db()
    audit.record(None, "gate.open", old, at=now)

    before = metrics.overview(developer, 30, now=now)
    assert (before.gates, before.decided_gates) == (5, 3)  # not seen yet: as of the last pass
    rollups.refresh(now=now + timedelta(minutes=1))
    state = rollups.state()
    assert not state.rebuilt_at or state.days < rollups.HORIZON_DAYS  # incremental
    assert state.days == 2  # today and the old gate's day, nothing else
    tiles, _ = assert_same(developer, 30, now)
    assert (tiles.gates, tiles.decided_gates, tiles.overridden_gates) == (5, 5, 2)
    assert tiles.deployments == 4

    # The late deploy of today restored the failure of 7 days ago: that day was recomputed.
    assert tiles.unrestored == 0

    # Another pipeline: a failure 5 days ago (its audit event names it), then a fix today
    # written without one: today's recompute finds the success, and the failure's day is
    # recomputed too.
    ledger = make_pipeline("ledger")
    unrestored = metrics.overview(superuser, 30, now=now).unrestored  # infra's among them
    five = now - timedelta(days=5)
    failed = _deploy(ledger, prod, five, five + timedelta(minutes=20), "failed", 1)
    audit.record(None, "stage.failed", failed, at=now)
    rollups.refresh(now=now + timedelta(minutes=2))
    assert metrics.overview(superuser, 30, now=now).unrestored == unrestored + 1
    assert rollups.state().days == 2  # today and the failure's day
    assert_same(superuser, 30, now)
    fix = now - timedelta(minutes=10)
    _deploy(ledger, prod, fix - timedelta(minutes=20), fix, "succeeded", 2)
    rollups.refresh(now=now + timedelta(minutes=3))
    tiles, direct = assert_same(superuser, 30, now)
    assert tiles.unrestored == direct.unrestored == unrestored
    assert rollups.state().days == 2
    assert_same(superuser, 7, now)


def test_a_full_rebuild_comes_every_day(history, now):  # noqa: F811
    rollups.refresh(now=now)
    rollups.refresh(now=now + timedelta(hours=1))
    assert rollups.state().days < rollups.HORIZON_DAYS
    rollups.refresh(now=now + rollups.FULL_EVERY)
    assert rollups.state().days == rollups.HORIZON_DAYS


def test_days_beyond_the_horizon_are_dropped(history, now):  # noqa: F811
    from orchestrator.models import MetricRollup

    rollups.refresh(now=now)
    oldest = MetricRollup.objects.order_by("day").values_list("day", flat=True).first()
    later = now + timedelta(days=(now.date() - oldest).days)  # the oldest day leaves
    rollups.refresh(now=later, full=True)
    assert not MetricRollup.objects.filter(day__lte=oldest).exists()


# Queries of the whole overview and of its metrics partial; a superuser needs no permission
# lookup. The metrics themselves are four: the rollup state, the days, the buckets, the
# policies. The page's inbox badge reads the user's delegations in force (one query).
PINNED = {
    ("developer", "/"): 14,
    ("developer", "/?partial=metrics&days=90"): 8,
    ("superuser", "/"): 12,
    ("superuser", "/?partial=metrics&days=90"): 6,
}


@pytest.mark.parametrize("who", ["developer", "superuser"])
def test_the_overview_query_count_is_pinned_and_flat(
    who, request, gated, bulk_history, client_for, django_assert_num_queries
):
    """With 10 runs and with 2,000 runs of history: the same queries, pinned. Before the
    rollups their number was flat too, but each scanned every row of the period."""
    client = client_for(request.getfixturevalue(who))
    client.get("/")  # warm per-process caches (and make the first pass)
    bulk_history(10)
    rollups.refresh(full=True)
    for size in ("small", "large"):
        for url in ("/", "/?partial=metrics&days=90"):
            with django_assert_num_queries(PINNED[who, url]) as cq:  # noqa: F841
                headers = {"HTTP_HX_REQUEST": "true"} if "partial" in url else {}
                assert client.get(url, **headers).status_code == 200
        if size == "small":
            bulk_history(2_000)
            rollups.refresh(full=True)
    assert metrics.overview(request.getfixturevalue(who), 90).deployments >= 1_800


def test_the_metrics_read_a_bounded_number_of_rows(gated, developer, bulk_history):
    """Rows read by the tiles: days × pipelines × buckets, not runs."""
    from orchestrator.models import MetricHistogram, MetricRollup

    bulk_history(2_000)
    rollups.refresh()
    assert MetricRollup.objects.count() <= rollups.HORIZON_DAYS
    per_day = 3 * (1 + 25 * rollups.SUB)  # three metrics, durations up to a year
    assert MetricHistogram.objects.count() <= rollups.HORIZON_DAYS * per_day


def test_the_tile_says_how_old_its_numbers_are(history, developer, client_for):  # noqa: F811
    rollups.refresh(now=timezone.now() - timedelta(minutes=2))
    body = client_for(developer).get("/").content.decode()
    as_of = body[body.index('id="metrics-as-of"') :][:600]
    assert "As of" in as_of and "2m 0" in as_of and "ago" in as_of
    assert "whole UTC days" in as_of and "within 4.4 %" in as_of
    board = client_for(developer).get("/board/").content.decode()
    assert 'id="metrics-as-of"' in board and "2m 0" in board


def test_a_fresh_install_shows_the_tiles_on_its_first_request(
    history,  # noqa: F811
    developer,
    client_for,
):
    from orchestrator.models import RollupState

    assert not RollupState.objects.exists()
    body = client_for(developer).get("/?days=90").content.decode()
    tile = body[body.index('id="metric-change-failure-rate"') :][:400]
    assert "50%" in tile  # 3 of 6 production deploys of the 90 days failed
    assert RollupState.objects.get().computed_at is not None
    assert "As of" in body and "ago" in body


def test_the_beat_task_refreshes_the_rollups(history, settings):  # noqa: F811
    from orchestrator import tasks
    from orchestrator.models import RollupState

    entry = settings.CELERY_BEAT_SCHEDULE["metric-rollups"]
    assert entry["task"] == tasks.metric_rollups.name == "clearway.metric_rollups"
    assert entry["schedule"] == settings.CLEARWAY["METRIC_ROLLUP_INTERVAL"]
    done = tasks.metric_rollups()
    assert done["rebuild"] and RollupState.objects.get().days == rollups.HORIZON_DAYS


def test_the_median_of_buckets_is_within_its_bound():
    rng = random.Random(18)
    for _ in range(200):
        values = [math.exp(rng.uniform(0, 12)) for _ in range(rng.randint(1, 300))]
        hist: dict = {}
        for v in values:
            rollups.add(hist, v)
        got = rollups.median(hist).total_seconds()
        want = statistics.median(values)
        assert abs(got - want) <= want * BOUND + 1e-6
    hist = {}
    for v in (600, 1200, 2400, 4800):  # one value per bucket: exact
        rollups.add(hist, v)
    assert rollups.median(hist) == timedelta(minutes=30)
    assert rollups.median({}) is None


def test_the_command_makes_a_pass(history, now):  # noqa: F811
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("rollup_metrics", stdout=out)
    assert out.getvalue().startswith("full pass: 91 day(s)")
    call_command("rollup_metrics", stdout=out)
    assert "incremental pass" in out.getvalue()
    call_command("rollup_metrics", "--full", stdout=out)
    assert out.getvalue().count("full pass") == 2

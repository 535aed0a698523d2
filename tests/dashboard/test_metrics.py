"""The overview's delivery (DORA) and governance metrics: definitions, periods and
permissions, on hand-made history with known answers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard import metrics

pytestmark = pytest.mark.django_db


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def history(now, pipeline, make_pipeline, other_team, environments, developer):
    """Deploys of payments-api (visible to dana) and of infra (another team's), relative to
    `now`. Returns the gates by name."""
    from governance.models import Gate, GateStatus, Policy, PolicyDecision, PolicyVersion
    from orchestrator.models import Run, StageRun

    infra = make_pipeline("infra", team=other_team)
    prod, staging = environments["production"], environments["staging"]
    numbers = iter(range(100, 200))

    def deploy(p, created, finished, status, env=prod):
        run = Run.objects.create(
            pipeline=p,
            version=p.current_version,
            number=next(numbers),
            status="succeeded" if status == "succeeded" else "failed",
            created_at=created,
            finished_at=finished,
        )
        return StageRun.objects.create(
            run=run,
            name="deploy",
            position=0,
            environment=env,
            status=status,
            started_at=created,
            finished_at=finished,
        )

    d = now - timedelta(days=10)
    h = timedelta(hours=1)
    deploy(pipeline, d, d + h, "succeeded")  # lead 1h
    deploy(pipeline, d + 24 * h, d + 24.5 * h, "failed")  # restored by the next: 2h30m
    deploy(pipeline, d + 26 * h, d + 27 * h, "succeeded")  # lead 1h
    deploy(pipeline, d + 48 * h, d + 51 * h, "succeeded")  # lead 3h
    deploy(pipeline, d + 72 * h, d + 72.2 * h, "failed")  # not restored yet
    deploy(pipeline, now - timedelta(days=60), now - timedelta(days=60) + h, "failed")  # old
    deploy(pipeline, d, d + h, "succeeded", env=staging)  # not production
    deploy(pipeline, d, d + h, "blocked")  # never deployed
    for i in range(4):  # infra (another team): only the superuser counts these
        deploy(infra, d + i * h, d + i * h + 5 * h, "failed")

    def gate(stage_name, status, wait_minutes):
        stage = StageRun.objects.filter(run__pipeline=pipeline, environment=prod).order_by("pk")
        stage = stage[["a", "b", "c", "d"].index(stage_name)]
        created = stage.started_at - timedelta(minutes=60)
        return Gate.objects.create(
            stage_run=stage,
            environment=prod,
            status=status,
            created_at=created,
            decided_at=created + timedelta(minutes=wait_minutes) if wait_minutes else None,
        )

    gates = {
        "a": gate("a", GateStatus.OVERRIDDEN, 10),
        "b": gate("b", GateStatus.OPEN, 30),
        "c": gate("c", GateStatus.WAITING, None),
        "d": gate("d", GateStatus.REJECTED, 50),
    }

    def policy(name, enforcement):
        p = Policy.objects.create(name=name, source="package x", enforcement=enforcement)
        return PolicyVersion.objects.create(
            policy=p, number=1, source="package x", sha256="0" * 64, enforcement=enforcement
        )

    freeze, window, branch = (
        policy("freeze", "hard-mandatory"),
        policy("change-window", "soft-mandatory"),
        policy("main-branch", "advisory"),
    )
    for g, version, result in [
        (gates["d"], freeze, "deny"),
        (gates["d"], freeze, "deny"),  # re-evaluated: still one gate
        (gates["a"], window, "deny"),
        (gates["b"], window, "error"),
        (gates["b"], branch, "deny"),  # advisory: never blocks
        (gates["c"], freeze, "pass"),
    ]:
        PolicyDecision.objects.create(
            gate=g,
            policy_version=version,
            enforcement=version.enforcement,
            input_hash="h",
            result=result,
        )
    return gates


def test_delivery_metrics(history, developer, now):
    m = metrics.compute(developer, 30, now=now)
    assert (m.deployments, m.failed_deployments) == (3, 2)
    assert m.deploys_per_day == pytest.approx(3 / 30)
    assert m.change_failure_rate == pytest.approx(2 / 5)
    assert m.lead_time == timedelta(hours=1)
    assert m.time_to_restore == timedelta(hours=2, minutes=30)
    assert m.unrestored == 1


def test_governance_metrics(history, developer, now):
    m = metrics.compute(developer, 30, now=now)
    assert (m.gates, m.decided_gates, m.overridden_gates) == (4, 3, 1)
    assert m.approval_wait == timedelta(minutes=30)
    assert m.override_rate == pytest.approx(1 / 3)
    # Final outcomes only: a (overridden past change-window) is a block; b ended open, so
    # change-window's error there blocked nothing in the end; d was rejected by a person.
    assert m.blocks_per_policy == [
        {"policy": "change-window", "gates": 1, "evaluated": 2, "rate": 0.5},
        {"policy": "freeze", "gates": 0, "evaluated": 2, "rate": 0.0},
    ]


def test_blocks_count_final_outcomes_not_every_denial(history, developer, now):
    """Issue 18 point 5: prod-approvals denied 76 times while 10 gates were blocked. A
    denial that approvals later lifted is no block; a gate blocked by the policy is."""
    from governance.models import GateStatus, PolicyDecision

    gates = history
    freeze = PolicyDecision.objects.filter(policy_version__policy__name="freeze").first()
    version = freeze.policy_version
    # c: denied twice while waiting for approvals, then passed (the current decision).
    PolicyDecision.objects.filter(gate=gates["c"]).update(current=False)
    for result, current in [("deny", False), ("deny", False), ("pass", True)]:
        PolicyDecision.objects.create(
            gate=gates["c"], policy_version=version, enforcement=version.enforcement,
            input_hash="h", result=result, current=current,
        )  # fmt: skip
    gates["c"].status = GateStatus.OPEN
    gates["c"].save(update_fields=["status"])
    # d: now blocked by freeze for good.
    gates["d"].status = GateStatus.BLOCKED
    gates["d"].save(update_fields=["status"])
    rows = {r["policy"]: r for r in metrics.compute(developer, 30, now=now).blocks_per_policy}
    assert (rows["freeze"]["gates"], rows["freeze"]["evaluated"]) == (1, 2)
    assert rows["freeze"]["rate"] == pytest.approx(0.5)


def test_chart_has_every_day_of_the_period(history, developer, now):
    chart = metrics.compute(developer, 7, now=now).chart
    assert len(chart["labels"]) == 8  # today and the 7 days before
    assert chart["labels"][-1] == now.date().isoformat()
    chart = metrics.compute(developer, 30, now=now).chart
    assert sum(chart["succeeded"]) == 3 and sum(chart["failed"]) == 2


def test_the_period_narrows_the_window(history, developer, now):
    last_week = metrics.compute(developer, 7, now=now)  # only the last, failed deploy
    assert (last_week.deployments, last_week.failed_deployments) == (0, 1)
    m = metrics.compute(developer, 90, now=now)
    assert m.failed_deployments == 3  # the deploy of 60 days ago too


def test_metrics_are_restricted_by_permissions(history, developer, superuser, outsider, now):
    assert metrics.compute(superuser, 30, now=now).failed_deployments == 2 + 4
    empty = metrics.compute(outsider, 30, now=now)
    assert (empty.deployments, empty.failed_deployments, empty.gates) == (0, 0, 0)
    assert empty.lead_time is None and empty.change_failure_rate is None
    assert empty.override_rate is None and empty.blocks_per_policy == []


def test_median_of_an_even_count(pipeline, production, developer, now):
    from orchestrator.models import Run, StageRun

    for i, minutes in enumerate([10, 20, 40, 80]):
        run = Run.objects.create(
            pipeline=pipeline,
            version=pipeline.current_version,
            number=50 + i,
            created_at=now - timedelta(days=1, minutes=minutes),
        )
        StageRun.objects.create(
            run=run,
            name="deploy",
            position=0,
            environment=production,
            status="succeeded",
            started_at=now - timedelta(days=1),
            finished_at=now - timedelta(days=1),
        )
    assert metrics.compute(developer, 7, now=now).lead_time == timedelta(minutes=30)


@pytest.mark.parametrize("value, days", [("7", 7), ("90", 90), ("365", 30), ("x", 30), (None, 30)])
def test_period_choice(value, days):
    assert metrics.period_days(value) == days


def test_overview_shows_the_metrics_and_switches_period(history, developer, client_for):
    body = client_for(developer).get("/?days=90").content.decode()
    assert "last 90 days" in body
    assert 'id="metric-change-failure-rate"' in body
    assert 'id="deploy-chart-data"' in body and 'data-source="deploy-chart-data"' in body
    partial = (
        client_for(developer)
        .get("/?partial=metrics&days=7", HTTP_HX_REQUEST="true")
        .content.decode()
    )
    assert partial.lstrip().startswith('<section id="metrics"')
    assert "last 7 days" in partial and '<nav class="nav"' not in partial

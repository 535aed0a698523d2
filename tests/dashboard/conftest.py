"""Fixtures for the dashboard tests. People, teams, environments, pipelines and runs come from
tests/conftest.py (the shared role fixtures); this file adds page clients, the remaining roles
of the permission table, and large amounts of history written with bulk_create."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

SOFT_DENY = """package clearway.window

deny contains "outside the change windows" if { true }
"""


@pytest.fixture
def client_for() -> Callable:
    """client_for(user): a Django test client logged in as `user` (None: anonymous).
    force_login, because django-axes refuses client.login() without a request."""

    def make(user=None) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def htmx_client_for(client_for) -> Callable:
    """Like client_for, but every request carries HX-Request (django-htmx: request.htmx)."""

    def make(user=None) -> Client:
        client = client_for(user)
        client.defaults["HTTP_HX_REQUEST"] = "true"
        return client

    return make


@pytest.fixture
def outside_developer(make_user, team):
    """A developer who is in no team: may create nothing, sees no pipeline."""
    return make_user("dora", "developer", first_name="Dora")


@pytest.fixture
def people(users, outside_developer) -> dict:
    """Every role of the permission table, by name."""
    return {**users, "outside_developer": outside_developer}


@pytest.fixture
def gated(run_at_gate):
    """A run of payments-api triggered by dana, waiting at its production gate (2 sre + 1
    security approvals needed, no policies): (run, gate)."""
    return run_at_gate()


@pytest.fixture
def soft_policy(make_policy):
    """A soft-mandatory policy on production that always denies (overridable)."""
    return make_policy("change-window", SOFT_DENY, "soft-mandatory")


@pytest.fixture
def bulk_history(pipeline, production, developer) -> Callable:
    """bulk_history(n): n finished runs of `pipeline`, each with its deploy-production stage
    and that stage's decided gate, written with bulk_create (thousands of rows in a second or
    two). Every tenth run failed in production. Stages without history value for the pages
    (build, steps, logs) are left out to keep the fixture fast."""
    from governance.models import Gate, GateStatus
    from orchestrator.models import Run, RunStatus, StageRun, StageStatus

    numbers = itertools.count(10_000)

    def make(n: int) -> None:
        now = timezone.now()
        version = pipeline.current_version
        runs = []
        for i in range(n):
            created = now - timedelta(days=80) + timedelta(minutes=20 * i)
            runs.append(
                Run(
                    pipeline=pipeline,
                    version=version,
                    number=next(numbers),
                    triggered_by=developer,
                    parameters={"version": f"1.{i}.0"},
                    status=RunStatus.FAILED if i % 10 == 9 else RunStatus.SUCCEEDED,
                    created_at=created,
                    started_at=created,
                    finished_at=created + timedelta(minutes=5),
                )
            )
        runs = Run.objects.bulk_create(runs, batch_size=1000)
        stages = StageRun.objects.bulk_create(
            [
                StageRun(
                    run=run,
                    name="deploy-production",
                    position=1,
                    needs=["build"],
                    environment=production,
                    status=StageStatus.FAILED
                    if run.status == RunStatus.FAILED
                    else StageStatus.SUCCEEDED,
                    started_at=run.created_at + timedelta(minutes=2),
                    finished_at=run.created_at + timedelta(minutes=4),
                )
                for run in runs
            ],
            batch_size=1000,
        )
        Gate.objects.bulk_create(
            [
                Gate(
                    stage_run=stage,
                    environment=production,
                    status=GateStatus.OPEN,
                    created_at=stage.started_at - timedelta(minutes=30),
                    decided_at=stage.started_at,
                )
                for stage in stages
            ],
            batch_size=1000,
        )

    return make

"""/api/v1/pipelines/{slug}/runs/ and /api/v1/runs/: trigger, detail, cancel, retry, the
global list with its filters — who may do what, and query counts that do not grow."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from governance.models import ApprovalRule, AuditEvent, Environment, Gate
from orchestrator import actions
from orchestrator.models import Run, RunStatus, StepRun, StepStatus

from .conftest import client_for, dedent

pytestmark = pytest.mark.django_db

DEFINITION = dedent(
    """
    name: Payments API
    parameters:
      - name: version
        required: true
        allowed: ["1.0", "2.0"]
      - name: branch
        default: main
      - name: note
    stages:
      - name: build
        steps:
          - name: compile
            run: make build
          - name: check
            http: {url: "http://127.0.0.1:9/health"}
      - name: deploy
        needs: [build]
        environment: prod
        steps:
          - name: ship
            run: ./ship.sh
    """
)


@pytest.fixture
def prod(db):
    env = Environment.objects.create(name="prod", tier="production", protected=True)
    ApprovalRule.objects.create(
        environment=env, group=Group.objects.get_or_create(name="sre")[0], required_count=1
    )
    return env


@pytest.fixture
def pipeline(new_pipeline, prod):
    return new_pipeline(DEFINITION, slug="payments-api")


@pytest.fixture
def run(pipeline, developer):
    return actions.trigger_run(pipeline, actor=developer, parameters={"version": "1.0"})


def fresh(user):
    return get_user_model().objects.get(pk=user.pk)


# --- trigger ------------------------------------------------------------------------------


def test_trigger_returns_201_with_id_number_and_status(developer, pipeline):
    client = client_for(developer)
    url = "/api/v1/pipelines/payments-api/runs/"
    response = client.post(url, {"parameters": {"version": "2.0", "note": 5}}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1 and body["status"] == RunStatus.RUNNING
    run = Run.objects.get(pk=body["id"])
    assert run.trigger == "api" and run.triggered_by == developer
    assert run.parameters == {"version": "2.0", "branch": "main", "note": "5"}
    assert body["parameters"] == run.parameters
    second = client.post(url, {"parameters": {"version": "1.0"}}, format="json").json()
    assert second["number"] == 2
    event = AuditEvent.objects.filter(action="run.trigger").last()
    assert event.actor_name == developer.username and event.details["trigger"] == "api"


@pytest.mark.parametrize(
    "parameters, named, words",
    [
        ({}, "version", "required"),
        ({"version": "1.0", "vresion": "2.0"}, "vresion", 'did you mean "version"'),
        ({"version": "3.0"}, "version", "not an allowed value"),
        ({"version": ["1.0"]}, "version", "single value"),
    ],
    ids=["missing", "unknown", "not-allowed", "not-a-scalar"],
)
def test_trigger_with_bad_parameters_is_400_naming_the_parameter(
    developer, pipeline, parameters, named, words
):
    response = client_for(developer).post(
        "/api/v1/pipelines/payments-api/runs/", {"parameters": parameters}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert any(e["parameter"] == named and words in e["message"] for e in body["errors"]), body
    assert named in body["message"]
    assert not Run.objects.exists()


def test_trigger_with_parameters_that_are_not_an_object_is_400(developer, pipeline):
    response = client_for(developer).post(
        "/api/v1/pipelines/payments-api/runs/", {"parameters": ["1.0"]}, format="json"
    )
    assert response.status_code == 400
    assert not Run.objects.exists()


# --- detail -------------------------------------------------------------------------------


def test_run_detail_has_stages_steps_and_gates(developer, pipeline, run):
    body = client_for(developer).get(f"/api/v1/runs/{run.pk}/").json()
    assert {"id", "status", "pipeline", "parameters", "stages"} <= set(body)
    assert body["id"] == run.pk and body["pipeline"] == "payments-api"
    assert body["status"] == "running"
    assert body["parameters"] == {"version": "1.0", "branch": "main"}
    build, deploy = body["stages"]
    assert {"name", "status", "environment", "gate", "steps"} <= set(build)
    assert (build["name"], build["status"], build["environment"], build["gate"]) == (
        "build",
        "queued",
        None,
        None,
    )
    assert [s["name"] for s in build["steps"]] == ["compile", "check"]
    for step in build["steps"]:
        assert {"id", "name", "status", "exit_code"} <= set(step)
    assert [s["status"] for s in build["steps"]] == ["queued", "pending"]
    assert (deploy["name"], deploy["environment"], deploy["gate"]) == ("deploy", "prod", None)


def test_run_detail_shows_the_gate_of_a_stage_at_a_protected_environment(developer, run):
    for name in ("compile", "check"):
        step = StepRun.objects.get(stage__run=run, name=name)
        assert actions.claim_step(step.pk, step.attempt, worker="w") is not None
        actions.finish_step(step.pk, step.attempt, succeeded=True, exit_code=0)
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    gate = Gate.objects.get(stage_run__run=run)
    body = client_for(developer).get(f"/api/v1/runs/{run.pk}/").json()
    assert body["status"] == "waiting"
    assert body["stages"][1]["status"] == "waiting"
    assert body["stages"][1]["gate"] == {"id": gate.pk, "status": "waiting"}


def test_run_detail_query_count_does_not_grow_with_stages(
    developer, new_pipeline, django_assert_max_num_queries
):
    def build(stages: int) -> Run:
        text = "name: wide\nstages:\n" + "".join(
            f"  - name: s{i}\n    steps:\n      - {{name: a, run: 'true'}}\n"
            f"      - {{name: b, run: 'true'}}\n"
            for i in range(stages)
        )
        return actions.trigger_run(new_pipeline(text), actor=developer)

    counts = []
    for size in (2, 15):
        run = build(size)
        client = client_for(fresh(developer))
        client.get(f"/api/v1/runs/{run.pk}/")
        client = client_for(fresh(developer))
        with django_assert_max_num_queries(8), CaptureQueriesContext(connection) as queries:
            body = client.get(f"/api/v1/runs/{run.pk}/").json()
        assert len(body["stages"]) == size
        counts.append(len(queries))
    assert counts[0] == counts[1]


# --- cancel and retry ----------------------------------------------------------------------


def test_cancel(developer, run):
    client = client_for(developer)
    response = client.post(f"/api/v1/runs/{run.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert {s.status for s in run.stages.all()} == {"canceled"}
    assert AuditEvent.objects.filter(action="run.cancel", actor_name=developer.username).exists()
    again = client.post(f"/api/v1/runs/{run.pk}/cancel/")
    assert again.status_code == 409 and "already ended" in again.json()["message"]


def test_retry_runs_the_same_version_with_the_same_parameters(developer, pipeline, run):
    client = client_for(developer)
    busy = client.post(f"/api/v1/runs/{run.pk}/retry/")
    assert busy.status_code == 409 and "cancel it first" in busy.json()["message"]
    client.post(f"/api/v1/runs/{run.pk}/cancel/")
    actions.update_pipeline(pipeline, actor=developer, definition=DEFINITION + "\n# v2\n")
    response = client.post(f"/api/v1/runs/{run.pk}/retry/")
    assert response.status_code == 201
    body = response.json()
    new = Run.objects.get(pk=body["id"])
    assert body["number"] == 2 and body["status"] == "running"
    assert new.retry_of == run and new.version == run.version and new.version.number == 1
    assert new.parameters == run.parameters
    assert new.stages.get(name="build").steps.first().status == StepStatus.QUEUED


# --- who may do what ----------------------------------------------------------------------

ROLES = [
    "developer",
    "rival",
    "outsider",
    "viewer",
    "approver",
    "compliance_manager",
    "policy_admin",
    "superuser",
    "anonymous",
]

# role -> (the lists show the runs, detail, trigger, cancel, retry, log)
EXPECTED = {
    "developer": (True, 200, 201, 200, 201, 200),
    "rival": (False, 404, 404, 404, 404, 404),
    "outsider": (False, 404, 404, 404, 404, 404),
    "viewer": (True, 200, 403, 403, 403, 200),
    "approver": (True, 200, 403, 403, 403, 200),
    "compliance_manager": (True, 200, 403, 403, 403, 200),
    "policy_admin": (True, 200, 403, 403, 403, 200),
    "superuser": (True, 200, 201, 200, 201, 200),
    "anonymous": (None, 401, 401, 401, 401, 401),
}


@pytest.fixture
def people(request):
    return {role: None if role == "anonymous" else request.getfixturevalue(role) for role in ROLES}


@pytest.mark.parametrize("role", ROLES)
def test_permission_table(role, people, pipeline, run, developer):
    ended = actions.trigger_run(pipeline, actor=developer, parameters={"version": "1.0"})
    actions.cancel_run(ended, actor=developer)
    user = people[role]
    client = client_for(user) if user else APIClient()
    shows, detail, trigger, cancel, retry, log = EXPECTED[role]

    for url in ("/api/v1/runs/", "/api/v1/pipelines/payments-api/runs/"):
        listing = client.get(url)
        if shows is None:
            assert listing.status_code == 401
        elif listing.status_code == 404:
            assert not shows and url.startswith("/api/v1/pipelines/")
        else:
            ids = {r["id"] for r in listing.json()["results"]}
            assert (run.pk in ids) is shows and (ended.pk in ids) is shows
            assert listing.json()["count"] == len(ids)
    assert client.get(f"/api/v1/runs/{run.pk}/").status_code == detail
    response = client.post(
        "/api/v1/pipelines/payments-api/runs/", {"parameters": {"version": "1.0"}}, format="json"
    )
    assert response.status_code == trigger
    assert Run.objects.count() == (3 if trigger == 201 else 2)
    assert client.post(f"/api/v1/runs/{run.pk}/cancel/").status_code == cancel
    run.refresh_from_db()
    assert (run.status == RunStatus.CANCELED) is (cancel == 200)
    assert client.post(f"/api/v1/runs/{ended.pk}/retry/").status_code == retry
    step = run.stages.get(name="build").steps.first()
    assert client.get(f"/api/v1/runs/{run.pk}/log/?step={step.pk}").status_code == log


# --- the global list ----------------------------------------------------------------------


def test_runs_list_filters(developer, pipeline, new_pipeline, run):
    other = new_pipeline(DEFINITION, slug="other")
    old = actions.trigger_run(
        other,
        actor=developer,
        parameters={"version": "2.0"},
        now=timezone.now() - timedelta(days=3),
    )
    actions.cancel_run(old, actor=developer)
    client = client_for(developer)

    def ids(query: str) -> set[int]:
        response = client.get(f"/api/v1/runs/?{query}")
        assert response.status_code == 200, response.content
        return {r["id"] for r in response.json()["results"]}

    assert ids("") == {run.pk, old.pk}
    assert ids("status=running") == {run.pk}
    assert ids("status=canceled,failed") == {old.pk}
    assert ids("pipeline=other") == {old.pk}
    assert ids("pipeline=nope") == set()
    since = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"since={since}") == {run.pk}
    assert ids("since=2000-01-01") == {run.pk, old.pk}
    body = client.get("/api/v1/runs/").json()
    assert [r["id"] for r in body["results"]] == [run.pk, old.pk], "newest first"


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=done", "status"),
        ("status=running,nope", "status"),
        ("since=yesterday", "since"),
        ("since=2025-13-01T00:00:00", "since"),
    ],
)
def test_runs_list_refuses_bad_filters(developer, run, query, field):
    response = client_for(developer).get(f"/api/v1/runs/?{query}")
    assert response.status_code == 400
    assert field in response.json()["errors"]


RUNS_LIST_QUERIES = 5


@pytest.mark.parametrize("role", ["developer", "viewer"])
@pytest.mark.parametrize("url", ["/api/v1/runs/", "/api/v1/pipelines/bulk/runs/"])
def test_runs_list_query_count_is_the_same_at_10_and_200_runs(
    role, url, people, new_pipeline, developer, django_assert_max_num_queries
):
    user = people[role]
    pipeline = new_pipeline(DEFINITION.replace("    environment: prod\n", ""), slug="bulk")
    version = pipeline.current_version

    def add(first: int, last: int) -> None:
        Run.objects.bulk_create(
            Run(
                pipeline=pipeline,
                version=version,
                number=n,
                triggered_by=developer if n % 2 else None,
                parameters={"version": "1.0"},
                status=RunStatus.SUCCEEDED,
            )
            for n in range(first, last + 1)
        )

    def measure(expected: int) -> int:
        client = client_for(fresh(user))
        with (
            django_assert_max_num_queries(RUNS_LIST_QUERIES),
            CaptureQueriesContext(connection) as queries,
        ):
            response = client.get(url, {"limit": 500})
        assert response.status_code == 200
        assert len(response.json()["results"]) == expected
        return len(queries)

    add(1, 10)
    client_for(user).get(url, {"limit": 500})  # warm the content-type cache
    small = measure(10)
    add(11, 200)
    assert measure(200) == small

"""/api/v1/pipelines/: list, create from YAML, read, update (= a new version), versions —
who may do what, error shapes, and query counts that do not grow with the data."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import Pipeline, PipelineVersion, Run
from tests.conftest import api_token

from .conftest import client_for, dedent

pytestmark = pytest.mark.django_db

DEFINITION = dedent(
    """
    name: Payments API
    description: Build and ship
    parameters:
      - name: version
        default: "1.0"
    stages:
      - name: build
        steps:
          - name: compile
            run: make build
    """
)

SECOND = DEFINITION.replace("make build", "make build-all")

BAD_YAML = "name: broken\nstages:\n  - name: build\n    steps: [\n"

BAD_SPEC = dedent(
    """
    name: bad
    stages:
      - name: build
        steps:
          - name: compile
            rn: make
      - name: test
        needs: [biuld]
        steps:
          - {name: t, run: "true"}
    """
)


@pytest.fixture
def pipeline(new_pipeline):
    return new_pipeline(DEFINITION, slug="payments-api")


def fresh(user):
    """The user re-read, so no permission cache carries over between requests."""
    return get_user_model().objects.get(pk=user.pk)


# --- create -----------------------------------------------------------------------------


def test_create_returns_201_with_slug_name_and_version(developer, team):
    response = client_for(developer).post(
        "/api/v1/pipelines/", {"slug": "payments-api", "definition": DEFINITION}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "payments-api"
    assert body["name"] == "Payments API"
    assert body["version"] == 1
    assert body["team"] == team.slug
    assert body["definition"] == DEFINITION
    assert body["spec"]["stages"][0]["steps"][0]["run"] == "make build"
    pipeline = Pipeline.objects.get(slug="payments-api")
    assert pipeline.versions.get().author == developer
    event = AuditEvent.objects.get(action="pipeline.create")
    assert event.actor_name == developer.username and event.target_id == str(pipeline.pk)
    # The team may view, run and change it; the author, as a team member, too.
    user = fresh(developer)
    for perm in ("view_pipeline", "run_pipeline", "change_pipeline"):
        assert user.has_perm(f"orchestrator.{perm}", pipeline)


@pytest.mark.parametrize(
    "definition, first_error",
    [
        (BAD_YAML, {"line": 5, "path": ""}),
        (BAD_SPEC, {"line": 6, "column": 9, "path": "stages[0].steps[0]"}),
    ],
    ids=["yaml-syntax", "spec"],
)
def test_create_with_a_bad_definition_is_400_with_positions_and_saves_nothing(
    developer, definition, first_error
):
    before = AuditEvent.objects.count()
    response = client_for(developer).post(
        "/api/v1/pipelines/", {"slug": "broken", "definition": definition}, format="json"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors and all(set(e) >= {"message", "line", "column", "path"} for e in errors)
    assert {k: errors[0][k] for k in first_error} == first_error
    assert errors[0]["message"]
    assert not Pipeline.objects.exists() and not PipelineVersion.objects.exists()
    assert AuditEvent.objects.count() == before


def test_create_reports_every_spec_problem_at_once(developer):
    response = client_for(developer).post(
        "/api/v1/pipelines/", {"slug": "broken", "definition": BAD_SPEC}, format="json"
    )
    messages = [e["message"] for e in response.json()["errors"]]
    assert any('"rn"' in m and '"run"' in m for m in messages), messages
    assert any('"biuld"' in m and '"build"' in m for m in messages), messages


def test_create_refuses_a_taken_slug_and_a_missing_slug(developer, pipeline):
    client = client_for(developer)
    taken = client.post(
        "/api/v1/pipelines/", {"slug": "payments-api", "definition": DEFINITION}, format="json"
    )
    assert taken.status_code == 409 and "already exists" in taken.json()["message"]
    missing = client.post("/api/v1/pipelines/", {"definition": DEFINITION}, format="json")
    assert missing.status_code == 400 and "slug" in missing.json()["errors"]
    assert Pipeline.objects.count() == 1


def test_a_member_of_two_teams_names_the_team(developer, other_team):
    developer.groups.add(other_team.group)
    client = client_for(fresh(developer))
    unnamed = client.post("/api/v1/pipelines/", {"slug": "x", "definition": DEFINITION})
    assert unnamed.status_code == 400 and "team" in unnamed.json()["errors"]
    named = client.post(
        "/api/v1/pipelines/", {"slug": "x", "definition": DEFINITION, "team": other_team.slug}
    )
    assert named.status_code == 201 and named.json()["team"] == other_team.slug


def test_nobody_creates_a_pipeline_for_a_team_they_are_not_in(developer, other_team):
    response = client_for(developer).post(
        "/api/v1/pipelines/", {"slug": "x", "definition": DEFINITION, "team": other_team.slug}
    )
    assert response.status_code == 400
    assert not Pipeline.objects.exists()


# --- read, update, versions --------------------------------------------------------------


def test_read_by_slug(developer, pipeline):
    body = client_for(developer).get("/api/v1/pipelines/payments-api/").json()
    assert body["slug"] == "payments-api" and body["version"] == 1
    assert body["definition"] == DEFINITION


def test_update_creates_a_new_version_and_keeps_the_old_one(developer, pipeline):
    client = client_for(developer)
    response = client.put("/api/v1/pipelines/payments-api/", {"definition": SECOND}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 2
    assert response.json()["definition"] == SECOND
    # The same text again is not a new version.
    again = client.put("/api/v1/pipelines/payments-api/", {"definition": SECOND}, format="json")
    assert again.json()["version"] == 2
    versions = client.get("/api/v1/pipelines/payments-api/versions/").json()
    assert versions["count"] == 2
    assert [v["number"] for v in versions["results"]] == [2, 1]
    assert versions["results"][1]["definition"] == DEFINITION
    assert versions["results"][0]["author"] == developer.username
    assert AuditEvent.objects.filter(action="pipeline.update").count() == 1


def test_a_run_keeps_the_version_it_ran(developer, pipeline):
    run = actions.trigger_run(pipeline, actor=developer)
    client_for(developer).put(
        "/api/v1/pipelines/payments-api/", {"definition": SECOND}, format="json"
    )
    run.refresh_from_db()
    assert run.version.number == 1
    assert run.stages.get().steps.get().config["run"] == "make build"


def test_update_with_a_bad_definition_is_400_and_keeps_the_current_version(developer, pipeline):
    response = client_for(developer).put(
        "/api/v1/pipelines/payments-api/", {"definition": BAD_YAML}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["message"].startswith("could not parse YAML") and error["line"] == 5
    pipeline.refresh_from_db()
    assert pipeline.current_version.number == 1 and pipeline.versions.count() == 1


# --- who may do what ---------------------------------------------------------------------

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

# role -> (the list shows it, read, versions, update, create a pipeline of team payments)
EXPECTED = {
    "developer": (True, 200, 200, 200, 201),
    "rival": (False, 404, 404, 404, 400),  # a developer of another team: "not your team"
    "outsider": (False, 404, 404, 404, 403),  # no role, no team
    "viewer": (True, 200, 200, 403, 403),
    "approver": (True, 200, 200, 403, 403),
    "compliance_manager": (True, 200, 200, 403, 403),
    "policy_admin": (True, 200, 200, 403, 403),
    "superuser": (True, 200, 200, 200, 201),
    "anonymous": (None, 401, 401, 401, 401),
}


@pytest.fixture
def people(request):
    return {role: None if role == "anonymous" else request.getfixturevalue(role) for role in ROLES}


@pytest.mark.parametrize("role", ROLES)
def test_permission_table(role, people, pipeline, team):
    user = people[role]
    client = client_for(user) if user else APIClient()
    shows, read, versions, update, create = EXPECTED[role]
    listing = client.get("/api/v1/pipelines/")
    if shows is None:
        assert listing.status_code == 401
    else:
        assert listing.status_code == 200
        slugs = [p["slug"] for p in listing.json()["results"]]
        assert ("payments-api" in slugs) is shows
        assert listing.json()["count"] == len(slugs)
    assert client.get("/api/v1/pipelines/payments-api/").status_code == read
    assert client.get("/api/v1/pipelines/payments-api/versions/").status_code == versions
    response = client.put("/api/v1/pipelines/payments-api/", {"definition": SECOND})
    assert response.status_code == update
    pipeline.refresh_from_db()
    assert pipeline.current_version.number == (2 if update == 200 else 1)
    response = client.post(
        "/api/v1/pipelines/", {"slug": f"new-{role}", "definition": DEFINITION, "team": team.slug}
    )
    assert response.status_code == create
    assert Pipeline.objects.filter(slug=f"new-{role}").exists() is (create == 201)


def test_a_pipeline_of_another_team_is_not_found_rather_than_forbidden(rival, pipeline):
    response = client_for(rival).get("/api/v1/pipelines/payments-api/")
    assert response.status_code == 404
    assert response.json() == client_for(rival).get("/api/v1/pipelines/nope/").json()


def test_token_authentication(developer, pipeline):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(developer)}")
    assert client.get("/api/v1/pipelines/payments-api/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/api/v1/pipelines/payments-api/").status_code == 401


# --- query counts ------------------------------------------------------------------------

PIPELINES_LIST_QUERIES = 4


def _count(user, url: str, pin) -> tuple[int, dict]:
    client = client_for(fresh(user))
    with pin, CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries), response.json()


def _add_pipelines_and_runs(new_pipeline, pipelines: int, runs_each: int) -> None:
    for _ in range(pipelines):
        p = new_pipeline(DEFINITION)
        Run.objects.bulk_create(
            Run(pipeline=p, version=p.current_version, number=n, parameters={"version": "1.0"})
            for n in range(1, runs_each + 1)
        )


def test_pipelines_list_query_count_does_not_grow(
    developer, viewer, new_pipeline, django_assert_max_num_queries
):
    users = [developer, viewer]
    pin = PIPELINES_LIST_QUERIES
    _add_pipelines_and_runs(new_pipeline, pipelines=2, runs_each=5)  # 10 runs
    client_for(users[0]).get("/api/v1/pipelines/")  # warm the content-type cache
    small = []
    for user in users:
        count, body = _count(user, "/api/v1/pipelines/", django_assert_max_num_queries(pin))
        assert body["count"] == 2
        small.append(count)
    _add_pipelines_and_runs(new_pipeline, pipelines=18, runs_each=10)  # 190 more runs
    for user, before in zip(users, small, strict=True):
        count, body = _count(user, "/api/v1/pipelines/", django_assert_max_num_queries(pin))
        assert body["count"] == 20 and len(body["results"]) == 20
        assert count == before, user

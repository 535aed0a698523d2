"""Creating and editing pipelines as YAML: errors of orchestrator.spec shown inline with line
and column (listed, and marked in the line-number gutter), nothing saved on error; versions
and diffs between them."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.django_db

VALID = textwrap.dedent(
    """\
    name: Claims Service
    stages:
      - name: build
        steps:
          - name: compile
            run: echo build
    """
)
BROKEN = textwrap.dedent(
    """\
    name: Claims Service
    stages:
      - name: Build Stage
        steps:
          - name: compile
            run: echo build
      - name: test
        needs: [biuld]
        steps: []
    """
)


def test_the_create_page_offers_the_users_teams(developer, other_team, client_for):
    body = client_for(developer).get("/pipelines/new/").content.decode()
    assert '<textarea name="definition"' in body and 'class="code-editor"' in body
    team_pk = developer.groups.get(name="team-payments").team.pk
    assert f'<option value="{team_pk}" selected>Payments</option>' in body
    assert "Platform" not in body  # not dana's team
    assert 'class="code-gutter"' in body


def test_yaml_errors_are_shown_with_line_and_column_and_nothing_is_saved(
    developer, team, client_for
):
    from orchestrator.models import Pipeline, PipelineVersion

    response = client_for(developer).post(
        "/pipelines/new/", {"slug": "claims", "team": team.pk, "definition": BROKEN}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "nothing was saved" in body
    assert 'data-line="3" data-column="11">line 3, column 11</a>' in body  # the stage name's value
    assert "line 8" in body and "biuld" in body  # unknown stage in needs
    assert "line 9" in body  # empty steps
    assert '<span class="error-line" title="problem on line 3">3</span>' in body
    assert 'aria-invalid="true" aria-describedby="spec-errors"' in body
    assert "needs: [biuld]" in body  # the text is kept for fixing
    assert not Pipeline.objects.filter(slug="claims").exists()
    assert not PipelineVersion.objects.exists()


def test_unparsable_yaml_points_at_the_spot(developer, team, client_for):
    body = (
        client_for(developer)
        .post(
            "/pipelines/new/",
            {"slug": "claims", "team": team.pk, "definition": "name: x\nstages: [\n  - a: b\n"},
        )
        .content.decode()
    )
    assert "line-errors" in body and 'class="lineno" data-line=' in body


def test_a_valid_definition_creates_the_pipeline(developer, team, client_for):
    from orchestrator.models import Pipeline

    response = client_for(developer).post(
        "/pipelines/new/", {"slug": "claims", "team": team.pk, "definition": VALID}
    )
    assert response.status_code == 302 and response["Location"] == "/pipelines/claims/"
    pipeline = Pipeline.objects.get(slug="claims")
    assert pipeline.team == team and pipeline.current_version.number == 1
    assert pipeline.current_version.author == developer


@pytest.mark.parametrize(
    "slug, message", [("new", "reserved"), ("payments-api", "already exists"), ("a b", "slug")]
)
def test_bad_slugs_are_refused(slug, message, pipeline, developer, team, client_for):
    body = (
        client_for(developer)
        .post("/pipelines/new/", {"slug": slug, "team": team.pk, "definition": VALID})
        .content.decode()
    )
    assert 'id="id_slug_error"' in body and message in body


def test_another_teams_pipeline_cannot_be_created(developer, other_team, client_for):
    from orchestrator.models import Pipeline

    body = (
        client_for(developer)
        .post("/pipelines/new/", {"slug": "net", "team": other_team.pk, "definition": VALID})
        .content.decode()
    )
    assert 'id="id_team_error"' in body
    assert not Pipeline.objects.filter(slug="net").exists()


def test_editing_saves_a_new_version_or_shows_errors(pipeline, developer, client_for):
    client = client_for(developer)
    body = client.get("/pipelines/payments-api/edit/").content.decode()
    assert "name: Payments API" in body and "Saving creates version 2" in body

    body = client.post("/pipelines/payments-api/edit/", {"definition": BROKEN}).content.decode()
    assert "line 3, column 11" in body
    pipeline.refresh_from_db()
    assert pipeline.current_version.number == 1

    response = client.post("/pipelines/payments-api/edit/", {"definition": VALID}, follow=True)
    assert "Saved as version 2." in response.content.decode()
    pipeline.refresh_from_db()
    assert pipeline.current_version.number == 2 and pipeline.name == "Claims Service"

    response = client.post(
        "/pipelines/payments-api/edit/", {"definition": VALID.replace("\n", "\r\n")}, follow=True
    )
    assert "No changes" in response.content.decode()
    assert pipeline.versions.count() == 2


def test_versions_and_diff(pipeline, developer, client_for):
    from orchestrator import actions

    actions.update_pipeline(
        pipeline,
        actor=developer,
        definition=pipeline.current_version.definition.replace(
            "run: echo deploy", "run: echo deploy --canary"
        ),
    )
    client = client_for(developer)
    body = client.get("/pipelines/payments-api/versions/").content.decode()
    assert 'v2</a> <span class="badge">current</span>' in body
    assert "/pipelines/payments-api/diff/?from=1&amp;to=2" in body
    body = client.get("/pipelines/payments-api/versions/?v=1").content.decode()
    assert 'id="definition"' in body and "run: echo deploy\n" in body

    body = client.get("/pipelines/payments-api/diff/").content.decode()  # latest vs previous
    assert '<div class="diff-header">--- version 1</div>' in body
    assert '<div class="diff-del">-        run: echo deploy</div>' in body
    assert '<div class="diff-add">+        run: echo deploy --canary</div>' in body
    assert 'class="diff-hunk"' in body and 'class="diff-ctx"' in body

    assert "identical" in client.get("/pipelines/payments-api/diff/?from=2&to=2").content.decode()
    assert client.get("/pipelines/payments-api/diff/?from=1&to=9").status_code == 404
    assert client.get("/pipelines/payments-api/diff/?from=x&to=y").status_code == 200

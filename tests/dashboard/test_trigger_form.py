"""The trigger form of the pipeline page: generated from the spec's parameters, validated
by the form and by orchestrator.spec (errors at their field), nothing started on error."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.django_db

DEFINITION = textwrap.dedent(
    """\
    name: Releases
    parameters:
      - name: version
        description: Release version
        required: true
      - name: region
        allowed: [eu, us]
        default: eu
      - name: channel
        allowed: [stable, beta]
        required: true
      - name: note
    stages:
      - name: build
        steps:
          - name: compile
            run: echo build
    """
)


@pytest.fixture
def releases(make_pipeline):
    return make_pipeline("releases", definition=DEFINITION)


def test_fields_are_generated_from_the_spec(releases, developer, client_for):
    body = client_for(developer).get("/pipelines/releases/").content.decode()
    assert '<form method="post" action="/pipelines/releases/run/" id="trigger-form"' in body
    assert '<input type="text" name="version"' in body and 'aria-required="true"' in body
    assert (
        'version <span aria-hidden="true">*</span><span class="sr-only">(required)</span>' in body
    )
    assert '<select name="region"' in body and '<option value="eu" selected>eu</option>' in body
    assert '<select name="channel"' in body and '<option value="beta">beta</option>' in body
    assert "Release version" in body
    assert '<input type="text" name="note"' in body


def test_missing_and_wrong_values_are_shown_at_the_field(releases, developer, client_for):
    from orchestrator.models import Run

    response = client_for(developer).post(
        "/pipelines/releases/run/", {"version": "", "region": "mars", "channel": "stable"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="id_version_error"' in body and "This field is required." in body
    assert 'id="id_region_error"' in body and "mars is not one of the available choices" in body
    assert 'aria-invalid="true"' in body
    assert not Run.objects.exists()


def test_a_parameter_error_from_the_spec_lands_at_its_field(
    releases, developer, client_for, monkeypatch
):
    from orchestrator import actions
    from orchestrator.models import Run
    from orchestrator.spec import ParameterError

    def refuse(*args, **kwargs):
        raise ParameterError([{"parameter": "version", "message": 'version "x" is not semver'}])

    monkeypatch.setattr(actions, "trigger_run", refuse)
    body = (
        client_for(developer)
        .post("/pipelines/releases/run/", {"version": "x", "channel": "stable"})
        .content.decode()
    )
    assert 'id="id_version_error"' in body and "version &quot;x&quot; is not semver" in body
    assert not Run.objects.exists()


def test_a_valid_form_starts_a_run_with_defaults(releases, developer, client_for, dispatched):
    from orchestrator.models import Run

    response = client_for(developer).post(
        "/pipelines/releases/run/",
        {"version": "2.0.0", "region": "", "channel": "beta", "note": ""},
    )
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.parameters == {"version": "2.0.0", "region": "eu", "channel": "beta"}
    assert run.triggered_by == developer


def test_runs_are_paginated_and_filtered(pipeline, developer, client_for, bulk_history):
    bulk_history(30)  # every tenth failed
    client = client_for(developer)
    body = client.get("/pipelines/payments-api/").content.decode()
    assert "Page 1 of 2" in body and "30 in all" in body
    assert body.count("data-run-id=") == 25
    body = client.get("/pipelines/payments-api/?status=failed").content.decode()
    assert "Page" not in body
    assert body.count("data-run-id=") == 3
    assert '<option value="failed" selected>' in body
    body = client.get("/pipelines/payments-api/?status=nonsense&page=2").content.decode()
    assert body.count("data-run-id=") == 5


def test_a_watcher_sees_no_trigger_form(pipeline, viewer, client_for):
    body = client_for(viewer).get("/pipelines/payments-api/").content.decode()
    assert "trigger-form" not in body
    assert "You may watch this pipeline but not run it." in body
    assert "Edit definition" not in body

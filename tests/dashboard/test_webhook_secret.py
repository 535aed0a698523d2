"""A pipeline's webhook secret (issue 18, point 8): shown once on creation, rotatable with an
audit event (the secret never in it), never in a list, the API or a page reload; pipelines
and runs have an admin, which can rotate too."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent

pytestmark = pytest.mark.django_db

VALID = """name: Claims
stages:
  - name: build
    steps:
      - name: compile
        run: echo hi
"""


def test_the_secret_is_shown_once_after_creation(developer, team, client_for):
    from orchestrator.models import Pipeline

    client = client_for(developer)
    response = client.post(
        "/pipelines/new/", {"slug": "claims", "team": team.pk, "definition": VALID}
    )
    assert response["Location"] == "/pipelines/claims/"
    secret = Pipeline.objects.get(slug="claims").webhook_secret
    first = client.get("/pipelines/claims/").content.decode()
    assert f'<code class="mono break" id="webhook-secret">{secret}</code>' in first
    again = client.get("/pipelines/claims/").content.decode()
    assert secret not in again
    for url in ("/pipelines/", "/", "/api/v1/pipelines/", "/api/v1/pipelines/claims/"):
        assert secret not in client.get(url).content.decode(), url


def test_rotating_is_audited_and_shows_the_new_secret_once(pipeline, developer, client_for):
    from orchestrator.actions import verify_signature
    from orchestrator.models import Pipeline

    old = pipeline.webhook_secret
    client = client_for(developer)
    page = client.get(f"/pipelines/{pipeline.slug}/webhook/").content.decode()
    assert old not in page and 'id="rotate-secret"' in page
    response = client.post(f"/pipelines/{pipeline.slug}/webhook/", {"action": "rotate"})
    assert response.status_code == 302
    new = Pipeline.objects.get(pk=pipeline.pk).webhook_secret
    assert new != old
    page = client.get(f"/pipelines/{pipeline.slug}/webhook/").content.decode()
    assert new in page
    assert new not in client.get(f"/pipelines/{pipeline.slug}/webhook/").content.decode()
    event = AuditEvent.objects.get(action="pipeline.webhook_rotate")
    assert (event.actor_name, event.target_name) == ("dana", pipeline.name)
    assert new not in str(event.details) and old not in str(event.details)
    body = b'{"parameters": {}}'
    from orchestrator.actions import sign

    assert not verify_signature(Pipeline.objects.get(pk=pipeline.pk), body, sign(old, body), None)


def test_only_those_who_may_change_the_pipeline_rotate(pipeline, viewer, outsider, client_for):
    assert client_for(viewer).post(f"/pipelines/{pipeline.slug}/webhook/").status_code == 403
    assert client_for(outsider).get(f"/pipelines/{pipeline.slug}/webhook/").status_code == 404
    assert not AuditEvent.objects.filter(action="pipeline.webhook_rotate").exists()


def test_the_admin_lists_pipelines_and_runs_without_the_secret(
    pipeline, make_run, superuser, client_for
):
    run = make_run()
    client = client_for(superuser)
    listing = client.get("/admin/orchestrator/pipeline/")
    assert listing.status_code == 200
    assert pipeline.slug in listing.content.decode()
    assert pipeline.webhook_secret not in listing.content.decode()
    detail = client.get(f"/admin/orchestrator/pipeline/{pipeline.pk}/change/").content.decode()
    assert pipeline.webhook_secret not in detail and pipeline.slug in detail
    assert client.get("/admin/orchestrator/run/").status_code == 200
    assert client.get(f"/admin/orchestrator/run/{run.pk}/change/").status_code == 200

    old = pipeline.webhook_secret
    answer = client.post(
        "/admin/orchestrator/pipeline/",
        {"action": "rotate_webhook_secret", "_selected_action": [pipeline.pk]},
    ).content.decode()
    pipeline.refresh_from_db()
    assert pipeline.webhook_secret != old and pipeline.webhook_secret in answer
    assert AuditEvent.objects.filter(action="pipeline.webhook_rotate").count() == 1

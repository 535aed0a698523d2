"""POST /hooks/{slug}/: a run triggered by a signed request (HMAC-SHA256 of the raw body with
the pipeline's webhook secret)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from governance.models import AuditEvent
from orchestrator.actions import sign
from orchestrator.models import Run, RunStatus

from .conftest import dedent

pytestmark = pytest.mark.django_db

DEFINITION = dedent(
    """
    name: hooked
    parameters:
      - name: ref
        required: true
      - name: env
        default: staging
        allowed: [staging, qa]
    stages:
      - name: build
        steps:
          - {name: compile, run: make}
    """
)


@pytest.fixture
def pipeline(new_pipeline):
    return new_pipeline(DEFINITION, slug="hooked")


@pytest.fixture
def client():
    return Client(enforce_csrf_checks=True)  # the signature, not a CSRF token, authenticates


def post(client, slug: str, body: bytes, signature: str | None):
    headers = {"HTTP_X_CLEARWAY_SIGNATURE": signature} if signature is not None else {}
    return client.post(f"/hooks/{slug}/", body, content_type="application/json", **headers)


def signed(client, pipeline, payload) -> tuple:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return post(client, pipeline.slug, body, sign(pipeline.webhook_secret, body))


def test_a_signed_request_triggers_a_run(client, pipeline, worker):
    response = signed(client, pipeline, {"parameters": {"ref": "abc123"}})
    assert response.status_code == 201, response.content
    body = response.json()
    run = Run.objects.get(pk=body["id"])
    assert body == {"id": run.pk, "number": 1, "status": RunStatus.RUNNING}
    assert run.trigger == "webhook" and run.triggered_by is None
    assert run.parameters == {"ref": "abc123", "env": "staging"}
    event = AuditEvent.objects.get(action="run.trigger")
    assert event.actor_name == "system" and event.details["trigger"] == "webhook"


def test_the_signature_covers_the_raw_body(client, pipeline):
    body = b'{"parameters": {"ref": "abc"}}'
    spaced = b'{"parameters":  {"ref": "abc"}}'  # the same JSON, other bytes
    assert post(client, "hooked", spaced, sign(pipeline.webhook_secret, body)).status_code == 403
    assert post(client, "hooked", body, sign(pipeline.webhook_secret, body)).status_code == 201


@pytest.mark.parametrize(
    "signature, reason",
    [
        (None, "missing signature"),
        ("", "missing signature"),
        ("sha256=" + "0" * 64, "bad signature"),
        ("sha1=abc", "bad signature"),
        ("wrong-secret", "bad signature"),
    ],
    ids=["absent", "empty", "wrong-digest", "wrong-algorithm", "wrong-secret"],
)
def test_a_bad_or_missing_signature_is_403_and_audited(client, pipeline, signature, reason):
    body = json.dumps({"parameters": {"ref": "abc"}}).encode()
    if signature == "wrong-secret":
        signature = sign("not-the-secret", body)
    response = post(client, "hooked", body, signature)
    assert response.status_code == 403
    assert response.json() == {"message": "invalid or missing signature"}
    assert not Run.objects.exists()
    event = AuditEvent.objects.get(action="webhook.refused")
    assert event.outcome == "denied"
    assert event.details["reason"] == reason
    assert (event.target_type, event.target_id, event.target_name) == (
        "pipeline",
        str(pipeline.pk),
        "hooked",
    )


def test_an_unknown_pipeline_looks_like_a_bad_signature(client, pipeline):
    body = json.dumps({"parameters": {"ref": "abc"}}).encode()
    unknown = post(client, "nope", body, sign(pipeline.webhook_secret, body))
    bad = post(client, "hooked", body, sign("guess", body))
    assert (unknown.status_code, unknown.json()) == (bad.status_code, bad.json())
    assert unknown.status_code == 403
    event = AuditEvent.objects.filter(action="webhook.refused").order_by("seq").first()
    assert event.outcome == "denied" and event.target_name == "nope" and event.target_id == ""


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{not json", "not valid JSON"),
        (b'["a list"]', '"parameters" must be an object'),
        (b'{"parameters": "ref=abc"}', '"parameters" must be an object'),
    ],
)
def test_a_signed_body_that_is_not_a_parameters_object_is_400(client, pipeline, body, words):
    response = signed(client, pipeline, body)
    assert response.status_code == 400
    assert words in response.json()["message"]
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    "parameters, named",
    [({}, "ref"), ({"ref": "a", "nope": "1"}, "nope"), ({"ref": "a", "env": "prod"}, "env")],
    ids=["missing", "unknown", "not-allowed"],
)
def test_parameters_are_validated(client, pipeline, parameters, named):
    response = signed(client, pipeline, {"parameters": parameters})
    assert response.status_code == 400
    assert [e["parameter"] for e in response.json()["errors"]] == [named]
    assert not Run.objects.exists()


def test_an_empty_signed_body_uses_the_defaults(client, new_pipeline):
    pipeline = new_pipeline(DEFINITION.replace("required: true", "default: main"), slug="dflt")
    response = signed(client, pipeline, b"")
    assert response.status_code == 201
    assert Run.objects.get().parameters == {"ref": "main", "env": "staging"}


def test_a_body_over_64_kib_is_413_even_when_signed(client, pipeline):
    body = json.dumps({"parameters": {"ref": "x" * 70_000}}).encode()
    response = signed(client, pipeline, body)
    assert response.status_code == 413
    assert "64 KiB" in response.json()["message"]
    assert not Run.objects.exists()


def test_only_post(client, pipeline):
    assert client.get("/hooks/hooked/").status_code == 405

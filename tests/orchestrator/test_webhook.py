"""POST /hooks/{slug}/: a run triggered by a signed request (HMAC-SHA256 of the raw body with
the pipeline's webhook secret)."""

from __future__ import annotations

import json
import re
import time

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


# --- timestamped signatures (replay protection) ------------------------------------------


def post_at(client, pipeline, payload, timestamp, *, secret=None, signed_at=None):
    """A request signed over "<timestamp>.<body>" (signed_at: a different signed timestamp)."""
    body = json.dumps(payload).encode()
    signature = sign(
        secret or pipeline.webhook_secret, body, signed_at if signed_at is not None else timestamp
    )
    return client.post(
        f"/hooks/{pipeline.slug}/",
        body,
        content_type="application/json",
        HTTP_X_CLEARWAY_SIGNATURE=signature,
        HTTP_X_CLEARWAY_TIMESTAMP=str(timestamp),
    )


def now_s() -> int:
    return int(time.time())


def test_a_timestamped_request_triggers_a_run_once(client, pipeline, worker):
    ts = now_s()
    first = post_at(client, pipeline, {"parameters": {"ref": "abc"}}, ts)
    assert first.status_code == 201, first.content
    again = post_at(client, pipeline, {"parameters": {"ref": "abc"}}, ts)  # captured, replayed
    assert again.status_code == 409
    assert "already received" in again.json()["message"]
    assert Run.objects.count() == 1
    event = AuditEvent.objects.get(action="webhook.refused")
    assert event.outcome == "denied" and event.details["reason"] == "replayed delivery"
    # The same parameters sent again as a new request (a new timestamp) are another run.
    later = post_at(client, pipeline, {"parameters": {"ref": "abc"}}, ts + 1)
    assert later.status_code == 201


def test_the_timestamp_is_part_of_what_is_signed(client, pipeline):
    ts = now_s()
    # Signed over the body alone, sent with a timestamp; signed for another timestamp.
    body = json.dumps({"parameters": {"ref": "abc"}}).encode()
    body_only = client.post(
        "/hooks/hooked/",
        body,
        content_type="application/json",
        HTTP_X_CLEARWAY_SIGNATURE=sign(pipeline.webhook_secret, body),
        HTTP_X_CLEARWAY_TIMESTAMP=str(ts),
    )
    assert body_only.status_code == 403
    moved = post_at(client, pipeline, {"parameters": {"ref": "abc"}}, ts, signed_at=ts - 60)
    assert moved.status_code == 403
    assert not Run.objects.exists()


@pytest.mark.parametrize("offset, words", [(-302, "behind"), (400, "ahead of")])
def test_a_timestamp_outside_the_window_is_refused(client, pipeline, offset, words):
    response = post_at(client, pipeline, {"parameters": {"ref": "abc"}}, now_s() + offset)
    assert response.status_code == 403
    message = response.json()["message"]
    seconds = int(re.search(rf"is (\d+) s {words} the server's clock", message).group(1))
    assert abs(abs(offset) - seconds) <= 1  # the clock may tick in between
    assert "allowed: 300 s" in message
    assert not Run.objects.exists()
    assert AuditEvent.objects.get(action="webhook.refused").details["reason"] == message


# "²" and "١٢" are digits to str.isdigit() but not to int(): they once answered 500.
@pytest.mark.parametrize("value", ["yesterday", "-5", "1.5", "9" * 13, "²", "١٢", "1²"])
def test_a_malformed_timestamp_is_refused_and_audited(client, pipeline, value):
    response = post_at(client, pipeline, {"parameters": {"ref": "abc"}}, value)
    assert response.status_code == 400
    assert response.json()["message"] == (
        "X-Clearway-Timestamp must be the Unix time in whole seconds"
    )
    refusal = AuditEvent.objects.get(action="webhook.refused")
    assert refusal.outcome == "denied"
    assert refusal.details["reason"] == response.json()["message"]
    assert not Run.objects.exists()


def test_a_refused_request_can_be_sent_again(client, pipeline, worker):
    """Bad parameters: nothing ran, so the same signed request is not a replay."""
    ts = now_s()
    assert post_at(client, pipeline, {"parameters": {}}, ts).status_code == 400
    assert post_at(client, pipeline, {"parameters": {}}, ts).status_code == 400


def test_timestamps_can_be_required(client, pipeline, settings, worker):
    settings.CLEARWAY = {**settings.CLEARWAY, "WEBHOOK_REQUIRE_TIMESTAMP": True}
    response = signed(client, pipeline, {"parameters": {"ref": "abc"}})
    assert response.status_code == 403
    assert "missing X-Clearway-Timestamp" in response.json()["message"]
    assert post_at(client, pipeline, {"parameters": {"ref": "abc"}}, now_s()).status_code == 201


def test_old_deliveries_are_forgotten(client, pipeline, worker):
    from datetime import timedelta

    from django.utils import timezone

    from orchestrator.models import WebhookDelivery

    WebhookDelivery.objects.create(
        pipeline=pipeline, signature="a" * 64, received_at=timezone.now() - timedelta(hours=1)
    )
    assert post_at(client, pipeline, {"parameters": {"ref": "abc"}}, now_s()).status_code == 201
    assert list(WebhookDelivery.objects.values_list("signature", flat=True)) != ["a" * 64]
    assert WebhookDelivery.objects.count() == 1

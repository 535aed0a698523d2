"""Rate limits (orchestrator.throttles): per user and per address for the API, per address
for the token endpoint and the webhook; a 429 says when to come back (Retry-After). The
suite's settings raise every rate (tests/settings.py); each test here sets one low."""

from __future__ import annotations

import ipaddress
import json

import pytest
from django.core.cache import cache
from django.test import Client

from orchestrator.actions import sign
from tests.conftest import api_token

from .conftest import dedent

pytestmark = pytest.mark.django_db

HIGH = "100000/minute"


@pytest.fixture
def rates(settings):
    """Set some scopes' rates; the others stay high. The counters start empty."""
    cache.clear()

    def set_rates(**scopes):
        merged = {s: HIGH for s in ("user", "address", "token", "webhook")} | scopes
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": merged}

    yield set_rates
    cache.clear()


def _token_client(user, address="127.0.0.1") -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {api_token(user)}", REMOTE_ADDR=address)


def _assert_throttled(response):
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) >= 1
    assert "throttled" in response.json()["message"].lower()


def test_the_api_is_limited_per_user_whatever_the_address(rates, developer):
    rates(user="3/minute")
    for n in range(3):
        assert _token_client(developer, f"192.0.2.{n}").get("/api/v1/runs/").status_code == 200
    _assert_throttled(_token_client(developer, "192.0.2.77").get("/api/v1/runs/"))


def test_the_api_is_limited_per_address_whoever_signs_in(rates, developer, viewer):
    rates(address="3/minute")
    assert _token_client(developer).get("/api/v1/runs/").status_code == 200
    assert _token_client(viewer).get("/api/v1/runs/").status_code == 200
    assert _token_client(developer).get("/api/v1/pipelines/").status_code == 200
    _assert_throttled(_token_client(viewer).get("/api/v1/runs/"))
    # Another address is counted on its own.
    assert _token_client(viewer, "192.0.2.9").get("/api/v1/runs/").status_code == 200


def test_a_spoofed_forwarded_for_does_not_reset_the_address_limit(rates, developer, viewer):
    """DRF's own get_ident would read X-Forwarded-For from anyone."""
    rates(address="2/minute")
    for n in range(2):
        client = _token_client(viewer if n else developer)
        assert client.get("/api/v1/runs/", HTTP_X_FORWARDED_FOR=f"6.6.6.{n}").status_code == 200
    spoofed = _token_client(viewer).get("/api/v1/runs/", HTTP_X_FORWARDED_FOR="6.6.6.99")
    _assert_throttled(spoofed)


def test_behind_a_trusted_proxy_each_client_address_has_its_own_limit(rates, settings, viewer):
    settings.CLEARWAY_TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    rates(address="1/minute")
    client = _token_client(viewer)
    assert client.get("/api/v1/runs/", HTTP_X_FORWARDED_FOR="198.51.100.1").status_code == 200
    assert client.get("/api/v1/runs/", HTTP_X_FORWARDED_FOR="198.51.100.2").status_code == 200
    _assert_throttled(client.get("/api/v1/runs/", HTTP_X_FORWARDED_FOR="198.51.100.1"))


def test_the_token_endpoint_has_its_own_limit_per_address(rates, make_user):
    rates(token="2/minute")
    tess = make_user("tess")
    tess.set_password("correct horse battery staple")
    tess.save()
    client = Client()
    body = {"username": "tess", "password": "correct horse battery staple"}
    assert client.post("/api/v1/auth/token/", body).status_code == 200
    assert client.post("/api/v1/auth/token/", body).status_code == 200
    _assert_throttled(client.post("/api/v1/auth/token/", body))
    other = Client(REMOTE_ADDR="192.0.2.50")
    assert other.post("/api/v1/auth/token/", body).status_code == 200


HOOKED = dedent(
    """
    name: hooked
    stages:
      - name: build
        steps:
          - {name: compile, run: make}
    """
)


def test_the_webhook_is_limited_per_address(rates, new_pipeline, worker):
    rates(webhook="2/minute")
    pipeline = new_pipeline(HOOKED, slug="hooked")
    body = json.dumps({"parameters": {}}).encode()
    signature = sign(pipeline.webhook_secret, body)

    def deliver(address="127.0.0.1"):
        return Client(REMOTE_ADDR=address).post(
            "/hooks/hooked/",
            body,
            content_type="application/json",
            HTTP_X_CLEARWAY_SIGNATURE=signature,
        )

    assert deliver().status_code == 201
    assert deliver().status_code == 201
    throttled = deliver()
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) >= 1
    assert "too many webhook requests" in throttled.json()["message"]
    assert deliver("192.0.2.60").status_code == 201

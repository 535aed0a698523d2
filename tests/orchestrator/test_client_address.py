"""The client address is Clearway's own decision (governance.client_ip): the socket's peer,
or — only when that peer is a trusted proxy — what the proxy appended to X-Forwarded-For.
Anyone else's X-Forwarded-For, 127.0.0.1's included, changes nothing: not the audit log,
not the lockout, not the throttles."""

from __future__ import annotations

import ipaddress

import pytest
from django.contrib.auth.models import User
from django.test import Client

from governance.client_ip import resolve
from governance.models import AuditEvent

from .conftest import dedent

NETS = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::/64")]


@pytest.mark.parametrize(
    "remote, forwarded, expected",
    [
        ("127.0.0.1", "6.6.6.6", "127.0.0.1"),  # not a trusted proxy: header ignored
        ("203.0.113.5", "6.6.6.6", "203.0.113.5"),
        ("10.0.0.2", None, "10.0.0.2"),  # a proxy's own request
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),  # what the proxy saw
        ("10.0.0.2", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # client-written entry: no
        ("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.9", "198.51.100.7"),  # two proxies
        ("10.0.0.2", "10.0.0.8, 10.0.0.9", "10.0.0.8"),  # only proxies: the farthest
        ("10.0.0.2", "garbage, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "garbage", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.7:4711", "198.51.100.7"),
        ("2001:db8::5", "[2001:db8:1::9]:443", "2001:db8:1::9"),
    ],
)
def test_resolve(remote, forwarded, expected):
    assert resolve(remote, forwarded, NETS) == expected


def test_without_trusted_proxies_the_header_never_counts():
    assert resolve("10.0.0.2", "198.51.100.7", []) == "10.0.0.2"


PASSWORD = "correct horse battery staple"


@pytest.mark.django_db
def test_six_failed_token_requests_with_different_forwarded_for_are_locked_out():
    """The attack: a client on 127.0.0.1 (a step on the web host) rotates X-Forwarded-For
    and usernames to dodge the per-address lockout. AXES_FAILURE_LIMIT is 5."""
    User.objects.create_user("ana", password=PASSWORD)
    client = Client()
    for n in range(5):
        failed = client.post(
            "/api/v1/auth/token/",
            {"username": f"guess{n}", "password": "nope"},
            HTTP_X_FORWARDED_FOR=f"198.51.100.{n + 1}",
        )
        # the fifth failure is the one that locks the address out
        assert failed.status_code == (400 if n < 4 else 429)
    sixth = client.post(
        "/api/v1/auth/token/",
        {"username": "ana", "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="198.51.100.99",
    )
    assert sixth.status_code == 429
    assert int(sixth["Retry-After"]) > 0
    assert "locked out" in sixth.json()["message"]


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_lockout_counts_the_forwarded_client(settings):
    settings.CLEARWAY_TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.1/32")]
    User.objects.create_user("ana", password=PASSWORD)
    client = Client()
    for n in range(5):
        client.post(
            "/api/v1/auth/token/",
            {"username": f"guess{n}", "password": "nope"},
            HTTP_X_FORWARDED_FOR="198.51.100.1",
        )
    other_client = client.post(
        "/api/v1/auth/token/",
        {"username": "ana", "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="198.51.100.2",
    )
    assert other_client.status_code == 200
    locked = client.post(
        "/api/v1/auth/token/",
        {"username": "ana", "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="198.51.100.1",
    )
    assert locked.status_code == 429


DEFINITION = dedent(
    """
    name: traced
    stages:
      - name: build
        steps:
          - {name: compile, run: "true"}
    """
)


@pytest.mark.django_db
def test_a_run_triggered_with_a_spoofed_forwarded_for_is_audited_with_the_real_address(
    new_pipeline, developer, worker
):
    pipeline = new_pipeline(DEFINITION, slug="traced")
    client = Client()
    client.force_login(developer)
    response = client.post(
        f"/api/v1/pipelines/{pipeline.slug}/runs/",
        {"parameters": {}},
        content_type="application/json",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
    )
    assert response.status_code == 201, response.content
    event = AuditEvent.objects.get(action="run.trigger")
    assert event.ip == "127.0.0.1"


@pytest.mark.django_db
def test_a_trusted_proxy_passes_the_client_address_to_the_audit_log(
    new_pipeline, developer, worker, settings
):
    settings.CLEARWAY_TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.0/8")]
    pipeline = new_pipeline(DEFINITION, slug="traced")
    client = Client()
    client.force_login(developer)
    client.post(
        f"/api/v1/pipelines/{pipeline.slug}/runs/",
        {"parameters": {}},
        content_type="application/json",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7",
    )
    assert AuditEvent.objects.get(action="run.trigger").ip == "198.51.100.7"


def test_bad_trusted_proxies_are_refused_at_start(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    env.update(CLEARWAY_VAR_DIR=str(tmp_path), CLEARWAY_TRUSTED_PROXIES="10.0.0.0/24,proxy")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CLEARWAY_TRUSTED_PROXIES: 'proxy' is not an IP address or network" in result.stderr

"""A browser session ends after CLEARWAY_SESSION_IDLE_MINUTES without a request and
CLEARWAY_SESSION_MAX_HOURS after sign-in, audited; it is bound to nothing a client or a
proxy sends (the address, X-Forwarded-For)."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from governance.middleware import SESSION_SEEN, SESSION_STARTED
from governance.models import AuditEvent, UserSession

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def signed_in(viewer):
    viewer.set_password(PASSWORD)
    viewer.save()
    client = Client()
    assert (
        client.post("/accounts/login/", {"username": "vic", "password": PASSWORD}).status_code
        == 302
    )
    return client


def _age(client, *, started: float = 0, seen: float = 0) -> None:
    """Move the session's sign-in and last-request times `started`/`seen` seconds back."""
    session = client.session
    session[SESSION_STARTED] -= started
    session[SESSION_SEEN] -= seen
    session.save()


def test_sign_in_starts_the_clocks_and_records_the_session(signed_in, viewer):
    session = signed_in.session
    assert abs(session[SESSION_STARTED] - time.time()) < 60
    recorded = UserSession.objects.get(user=viewer)
    assert recorded.session_key == session.session_key and recorded.ended_at is None


def test_an_idle_session_ends_and_is_audited(signed_in, viewer, settings):
    settings.CLEARWAY_SESSION_IDLE_MINUTES = 30
    _age(signed_in, started=29 * 60, seen=29 * 60)
    assert signed_in.get("/").status_code == 200  # 29 minutes: still signed in
    _age(signed_in, seen=31 * 60)
    response = signed_in.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    event = AuditEvent.objects.get(action="session.expired")
    assert event.details == {"reason": "idle"} and event.actor_id == viewer.pk
    assert UserSession.objects.get(user=viewer).end_reason == "idle"
    assert signed_in.get("/").status_code == 302  # and stays ended


def test_activity_keeps_it_alive_but_not_beyond_the_absolute_lifetime(signed_in, settings):
    settings.CLEARWAY_SESSION_MAX_HOURS = 12
    _age(signed_in, started=11 * 3600, seen=0)
    assert signed_in.get("/").status_code == 200
    _age(signed_in, started=3600 + 1, seen=0)  # 12 h and a second, active a moment ago
    assert signed_in.get("/").status_code == 302
    assert AuditEvent.objects.get(action="session.expired").details == {"reason": "absolute"}


def test_the_last_request_time_is_written_at_most_once_a_minute(signed_in):
    before = signed_in.session[SESSION_SEEN]
    signed_in.get("/")
    assert signed_in.session[SESSION_SEEN] == before  # within the minute: no session write
    _age(signed_in, seen=61)
    signed_in.get("/")
    assert signed_in.session[SESSION_SEEN] > before - 61


def test_the_session_is_not_bound_to_the_address_or_forwarded_for(signed_in):
    for headers in (
        {"REMOTE_ADDR": "192.0.2.50"},
        {"HTTP_X_FORWARDED_FOR": "203.0.113.9"},
        {"HTTP_USER_AGENT": "something else"},
    ):
        assert signed_in.get("/", **headers).status_code == 200, headers
    assert not AuditEvent.objects.filter(action="session.expired").exists()

"""Two headers found missing from outside: the CSP let scripts open websockets to any host
(`connect-src ws: wss:`), and the page that shows a new API token could be cached."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db


def connect_src(response) -> list[str]:
    for directive in response["Content-Security-Policy"].split(";"):
        name, *values = directive.split()
        if name == "connect-src":
            return values
    raise AssertionError("no connect-src")


@pytest.fixture
def user():
    return User.objects.create_user("ana", password="correct horse battery staple")


def test_websockets_may_connect_only_to_the_site_itself(client, user):
    client.force_login(user)
    assert connect_src(client.get("/")) == ["'self'", "ws://testserver"]


def test_over_https_only_wss_to_the_site_itself(client, user, settings):
    settings.SECURE_SSL_REDIRECT = False
    client.force_login(user)
    response = client.get("/", secure=True, HTTP_HOST="localhost")
    assert connect_src(response) == ["'self'", "wss://localhost"]


def test_the_page_that_shows_a_new_token_is_never_cached(client, user):
    client.force_login(user)
    form = {"action": "create", "name": "ci", "scopes": ["read"], "lifetime": 1, "unit": "days"}
    created = client.post("/accounts/tokens/", form)
    assert created.status_code == 200
    key = created.context["new_key"]
    assert key in created.content.decode()
    assert "no-store" in created["Cache-Control"]
    assert "no-store" in client.get("/accounts/tokens/")["Cache-Control"]

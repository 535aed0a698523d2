""" "Sign out everywhere" ends every session of the user (this one too), audited; their API
tokens keep working unless they ask for those to be revoked as well."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from governance import tokens
from governance.models import ApiToken, AuditEvent, UserSession

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def _sign_in(username) -> Client:
    client = Client()
    assert (
        client.post("/accounts/login/", {"username": username, "password": PASSWORD}).status_code
        == 302
    )
    assert client.get("/").status_code == 200
    return client


@pytest.fixture
def people(viewer, developer):
    for user in (viewer, developer):
        user.set_password(PASSWORD)
        user.save()
    return viewer, developer


def _token(user):
    return tokens.issue(
        user, name="ci", scopes=["read"], expires_at=timezone.now() + timedelta(days=1)
    )


def test_every_session_of_the_user_ends_and_nothing_else(people):
    viewer, developer = people
    laptop, phone, other = _sign_in("vic"), _sign_in("vic"), _sign_in("dana")
    token, raw = _token(viewer)
    response = laptop.post("/accounts/tokens/", {"action": "sign-out-everywhere"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert laptop.get("/").status_code == 302
    assert phone.get("/").status_code == 302
    assert other.get("/").status_code == 200  # another person's session
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/runs/").status_code == 200
    event = AuditEvent.objects.get(action="session.sign_out_everywhere")
    assert event.actor_id == viewer.pk
    assert event.details == {"sessions": 2, "tokens_revoked": 0}


def test_tokens_are_revoked_only_when_asked(people):
    viewer, _ = people
    laptop = _sign_in("vic")
    token, raw = _token(viewer)
    laptop.post("/accounts/tokens/", {"action": "sign-out-everywhere", "revoke_tokens": "on"})
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/runs/").status_code == 401
    assert AuditEvent.objects.get(action="session.sign_out_everywhere").details == {
        "sessions": 1,
        "tokens_revoked": 1,
    }


def test_a_session_from_before_the_feature_ends_too(people):
    viewer, _ = people
    old = Client()
    old.force_login(viewer)
    UserSession.objects.all().delete()  # as if signed in before sessions were recorded
    laptop = _sign_in("vic")
    laptop.post("/accounts/tokens/", {"action": "sign-out-everywhere"})
    assert old.get("/").status_code == 302
    assert not [
        s for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(viewer.pk)
    ]

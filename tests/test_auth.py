"""Login, logout, password change, API tokens, login throttling (django-axes)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from governance.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def user():
    return User.objects.create_user("ana", password=PASSWORD)


def test_login_page_renders(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"Log in to Clearway" in response.content


def test_pages_need_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_logout_and_audit(client, user):
    response = client.post("/accounts/login/", {"username": "ana", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert AuditEvent.objects.filter(action="auth.login", actor_name="ana").exists()
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_failed_login_is_audited(client, user):
    client.post("/accounts/login/", {"username": "ana", "password": "wrong"})
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.outcome == "failure" and event.target_name == "ana"


def test_lockout_after_repeated_failures_not_reset_by_spoofed_forwarded_for(client, user):
    for _ in range(5):
        client.post("/accounts/login/", {"username": "ana", "password": "wrong"})
    spoofed = client.post(
        "/accounts/login/",
        {"username": "ana", "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="203.0.113.9",
    )
    assert spoofed.status_code == 429
    assert client.get("/").status_code == 302


def test_api_token_endpoint_is_throttled(client, user):
    ok = client.post("/api/v1/auth/token/", {"username": "ana", "password": PASSWORD})
    assert ok.status_code == 200 and ok.json()["token"]
    for _ in range(5):
        client.post("/api/v1/auth/token/", {"username": "ana", "password": "nope"})
    locked = client.post(
        "/api/v1/auth/token/",
        {"username": "ana", "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="198.51.100.7",
    )
    assert locked.status_code in (403, 429)


def test_password_change(client, user):
    client.force_login(user)
    response = client.post(
        "/accounts/password/",
        {
            "old_password": PASSWORD,
            "new_password1": "an0ther-long-passphrase",
            "new_password2": "an0ther-long-passphrase",
        },
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password("an0ther-long-passphrase")


def test_user_creates_uses_and_revokes_own_token(client, user):
    client.force_login(user)
    form = {"action": "create", "name": "ci", "scopes": ["read"], "lifetime": 30, "unit": "days"}
    page = client.post("/accounts/tokens/", form)
    token = ApiToken.objects.get(user=user)
    key = page.context["new_key"]
    assert key.startswith(f"cw_{token.prefix}_") and key.encode() in page.content
    api = client.__class__()
    assert api.get("/api/v1/pipelines/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    client.post("/accounts/tokens/", {"action": "revoke", "token": token.pk})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert api.get("/api/v1/pipelines/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"token.create", "token.revoke"} <= actions


def test_api_requires_authentication(client):
    assert client.get("/api/v1/pipelines/").status_code in (401, 403)


def test_roles_are_seeded():
    from django.contrib.auth.models import Group

    names = set(Group.objects.values_list("name", flat=True))
    assert {"viewer", "developer", "approver", "policy-admin", "compliance-manager"} <= names

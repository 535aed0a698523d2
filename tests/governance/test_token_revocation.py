"""A token can be revoked (by its owner or a superuser): it then answers 401, audited. Its
last use is shown, written at most once a minute."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from governance import credentials, tokens
from governance.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db


def _token(user, name="ci"):
    return tokens.issue(
        user, name=name, scopes=["read"], expires_at=timezone.now() + timedelta(days=1)
    )


def _client(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_a_revoked_token_is_a_401_and_its_use_is_audited(viewer):
    token, raw = _token(viewer)
    client = _client(raw)
    assert client.get("/api/v1/runs/").status_code == 200
    assert credentials.revoke_api_token(actor=viewer, token=token)
    assert not credentials.revoke_api_token(actor=viewer, token=token)  # once
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert "'ci' was revoked on" in response.json()["message"]
    assert AuditEvent.objects.filter(action="token.revoke", outcome="success").count() == 1
    refused = AuditEvent.objects.get(action="token.refused")
    assert refused.details == {"reason": "revoked"} and refused.outcome == "denied"


def test_only_the_owner_or_a_superuser_revokes(viewer, developer, superuser):
    token, raw = _token(viewer)
    with pytest.raises(credentials.CredentialRefused, match="only your own"):
        credentials.revoke_api_token(actor=developer, token=token)
    assert AuditEvent.objects.filter(action="token.revoke", outcome="denied").exists()
    assert _client(raw).get("/api/v1/runs/").status_code == 200
    assert credentials.revoke_api_token(actor=superuser, token=token)
    assert ApiToken.objects.get(pk=token.pk).revoked_by == superuser


def test_the_page_revokes_only_the_users_own_tokens(client, viewer, developer):
    mine, _ = _token(viewer)
    theirs, raw = _token(developer)
    client.force_login(viewer)
    client.post("/accounts/tokens/", {"action": "revoke", "token": theirs.pk})
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is None
    client.post("/accounts/tokens/", {"action": "revoke", "token": mine.pk})
    assert ApiToken.objects.get(pk=mine.pk).revoked_at is not None
    page = client.get("/accounts/tokens/").content.decode()
    assert "revoked" in page and f"cw_{mine.prefix}" in page


def test_last_use_is_recorded_at_most_once_a_minute(viewer, django_assert_max_num_queries):
    token, raw = _token(viewer)
    now = timezone.now()
    assert tokens.authenticate(raw, now).last_used_at == now
    # Within the minute: one SELECT (token and user), no UPDATE.
    with django_assert_max_num_queries(1):
        tokens.authenticate(raw, now + timedelta(seconds=59))
    assert ApiToken.objects.get(pk=token.pk).last_used_at == now
    later = now + timedelta(seconds=61)
    tokens.authenticate(raw, later)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == later

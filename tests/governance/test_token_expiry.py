"""Every API token expires: at most CLEARWAY_TOKEN_MAX_DAYS (default 90) ahead, and an
expired token is a 401 that says so, audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from governance import credentials, tokens
from governance.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db


def test_the_maximum_lifetime_is_90_days_by_default(viewer):
    now = timezone.now()
    credentials.create_api_token(
        actor=viewer, name="ok", scopes=["read"], expires_at=now + timedelta(days=90), now=now
    )
    with pytest.raises(credentials.CredentialRefused, match="at most 90 days"):
        credentials.create_api_token(
            actor=viewer, name="long", scopes=["read"], expires_at=now + timedelta(days=91), now=now
        )
    refused = AuditEvent.objects.get(action="token.create", outcome="denied")
    assert "at most 90 days" in refused.details["reason"]
    assert ApiToken.objects.count() == 1


def test_the_maximum_is_configurable(viewer, settings):
    settings.CLEARWAY_TOKEN_MAX_DAYS = 7
    now = timezone.now()
    with pytest.raises(credentials.CredentialRefused, match="CLEARWAY_TOKEN_MAX_DAYS"):
        credentials.create_api_token(
            actor=viewer, name="ci", scopes=["read"], expires_at=now + timedelta(days=8), now=now
        )


def test_a_token_without_expiry_or_in_the_past_is_refused(viewer):
    now = timezone.now()
    for expires_at in (None, now - timedelta(seconds=1)):
        with pytest.raises(credentials.CredentialRefused, match="expir"):
            credentials.create_api_token(
                actor=viewer, name="ci", scopes=["read"], expires_at=expires_at, now=now
            )


def test_an_expired_token_is_a_401_that_says_so_and_is_audited(viewer):
    now = timezone.now()
    token, raw = tokens.issue(
        viewer, name="nightly", scopes=["read"], expires_at=now + timedelta(hours=1), now=now
    )
    ApiToken.objects.filter(pk=token.pk).update(expires_at=now - timedelta(minutes=1))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    message = response.json()["message"]
    assert "'nightly' expired on" in message and "/accounts/tokens/" in message
    event = AuditEvent.objects.get(action="token.refused")
    assert event.outcome == "denied" and event.details == {"reason": "expired"}
    assert event.actor_id == viewer.pk and event.target_id == str(token.pk)

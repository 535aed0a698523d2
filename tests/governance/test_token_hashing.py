"""API tokens are hashed at rest: the database holds a prefix and a SHA-256 digest, nothing
that authenticates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from governance import credentials
from governance.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db


def _create(user, **kwargs):
    kwargs.setdefault("expires_at", timezone.now() + timedelta(days=30))
    return credentials.create_api_token(actor=user, name="ci", scopes=["read"], **kwargs)


def test_the_database_holds_no_usable_secret(viewer):
    token, raw = _create(viewer)
    secret = raw.split("_", 2)[2]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM governance_apitoken WHERE id = %s", [token.pk])
        row = " ".join(str(v) for v in cursor.fetchone())
    assert raw not in row and secret not in row
    assert token.digest != raw and len(token.digest) == 64
    assert raw.startswith(f"cw_{token.prefix}_") and len(secret) >= 43
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/runs/").status_code == 200
    # What the database holds does not authenticate, in any form.
    for stolen in (token.digest, f"cw_{token.prefix}_{token.digest}"):
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {stolen}")
        assert client.get("/api/v1/runs/").status_code == 401


def test_the_audit_log_names_the_token_never_its_secret(viewer):
    token, raw = _create(viewer)
    event = AuditEvent.objects.get(action="token.create", target_id=str(token.pk))
    assert event.details["prefix"] == token.prefix
    assert raw.split("_", 2)[2] not in str(event.details) + event.target_name


def test_two_tokens_never_share_a_secret(viewer):
    raws = {_create(viewer)[1] for _ in range(5)}
    assert len(raws) == 5 and ApiToken.objects.count() == 5


def test_an_old_drf_token_is_refused_with_the_way_out(viewer):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "a" * 40)
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert "old-style API token" in response.json()["message"]
    assert "/accounts/tokens/" in response.json()["message"]

"""The deprecated token endpoint keeps working for `read` and `trigger`: each call issues a
new named token with those scopes only, for the maximum lifetime, and says it is deprecated.
Migration 0012 invalidated DRF's old tokens."""

from __future__ import annotations

import importlib
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import connection
from rest_framework.test import APIClient

from governance.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def dana(developer):
    developer.set_password(PASSWORD)
    developer.save()
    return developer


def test_it_issues_a_read_and_trigger_token_with_a_deprecation_note(dana, pipeline, settings):
    response = APIClient().post("/api/v1/auth/token/", {"username": "dana", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["scopes"] == ["read", "trigger"] and "deprecated" in body["deprecation"]
    assert response["Deprecation"] == "true" and "/accounts/tokens/" in response["Link"]
    token = ApiToken.objects.get(user=dana)
    assert token.name == "token endpoint"
    assert token.expires_at - token.created_at == timedelta(days=settings.CLEARWAY_TOKEN_MAX_DAYS)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {body['token']}")  # the old header still works
    assert api.post("/api/v1/pipelines/payments-api/runs/", {}, format="json").status_code == 201
    assert api.put("/api/v1/pipelines/payments-api/", {}, format="json").status_code == 403
    assert AuditEvent.objects.filter(action="token.obtain", target_id=str(token.pk)).exists()


def test_the_migration_invalidates_drf_tokens(dana):
    migration = importlib.import_module("governance.migrations.0010_api_tokens")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer)"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s)", ["a" * 40, dana.pk])
    # The function uses only the schema editor's connection.
    migration.invalidate_drf_tokens(None, SimpleNamespace(connection=connection))
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0
        cursor.execute("DROP TABLE authtoken_token")

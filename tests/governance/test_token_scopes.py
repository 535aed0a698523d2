"""A token does what its user may, within its scopes; beyond them a 403 that names the
missing scope, audited. The browser's session is not scope-limited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from governance import tokens
from governance.models import AuditEvent, Gate

pytestmark = pytest.mark.django_db


def _client(user, scopes):
    _, raw = tokens.issue(
        user, name="+".join(scopes), scopes=scopes, expires_at=timezone.now() + timedelta(hours=1)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_a_read_token_reads_but_does_not_trigger(developer, pipeline):
    client = _client(developer, ["read"])
    assert client.get("/api/v1/pipelines/payments-api/").status_code == 200
    response = client.post("/api/v1/pipelines/payments-api/runs/", {}, format="json")
    assert response.status_code == 403
    assert "needs the 'trigger' scope" in response.json()["message"]
    assert not pipeline.runs.exists()
    event = AuditEvent.objects.get(action="token.scope_denied")
    assert event.outcome == "denied" and event.actor_id == developer.pk
    assert event.details["needed"] == "trigger" and event.details["scopes"] == ["read"]
    assert event.details["path"] == "/api/v1/pipelines/payments-api/runs/"


def test_a_trigger_token_triggers_but_cannot_read(developer, pipeline):
    client = _client(developer, ["trigger"])
    assert client.post("/api/v1/pipelines/payments-api/runs/", {}, format="json").status_code == 201
    assert client.get("/api/v1/runs/").status_code == 403


def test_a_scope_adds_no_right_the_user_lacks(viewer, pipeline):
    client = _client(viewer, ["read", "trigger"])
    response = client.post("/api/v1/pipelines/payments-api/runs/", {}, format="json")
    assert response.status_code == 403 and "you may not run" in response.json()["message"]


def test_an_approver_token_without_approve_cannot_approve(approver, run_at_gate, t0):
    run, gate = run_at_gate(now=t0)
    client = _client(approver, ["read", "trigger"])
    response = client.post(f"/api/v1/gates/{gate.pk}/approve/", {"comment": "ok"}, format="json")
    assert response.status_code == 403
    assert "needs the 'approve' scope" in response.json()["message"]
    assert not Gate.objects.get(pk=gate.pk).approvals.exists()


def test_secrets_need_admin_even_to_list(superuser):
    assert _client(superuser, ["read"]).get("/api/v1/secrets/").status_code == 403
    assert _client(superuser, ["admin"]).get("/api/v1/secrets/").status_code == 200


def test_the_session_is_not_scope_limited(developer, pipeline):
    client = APIClient()
    client.force_login(developer)
    assert client.post("/api/v1/pipelines/payments-api/runs/", {}, format="json").status_code == 201
    assert not AuditEvent.objects.filter(action="token.scope_denied").exists()


def test_unknown_scopes_are_refused():
    assert "unknown scope 'deploy'" in " ".join(
        tokens.problems("x", ["deploy"], timezone.now() + timedelta(days=1), timezone.now())
    )

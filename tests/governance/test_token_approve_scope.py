"""An approve-scope token lives at most 24 h and can be created only right after a step-up
(today: the password re-entered on the tokens page, within CLEARWAY_STEP_UP_MINUTES, in the
same browser session). An approval made with it records the token."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from governance import credentials, stepup
from governance.models import ApiToken, Approval, AuditEvent, StepUp

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def sam(approver):
    approver.set_password(PASSWORD)
    approver.save()
    return approver


def _form(**extra):
    return {
        "action": "create",
        "name": "release bot",
        "scopes": ["read", "approve"],
        "lifetime": 8,
        "unit": "hours",
        **extra,
    }


def _signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_without_a_step_up_the_approve_scope_is_refused(sam):
    client = _signed_in(sam)
    page = client.post("/accounts/tokens/", _form())
    assert page.status_code == 200 and page.context["new_key"] is None
    assert "confirm your password" in page.content.decode()
    assert not ApiToken.objects.exists()
    refused = AuditEvent.objects.get(action="token.create", outcome="denied")
    assert "confirm your password" in refused.details["reason"]


def test_after_the_password_is_confirmed_it_is_created(sam):
    client = _signed_in(sam)
    assert (
        client.post("/accounts/tokens/", {"action": "step-up", "password": PASSWORD}).status_code
        == 302
    )
    assert AuditEvent.objects.filter(action="auth.step_up", outcome="success").exists()
    page = client.post("/accounts/tokens/", _form())
    token = ApiToken.objects.get()
    assert page.context["new_key"].startswith(f"cw_{token.prefix}_")
    assert token.scopes == ["read", "approve"]
    assert token.expires_at - token.created_at == timedelta(hours=8)


def test_a_wrong_password_is_no_step_up_and_is_audited(sam):
    client = _signed_in(sam)
    page = client.post("/accounts/tokens/", {"action": "step-up", "password": "guess"})
    assert "That is not your password" in page.content.decode()
    assert not StepUp.objects.exists()
    assert AuditEvent.objects.filter(action="auth.step_up", outcome="denied").exists()
    client.post("/accounts/tokens/", _form())
    assert not ApiToken.objects.exists()


def test_the_step_up_counts_for_n_minutes_only(sam, settings):
    settings.CLEARWAY_STEP_UP_MINUTES = 10
    now = timezone.now()
    credentials.record_step_up(actor=sam, method="password", session_key="s1", now=now)
    assert stepup.recent_step_up(sam, now + timedelta(minutes=9), session_key="s1")
    assert not stepup.recent_step_up(sam, now + timedelta(minutes=11), session_key="s1")
    later = now + timedelta(minutes=11)
    with pytest.raises(credentials.CredentialRefused, match="confirm your password"):
        credentials.create_api_token(
            actor=sam,
            name="late",
            scopes=["approve"],
            expires_at=later + timedelta(hours=1),
            session_key="s1",
            now=later,
        )


def test_a_step_up_in_another_session_does_not_count(sam):
    now = timezone.now()
    credentials.record_step_up(actor=sam, method="password", session_key="elsewhere", now=now)
    assert not stepup.recent_step_up(sam, now, session_key="here")
    with pytest.raises(credentials.CredentialRefused):
        credentials.create_api_token(
            actor=sam,
            name="x",
            scopes=["approve"],
            expires_at=now + timedelta(hours=1),
            session_key="here",
            now=now,
        )


def test_an_approve_token_lives_at_most_24_hours(sam):
    now = timezone.now()
    credentials.record_step_up(actor=sam, method="password", session_key="s", now=now)
    with pytest.raises(credentials.CredentialRefused, match="at most 24 hours"):
        credentials.create_api_token(
            actor=sam,
            name="x",
            scopes=["approve"],
            expires_at=now + timedelta(hours=24, seconds=1),
            session_key="s",
            now=now,
        )
    token, _ = credentials.create_api_token(
        actor=sam,
        name="x",
        scopes=["approve"],
        expires_at=now + timedelta(hours=24),
        session_key="s",
        now=now,
    )
    assert token.expires_at == now + timedelta(hours=24)


def test_an_approval_with_a_token_records_it(sam, run_at_gate):
    run, gate = run_at_gate()
    now = timezone.now()
    credentials.record_step_up(actor=sam, method="password", session_key="s", now=now)
    token, raw = credentials.create_api_token(
        actor=sam,
        name="bot",
        scopes=["approve", "read"],
        expires_at=now + timedelta(hours=1),
        session_key="s",
        now=now,
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = api.post(f"/api/v1/gates/{gate.pk}/approve/", {"comment": "ok"}, format="json")
    assert response.status_code == 200, response.content
    approval = Approval.objects.get(gate=gate)
    assert approval.token == token
    event = AuditEvent.objects.get(action="gate.approve")
    assert event.details["token"] == token.pk


def test_an_approval_in_the_browser_records_no_token(sam, run_at_gate):
    run, gate = run_at_gate()
    api = APIClient()
    api.force_login(sam)
    assert (
        api.post(f"/api/v1/gates/{gate.pk}/approve/", {"comment": "ok"}, format="json").status_code
        == 200
    )
    assert Approval.objects.get(gate=gate).token is None
    assert "token" not in AuditEvent.objects.get(action="gate.approve").details

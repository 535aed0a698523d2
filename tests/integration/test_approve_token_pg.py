"""On PostgreSQL, through the real ASGI server and a worker: an approver confirms their
password on the tokens page, creates an approve-scope token there (shown once), and
approves a production gate with it from a script; the approval records the token."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import Group, User
from guardian.shortcuts import assign_perm

from governance.models import ApiToken, Approval, ApprovalRule, AuditEvent, Environment, Gate
from orchestrator import actions
from orchestrator.models import Run, Team

from .conftest import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
PBKDF2 = PBKDF2PasswordHasher()
DEFINITION = """
name: token-approval
stages:
  - name: deploy
    environment: prod-token
    steps:
      - {name: deploy, run: "true"}
"""


def _csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


def _waiting_gate() -> Gate:
    sre, _ = Group.objects.get_or_create(name="sre")
    group, _ = Group.objects.get_or_create(name="team-token")
    team, _ = Team.objects.get_or_create(slug="token", defaults={"name": "T", "group": group})
    author = User.objects.create_user(f"dev-{uuid.uuid4().hex[:6]}", is_superuser=True)
    env, _ = Environment.objects.get_or_create(
        name="prod-token", defaults={"tier": "production", "protected": True}
    )
    ApprovalRule.objects.get_or_create(environment=env, group=sre, defaults={"required_count": 1})
    assign_perm("governance.approve_environment", sre, env)
    pipeline = actions.create_pipeline(
        actor=author, slug=f"tok-{uuid.uuid4().hex[:6]}", definition=DEFINITION, team=team
    )
    run = actions.trigger_run(pipeline, actor=author)
    return wait_for(
        lambda: Gate.objects.filter(stage_run__run=run, status="waiting").first(),
        60,
        what="the production gate to wait",
    )


def test_an_approve_token_made_after_a_step_up_approves_and_is_recorded(
    live_db, asgi_server, worker
):
    gate = _waiting_gate()
    sam = User.objects.create_user(f"sam-{uuid.uuid4().hex[:6]}")
    # Hashed as the server (production settings) checks it, not with the tests' fast hasher.
    User.objects.filter(pk=sam.pk).update(password=PBKDF2.encode(PASSWORD, PBKDF2.salt()))
    sam.groups.add(Group.objects.get(name="sre"), Group.objects.get(name="approver"))
    with httpx.Client(base_url=asgi_server, timeout=30) as browser:
        login = browser.get("/accounts/login/")
        signed_in = browser.post(
            "/accounts/login/",
            data={
                "username": sam.username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": _csrf(login),
            },
        )
        assert signed_in.status_code == 302, signed_in.text
        page = browser.get("/accounts/tokens/")
        form = {
            "action": "create",
            "name": "release script",
            "scopes": ["read", "approve"],
            "lifetime": "2",
            "unit": "hours",
        }
        refused = browser.post(
            "/accounts/tokens/", data={**form, "csrfmiddlewaretoken": _csrf(page)}
        )
        assert "confirm your password" in refused.text and not ApiToken.objects.filter(user=sam)
        stepped = browser.post(
            "/accounts/tokens/",
            data={"action": "step-up", "password": PASSWORD, "csrfmiddlewaretoken": _csrf(refused)},
        )
        assert stepped.status_code == 302
        page = browser.get("/accounts/tokens/")
        created = browser.post(
            "/accounts/tokens/", data={**form, "csrfmiddlewaretoken": _csrf(page)}
        )
        key = re.search(r'id="new-token">(cw_[^<]+)<', created.text).group(1)
    token = ApiToken.objects.get(user=sam)
    assert token.scopes == ["read", "approve"] and key.startswith(f"cw_{token.prefix}_")
    response = httpx.post(
        f"{asgi_server}/api/v1/gates/{gate.pk}/approve/",
        json={"comment": "approved from the release script"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    approval = Approval.objects.get(gate=gate, user=sam)
    assert approval.token_id == token.pk
    event = AuditEvent.objects.get(action="gate.approve", target_id=str(gate.pk))
    assert event.details["token"] == token.pk
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None
    run_id = gate.stage_run.run_id
    wait_for(lambda: Run.objects.get(pk=run_id).is_terminal, 60, what="the run to end")

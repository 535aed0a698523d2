"""The spoofed X-Forwarded-For attack against a real uvicorn server, started the way
docs/operations.md says (no forwarded headers believed): uvicorn by default rewrites the
client address from X-Forwarded-For for any connection from 127.0.0.1, so a pipeline step on
the web host could choose its audited address and dodge the lockout."""

from __future__ import annotations

import httpx
import pytest
from django.contrib.auth.models import Group, User

from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import Run, Team
from tests.conftest import api_token

from .conftest import wait_for

pytestmark = pytest.mark.integration

DEFINITION = """
name: spoofed
stages:
  - name: build
    steps:
      - {name: compile, run: "true"}
"""


def _developer() -> User:
    group, _ = Group.objects.get_or_create(name="team-xff")
    Team.objects.get_or_create(slug="xff", defaults={"name": "XFF", "group": group})
    user = User.objects.create_user("xff-dev", password="correct horse battery staple")
    user.groups.add(group, Group.objects.get(name="developer"))
    return user


def test_a_run_triggered_with_a_spoofed_forwarded_for_is_audited_with_the_real_address(
    live_db, asgi_server, worker
):
    user = _developer()
    pipeline = actions.create_pipeline(
        actor=user, slug="spoofed", definition=DEFINITION, team=Team.objects.get(slug="xff")
    )
    key = api_token(user)
    response = httpx.post(
        f"{asgi_server}/api/v1/pipelines/{pipeline.slug}/runs/",
        json={"parameters": {}},
        headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": "6.6.6.6"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    event = AuditEvent.objects.get(action="run.trigger", target_id=str(response.json()["id"]))
    assert event.ip == "127.0.0.1"
    # Let the session's worker finish the run before the database is flushed (a step still
    # writing while the flush truncates is a deadlock).
    run_id = response.json()["id"]
    wait_for(lambda: Run.objects.get(pk=run_id).is_terminal, 60, what="the run to end")


def test_six_failed_token_requests_with_different_forwarded_for_are_locked_out(
    live_db, asgi_server
):
    _developer()
    url = f"{asgi_server}/api/v1/auth/token/"
    statuses = [
        httpx.post(
            url,
            data={"username": f"guess{n}", "password": "nope"},
            headers={"X-Forwarded-For": f"198.51.100.{n + 1}"},
            timeout=30,
        ).status_code
        for n in range(5)
    ]
    assert statuses[:4] == [400] * 4
    sixth = httpx.post(
        url,
        data={"username": "xff-dev", "password": "correct horse battery staple"},
        headers={"X-Forwarded-For": "198.51.100.99"},
        timeout=30,
    )
    assert sixth.status_code == 429, sixth.text
    assert int(sixth.headers["Retry-After"]) > 0

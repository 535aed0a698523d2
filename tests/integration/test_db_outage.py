"""PostgreSQL unreachable: pages and API answer 503 without a stack trace, nothing is marked
succeeded, gates stay closed; when it is back, everything works again."""

from __future__ import annotations

import uuid

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from governance.models import Approval, ApprovalRule, Environment, Gate, GateStatus
from orchestrator import actions
from orchestrator.models import Run, RunStatus, Team
from tests.conftest import api_token

from .conftest import start_server, wait_for
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

DEFINITION = """
name: outage
stages:
  - name: deploy
    environment: prod-outage
    steps:
      - name: deploy
        run: echo deployed
"""


def test_database_outage_gives_503_and_changes_nothing(live_db, log_dir, settings, production_env):
    db = settings.DATABASES["default"]
    proxy = TcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
    proxied = live_db.replace(f":{db.get('PORT') or 5432}/", f":{proxy.port}/")
    server, base = start_server(
        proxied, log_dir, name="asgi-outage", extra_env={**production_env, "CONN_MAX_AGE": "60"}
    )
    try:
        group, _ = Group.objects.get_or_create(name="team-outage")
        team, _ = Team.objects.get_or_create(slug="outage", defaults={"name": "O", "group": group})
        user = User.objects.create_user(f"u-{uuid.uuid4().hex[:6]}", is_superuser=True)
        sre, _ = Group.objects.get_or_create(name="sre")
        user.groups.add(sre)
        env, _ = Environment.objects.get_or_create(
            name="prod-outage", defaults={"tier": "production", "protected": True}
        )
        ApprovalRule.objects.get_or_create(
            environment=env, group=sre, defaults={"required_count": 1}
        )
        pipeline = actions.create_pipeline(
            actor=user, slug=f"outage-{uuid.uuid4().hex[:6]}", definition=DEFINITION, team=team
        )
        with actions.dispatching_to(lambda *a: None):  # no worker: nothing runs
            run = actions.trigger_run(pipeline, actor=user)
        gate = Gate.objects.get(stage_run__run=run)
        assert gate.status == GateStatus.WAITING
        approver = User.objects.create_user(f"a-{uuid.uuid4().hex[:6]}")
        approver.groups.add(sre, Group.objects.get(name="approver"))
        client = Client()
        client.force_login(user)
        cookies = {"sessionid": client.cookies["sessionid"].value}
        with httpx.Client(base_url=base, cookies=cookies, timeout=15) as http:
            assert http.get("/accounts/tokens/").status_code == 200
            assert http.get(f"/api/v1/runs/{run.pk}/").status_code == 200

            key = api_token(approver)
            proxy.cut()
            page = http.get("/accounts/tokens/")
            api = http.get(f"/api/v1/runs/{run.pk}/")
            approve = http.post(
                f"/api/v1/gates/{gate.pk}/approve/",
                json={"comment": "ok"},
                headers={"Authorization": f"Bearer {key}"},
            )
            health = http.get("/healthz")
            for response in (page, api):
                assert response.status_code == 503, response.text[:500]
                assert "Traceback" not in response.text
                assert "OperationalError" not in response.text
            assert "temporarily unavailable" in page.text
            assert api.json()["message"].startswith("the database is unavailable")
            assert approve.status_code == 503, approve.text[:300]
            assert health.status_code == 503
            assert health.json()["checks"]["database"]["ok"] is False

            proxy.restore()
            wait_for(
                lambda: http.get("/healthz").status_code == 200, 30, what="the server to reconnect"
            )
            assert http.get(f"/api/v1/runs/{run.pk}/").status_code == 200
        run.refresh_from_db()
        gate.refresh_from_db()
        assert gate.status == GateStatus.WAITING  # the gate stayed closed
        assert not Approval.objects.filter(gate=gate).exists()
        assert run.status not in (RunStatus.SUCCEEDED, RunStatus.CANCELED)
        assert Run.objects.filter(pk=run.pk, status=RunStatus.SUCCEEDED).count() == 0
    finally:
        server.stop()
        proxy.close()

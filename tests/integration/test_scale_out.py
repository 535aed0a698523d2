"""Scale-out: two ASGI servers and two workers against one PostgreSQL and one Redis (and once
with RabbitMQ as the broker). A websocket client on server A sees, live, a run triggered
through server B's API and executed by either worker; no step runs twice; the chain
verifies. tests/browser/test_scale_out_live.py shows the same in Chromium on server A."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from governance import audit
from governance.models import AuditEvent
from orchestrator.models import Run, StepRun, Team

from .conftest import _port_open, require, start_server, start_worker

pytestmark = pytest.mark.integration

EVENT_TYPES = {"run.updated", "stage.updated", "step.updated", "gate.updated", "log"}

DEFINITION = """
name: fan-out
stages:
  - name: a
    steps:
      - {name: a1, run: "echo a1; sleep 0.3"}
      - {name: a2, run: "echo a2"}
  - name: b
    needs: [a]
    steps:
      - {name: b1, run: "echo b1; sleep 0.3"}
  - name: c
    needs: [a]
    steps:
      - {name: c1, run: "echo c1; sleep 0.3"}
  - name: d
    needs: [b, c]
    steps:
      - {name: d1, run: "echo done"}
"""


def _setup_user() -> tuple[User, Team]:
    group, _ = Group.objects.get_or_create(name="team-scale")
    team, _ = Team.objects.get_or_create(slug="scale", defaults={"name": "Scale", "group": group})
    user = User.objects.create_user(f"scale-{uuid.uuid4().hex[:6]}")
    user.groups.add(group, Group.objects.get(name="developer"))
    return user, team


def assert_each_step_ran_once(run_id: int, count: int = 5) -> None:
    """The run's `count` steps all succeeded, each started once (one attempt, one audit
    row), and the audit chain verifies."""
    run = Run.objects.get(pk=run_id)
    steps = list(StepRun.objects.filter(stage__run=run))
    assert len(steps) == count and all(s.status == "succeeded" for s in steps)
    starts = AuditEvent.objects.filter(action="step.start", details__run=run_id)
    assert starts.count() == count, "a step was started twice"
    assert all(s.attempt == 1 for s in steps)
    assert audit.verify().ok


def _scenario(live_db, log_dir, broker_env: dict) -> None:
    user, team = _setup_user()
    workers = [start_worker(live_db, log_dir, name=f"w{i}", extra_env=broker_env) for i in (1, 2)]
    servers = [
        start_server(live_db, log_dir, name=f"asgi{i}", extra_env=broker_env) for i in ("A", "B")
    ]
    (proc_a, url_a), (proc_b, url_b) = servers
    try:
        client = Client()
        client.force_login(user)
        session = client.cookies["sessionid"].value
        slug = f"scale-{uuid.uuid4().hex[:6]}"

        async def watch() -> tuple[list[dict], int]:
            import websockets

            async with websockets.connect(
                url_a.replace("http", "ws") + "/ws/events/",
                additional_headers={"Cookie": f"sessionid={session}", "Origin": url_a},
            ) as ws:
                await asyncio.wait_for(ws.recv(), 10)  # hello
                async with httpx.AsyncClient(
                    base_url=url_b, cookies={"sessionid": session}
                ) as http:
                    csrf = (await http.get("/accounts/login/")).cookies.get("csrftoken", "")
                    headers = {"X-CSRFToken": csrf, "Referer": url_b + "/"}
                    http.cookies.set("csrftoken", csrf)
                    created = await http.post(
                        "/api/v1/pipelines/",
                        headers=headers,
                        json={"slug": slug, "team": team.slug, "definition": DEFINITION},
                    )
                    assert created.status_code == 201, created.text
                # the new pipeline's group: reconnect so the consumer subscribes to it
            async with websockets.connect(
                url_a.replace("http", "ws") + "/ws/events/",
                additional_headers={"Cookie": f"sessionid={session}", "Origin": url_a},
            ) as ws:
                await asyncio.wait_for(ws.recv(), 10)
                async with httpx.AsyncClient(
                    base_url=url_b, cookies={"sessionid": session}
                ) as http:
                    csrf = (await http.get("/accounts/login/")).cookies.get("csrftoken", "")
                    http.cookies.set("csrftoken", csrf)
                    run = await http.post(
                        f"/api/v1/pipelines/{slug}/runs/",
                        json={"parameters": {}},
                        headers={"X-CSRFToken": csrf, "Referer": url_b + "/"},
                    )
                    assert run.status_code == 201, run.text
                    run_id = run.json()["id"]
                seen = []
                while True:
                    event = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if event.get("run") != run_id or event.get("type") not in EVENT_TYPES:
                        continue
                    seen.append(event)
                    if event["type"] == "run.updated" and event["data"]["status"] in (
                        "succeeded",
                        "failed",
                    ):
                        return seen, run_id

        events, run_id = asyncio.run(watch())
        assert events[-1]["data"]["status"] == "succeeded"
        assert_each_step_ran_once(run_id)
    finally:
        for proc, _ in servers:
            proc.stop()
        for proc in workers:
            proc.stop()


def test_two_servers_two_workers_redis(live_db, log_dir):
    _scenario(live_db, log_dir, {})


def test_two_servers_two_workers_rabbitmq_broker(live_db, log_dir):
    amqp = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    require(_port_open("127.0.0.1", 5672), "RabbitMQ")
    _scenario(live_db, log_dir, {"CELERY_BROKER_URL": amqp})

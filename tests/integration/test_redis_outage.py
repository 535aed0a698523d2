"""Redis stops during a run and starts again: the database state stays intact and the run
finishes (or fails) cleanly; nothing is left running; the audit chain verifies."""

from __future__ import annotations

import shutil
import time
import uuid

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from governance import audit
from orchestrator.models import Run, RunStatus, StepRun, StepStatus, Team

from .conftest import (
    RedisServer,
    require,
    start_beat,
    start_server,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

DEFINITION = """
name: through an outage
stages:
  - name: first
    steps:
      - {name: long, run: "echo start; sleep 4; echo end"}
  - name: second
    needs: [first]
    steps:
      - {name: after, run: "echo after the outage"}
"""


def test_run_survives_a_redis_restart(live_db, log_dir, tmp_path):
    require(shutil.which("redis-server") is not None, "redis-server")
    redis = RedisServer(tmp_path)
    redis.start()
    env = {"REDIS_URL": redis.url}
    worker = start_worker(live_db, log_dir, name="w-outage", extra_env=env)
    beat = start_beat(live_db, log_dir, tmp_path, extra_env=env)
    server, base = start_server(live_db, log_dir, name="asgi-outage-redis", extra_env=env)
    try:
        group, _ = Group.objects.get_or_create(name="team-redis")
        team, _ = Team.objects.get_or_create(slug="redis", defaults={"name": "R", "group": group})
        user = User.objects.create_user(f"r-{uuid.uuid4().hex[:6]}")
        user.groups.add(group, Group.objects.get(name="developer"))
        client = Client()
        client.force_login(user)
        session = client.cookies["sessionid"].value
        slug = f"redis-{uuid.uuid4().hex[:6]}"
        with httpx.Client(base_url=base, cookies={"sessionid": session}, timeout=20) as http:
            csrf = http.get("/accounts/login/").cookies["csrftoken"]
            http.cookies.set("csrftoken", csrf)
            headers = {"X-CSRFToken": csrf, "Referer": base + "/"}
            assert (
                http.post(
                    "/api/v1/pipelines/",
                    headers=headers,
                    json={"slug": slug, "team": team.slug, "definition": DEFINITION},
                ).status_code
                == 201
            )
            run_id = http.post(
                f"/api/v1/pipelines/{slug}/runs/", headers=headers, json={"parameters": {}}
            ).json()["id"]
        wait_for(
            lambda: StepRun.objects.filter(
                stage__run_id=run_id, name="long", status=StepStatus.RUNNING
            ).exists(),
            30,
            what="the long step to run",
        )
        redis.stop()
        time.sleep(3)  # the outage lasts while the step ends and the next one is due
        redis.start()
        run = Run.objects.get(pk=run_id)

        def ended() -> bool:
            # The supervisor's job (systemd Restart=always in docs/operations.md): a worker
            # that exited on the lost broker connection is started again.
            nonlocal worker
            if worker.popen.poll() is not None:
                worker.stop()
                worker = start_worker(live_db, log_dir, name="w-outage-2", extra_env=env)
            return Run.objects.get(pk=run_id).status in (RunStatus.SUCCEEDED, RunStatus.FAILED)

        wait_for(ended, 120, what="the run to end")
        run.refresh_from_db()
        steps = {s.name: s for s in StepRun.objects.filter(stage__run=run)}
        assert steps["long"].status == StepStatus.SUCCEEDED
        assert run.status == RunStatus.SUCCEEDED, run.reason
        assert steps["after"].status == StepStatus.SUCCEEDED
        assert audit.verify().ok
    finally:
        server.stop()
        beat.stop()
        worker.stop()
        redis.stop()

"""The engine on PostgreSQL + Redis with a real `celery worker` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from governance import audit
from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import LogChunk, Run, RunStatus, StageStatus, StepRun, StepStatus, Team
from tests.processes import host_pids

from .conftest import start_beat, start_worker, wait_for

pytestmark = pytest.mark.integration

EVENT_TYPES = {"run.updated", "stage.updated", "step.updated", "gate.updated", "log"}


def _team() -> Team:
    group, _ = Group.objects.get_or_create(name="team-it")
    team, _ = Team.objects.get_or_create(slug="it", defaults={"name": "IT", "group": group})
    return team


def _user(name: str = "it-dev") -> User:
    user, _ = User.objects.get_or_create(username=name)
    user.groups.add(_team().group, Group.objects.get(name="developer"))
    return user


def _pipeline(definition: str):
    slug = f"p-{uuid.uuid4().hex[:8]}"
    return actions.create_pipeline(actor=_user(), slug=slug, definition=definition, team=_team())


def _wait_run(run: Run, statuses, timeout=60) -> Run:
    def done():
        run.refresh_from_db()
        return run.status in statuses

    wait_for(done, timeout, what=f"run {run.pk} to reach {statuses} (is {run.status})")
    return run


FOUR_STAGES = """
name: four stages
stages:
  - name: build
    steps:
      - name: compile
        run: for i in 1 2 3; do echo "compile $i"; done; echo "to stderr" >&2
  - name: unit
    needs: [build]
    steps:
      - name: unit
        run: sleep 0.5; echo "unit ok $CLEARWAY_STAGE"
  - name: lint
    needs: [build]
    steps:
      - name: lint
        run: sleep 0.5; echo "lint ok"
  - name: package
    needs: [unit, lint]
    steps:
      - name: package
        run: echo "package $CLEARWAY_PARAM_VERSION"
parameters:
  - name: version
    default: "1.2.3"
"""


def test_four_stage_run_with_parallel_pair_completes_with_logs(live_db, worker):
    run = actions.trigger_run(_pipeline(FOUR_STAGES), actor=_user(), trigger="api")
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    stages = {s.name: s for s in run.stages.all()}
    assert all(s.status == StageStatus.SUCCEEDED for s in stages.values())
    # unit and lint ran in parallel: each started before the other finished
    unit, lint = stages["unit"], stages["lint"]
    assert unit.started_at < lint.finished_at and lint.started_at < unit.finished_at
    compile_step = StepRun.objects.get(stage=stages["build"])
    text = "\n".join(LogChunk.objects.filter(step=compile_step).values_list("text", flat=True))
    assert "compile 3" in text and "[stderr] to stderr" in text
    package = StepRun.objects.get(stage=stages["package"])
    assert "package 1.2.3" in "".join(package.log_chunks.values_list("text", flat=True))
    assert audit.verify().ok


FAILING = """
name: failing
stages:
  - name: build
    steps:
      - name: compile
        run: echo building; exit 3
  - name: test
    needs: [build]
    steps:
      - name: test
        run: echo never
  - name: other
    steps:
      - name: other
        run: sleep 1; echo independent
"""


def test_failing_step_fails_run_and_skips_dependants(live_db, worker):
    run = actions.trigger_run(_pipeline(FAILING), actor=_user(), trigger="api")
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.FAILED
    assert "build" in run.reason
    stages = {s.name: s for s in run.stages.all()}
    assert stages["build"].status == StageStatus.FAILED
    assert stages["test"].status == StageStatus.SKIPPED
    step = StepRun.objects.get(stage=stages["build"])
    assert step.exit_code == 3 and step.status == StepStatus.FAILED


SLEEPER = """
name: sleeper
stages:
  - name: long
    steps:
      - name: sleep
        run: echo started; sleep 300.0613 & wait
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cancel_mid_step_kills_the_process_group(live_db, worker):
    run = actions.trigger_run(_pipeline(SLEEPER), actor=_user(), trigger="api")
    step = StepRun.objects.get(stage__run=run)
    wait_for(lambda: host_pids("sleep 300.0613"), 30, what="the step's sleep to start")
    actions.cancel_run(run, actor=_user())
    wait_for(lambda: not host_pids("sleep 300.0613"), 15, what="the step to be killed")
    run.refresh_from_db()
    step.refresh_from_db()
    assert run.status == RunStatus.CANCELED
    assert step.status == StepStatus.CANCELED


TWO_STEP_SLEEPER = """
name: quick then long
stages:
  - name: quick
    steps:
      - name: quick
        run: echo quick
  - name: long
    needs: [quick]
    steps:
      - name: sleep
        run: echo "pid $$"; sleep 300 & wait
"""


def test_sigkill_of_worker_mid_step_does_not_leave_the_run_running(
    live_db, log_dir, tmp_path, worker, settings
):
    # The steps go to a worker of their own (queue "doomed"); a second worker of this test's
    # own runs the reaper that beat schedules (on Celery's default queue).
    settings.CLEARWAY = {**settings.CLEARWAY, "STEP_QUEUE": "doomed"}
    # Every process that dispatches must send steps there: the test process (settings above)
    # and the worker that finishes "quick" and queues "sleep".
    queue_env = {"CLEARWAY_STEP_QUEUE": "doomed"}
    own = start_worker(
        live_db, log_dir, name="doomed", concurrency=1, queues="doomed", extra_env=queue_env
    )
    reaper = start_worker(live_db, log_dir, name="reaper", concurrency=1, extra_env=queue_env)
    beat = start_beat(live_db, log_dir, tmp_path)
    try:
        run = actions.trigger_run(_pipeline(TWO_STEP_SLEEPER), actor=_user(), trigger="api")
        step = StepRun.objects.get(stage__run=run, name="sleep")
        wait_for(
            lambda: StepRun.objects.get(pk=step.pk).status == StepStatus.RUNNING,
            30,
            what="the long step to start",
        )
        os.killpg(own.pid, signal.SIGKILL)
        _wait_run(run, {RunStatus.FAILED, RunStatus.SUCCEEDED, RunStatus.CANCELED}, timeout=60)
        step.refresh_from_db()
        assert run.status == RunStatus.FAILED
        assert "worker lost" in step.error
        quick = StepRun.objects.get(stage__run=run, name="quick")
        assert quick.status == StepStatus.SUCCEEDED
        # The step reported successful before the crash was not executed again.
        for action in ("step.start", "step.succeeded"):
            events = AuditEvent.objects.filter(action=action, target_id=str(quick.pk))
            assert events.count() == 1, action
        assert audit.verify().ok
    finally:
        own.stop(signal.SIGKILL)
        beat.stop()
        reaper.stop()


def test_websocket_client_receives_status_events_in_sequence(live_db, worker, asgi_server):
    import websockets

    user = _user("it-watcher")
    pipeline = _pipeline(FOUR_STAGES)
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    ws_url = asgi_server.replace("http://", "ws://") + "/ws/events/"

    async def watch() -> list[dict]:
        seen: list[dict] = []
        async with websockets.connect(
            ws_url, additional_headers={"Cookie": cookie, "Origin": asgi_server}
        ) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["type"] == "hello" and pipeline.pk in hello["pipelines"]
            run = await asyncio.to_thread(actions.trigger_run, pipeline, actor=user, trigger="api")
            await ws.send(json.dumps({"subscribe": "run", "id": run.pk}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event.get("run") != run.pk or event.get("type") not in EVENT_TYPES:
                    continue
                seen.append(event)
                if event["type"] == "run.updated" and event["data"]["status"] in (
                    "succeeded",
                    "failed",
                ):
                    return seen

    events = asyncio.run(watch())
    status_events = [e for e in events if e["type"] != "log"]
    seqs = [e["seq"] for e in status_events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert status_events[-1]["data"]["status"] == "succeeded"
    assert {"stage.updated", "step.updated", "run.updated"} <= {e["type"] for e in events}

"""The step sandbox on PostgreSQL + Redis with a real prefork `celery worker`: escape probes
get nothing of the worker, and a step dies with its worker (SIGKILL) before the reaper
starts the next attempt, whose predecessor's late finish is refused."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from django.conf import settings

from governance.models import AuditEvent
from orchestrator import actions, sandbox
from orchestrator.models import LogChunk, Run, RunStatus, StepRun, StepStatus
from tests.processes import host_pids

from .conftest import start_beat, start_worker, wait_for
from .test_engine_live import _pipeline, _user, _wait_run

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _bwrap_present():
    try:
        sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"bubblewrap is required in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))


def _log(step: StepRun) -> str:
    return "\n".join(
        LogChunk.objects.filter(step=step).order_by("offset").values_list("text", flat=True)
    )


PROBE = r"""
name: probe
stages:
  - name: probe
    steps:
      - name: probe
        env:
          PROBE_OTHER: "OTHER"
        run: |
          echo "--- parent environ"; tr '\0' '\n' < /proc/$PPID/environ 2>&1
          echo "--- every environ"
          for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>&1; done
          echo "--- parent of the workspace"; ls -a .. 2>&1
          echo "--- another run"; ls -a "$PROBE_OTHER" 2>&1
          echo "--- ps"; ps -eo pid,user,comm 2>&1
          echo "--- postgres"
          if psql "$DATABASE_URL" -c 'select 1' >/dev/null 2>&1
          then echo "CONNECTED"; else echo "no connection"; fi
          if psql -d postgres -c 'select 1' >/dev/null 2>&1
          then echo "CONNECTED via socket"; else echo "no socket"; fi
          echo "--- writes"
          for target in /etc/probe /probe "$PROBE_OTHER/probe"; do
            if (echo x > "$target") 2>/dev/null
            then echo "WROTE $target"; else echo "refused $target"; fi
          done
          echo "--- done"
"""


def test_escape_probes_on_a_prefork_worker_get_nothing(live_db, worker):
    other = os.path.join(settings.CLEARWAY["WORKSPACE_ROOT"], f"run-{uuid.uuid4().int % 10**8}")
    os.makedirs(other, exist_ok=True)
    with open(os.path.join(other, "loot.txt"), "w") as f:
        f.write("loot")
    run = actions.trigger_run(
        _pipeline(PROBE.replace('"OTHER"', f'"{other}"')), actor=_user(), trigger="api"
    )
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    step = StepRun.objects.get(stage__run=run)
    text = _log(step)
    lines = [line.split(" ", 1)[1] for line in text.splitlines() if " [stderr] " not in line]
    assert "--- done" in lines
    # The worker's environment (process_env in conftest) holds these; none reaches the step.
    for leaked in (live_db, settings.REDIS_URL, "DJANGO_SETTINGS_MODULE", "DATABASE_URL="):
        assert leaked not in text, leaked
    parent = lines[lines.index("--- parent of the workspace") + 1 : lines.index("--- another run")]
    assert sorted(parent) == [".", "..", f"run-{run.pk}"]
    assert "loot.txt" not in text
    ps = lines[lines.index("--- ps") + 1 : lines.index("--- postgres")]
    assert {line.split()[-1] for line in ps[1:]} <= {"bwrap", "sh", "ps"}, ps
    assert not any("celery" in line or "python" in line for line in ps)
    assert "no connection" in lines and "no socket" in lines
    assert not any(line.startswith("WROTE") for line in lines), lines
    assert not os.path.exists(os.path.join(other, "probe"))


# Attempt 1 sleeps (and is killed with its worker); attempt 2 runs through. The marker file
# in the run's workspace records each attempt's start and end.
MARKED = """
name: marked
stages:
  - name: deploy
    steps:
      - name: deploy
        retries: 1
        run: |
          echo "start $CLEARWAY_ATTEMPT" >> m
          if [ "$CLEARWAY_ATTEMPT" = 1 ]; then sleep 45.0731; fi
          echo "end $CLEARWAY_ATTEMPT" >> m
          cat m
"""


def test_sigkill_of_the_worker_ends_the_step_before_the_retry_and_fences_it(
    live_db, log_dir, tmp_path, worker, settings
):
    settings.CLEARWAY = {**settings.CLEARWAY, "STEP_QUEUE": "doomed-sbx"}
    queue_env = {"CLEARWAY_STEP_QUEUE": "doomed-sbx"}
    doomed = start_worker(
        live_db, log_dir, name="doomed-sbx", concurrency=1, queues="doomed-sbx", extra_env=queue_env
    )
    survivor = None
    reaper = start_worker(live_db, log_dir, name="reaper-sbx", concurrency=1, extra_env=queue_env)
    beat = start_beat(live_db, log_dir, tmp_path)
    try:
        run = actions.trigger_run(_pipeline(MARKED), actor=_user(), trigger="api")
        step = StepRun.objects.get(stage__run=run)
        wait_for(lambda: host_pids("sleep 45.0731"), 30, what="attempt 1 to be sleeping")
        # Only the main worker process: its prefork child (PR_SET_PDEATHSIG) and the
        # sandbox (--die-with-parent) must follow on their own.
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not host_pids("sleep 45.0731"), 10, what="the step's processes to die")
        gone_after = time.monotonic() - killed_at
        assert StepRun.objects.get(pk=step.pk).attempt == 1, "retried before the step was gone"
        assert gone_after < 10
        # A worker to take attempt 2 (the doomed queue lost its only consumer).
        survivor = start_worker(
            live_db,
            log_dir,
            name="survivor-sbx",
            concurrency=1,
            queues="doomed-sbx",
            extra_env=queue_env,
        )
        _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED}, timeout=90)
        assert run.status == RunStatus.SUCCEEDED, run.reason
        step.refresh_from_db()
        assert step.attempt == 2
        lines = [line.split(" ", 1)[1] for line in _log(step).splitlines()]
        marker = [line for line in lines if line.startswith(("start ", "end "))]
        # No overlap: attempt 1 never reached its end, attempt 2 ran alone.
        assert marker[-3:] == ["start 1", "start 2", "end 2"], marker

        # The dead attempt's finish, arriving late, is refused and changes nothing.
        before = StepRun.objects.get(pk=step.pk)
        assert actions.finish_step(step.pk, 1, succeeded=False, error="late") is None
        after = StepRun.objects.get(pk=step.pk)
        assert (after.status, after.attempt, after.error) == (
            before.status,
            before.attempt,
            before.error,
        )
        assert after.status == StepStatus.SUCCEEDED
        refused = AuditEvent.objects.filter(action="step.finish_refused", target_id=str(step.pk))
        assert refused.count() == 1 and refused.get().details["attempt"] == 1
        assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    finally:
        doomed.stop(signal.SIGKILL)
        if survivor is not None:
            survivor.stop()
        beat.stop()
        reaper.stop()


def test_a_supervisor_that_loses_the_database_stops_its_step_before_the_lease_runs_out(
    live_db, log_dir, settings
):
    """The reaper may start the next attempt once a heartbeat is HEARTBEAT_TIMEOUT old (6 s
    here); the supervisor, cut off from PostgreSQL, kills its step after half of that — while
    the worker itself stays up."""
    from .tcp_proxy import TcpProxy

    db = settings.DATABASES["default"]
    proxy = TcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
    proxied = live_db.replace(f":{db.get('PORT') or 5432}/", f":{proxy.port}/")
    settings.CLEARWAY = {**settings.CLEARWAY, "STEP_QUEUE": "cut-sbx"}
    cut_worker = start_worker(
        proxied,
        log_dir,
        name="cut-sbx",
        concurrency=1,
        queues="cut-sbx",
        extra_env={"CLEARWAY_STEP_QUEUE": "cut-sbx", "CONN_MAX_AGE": "60"},
    )
    try:
        sleeper = "name: cut\nstages:\n  - name: s\n    steps:\n      - name: s\n"
        sleeper += "        run: sleep 120.0917\n"
        run = actions.trigger_run(_pipeline(sleeper), actor=_user(), trigger="api")
        wait_for(lambda: host_pids("sleep 120.0917"), 30, what="the step to start")
        proxy.cut()
        cut_at = time.monotonic()
        wait_for(lambda: not host_pids("sleep 120.0917"), 15, what="the supervisor to stop it")
        assert time.monotonic() - cut_at < 6, "stopped only after the reaper could have acted"
        assert cut_worker.popen.poll() is None, "the worker itself went down"
        assert Run.objects.get(pk=run.pk).status == RunStatus.RUNNING  # the reaper's turn next
    finally:
        proxy.restore()
        cut_worker.stop()
        proxy.close()

"""`manage.py standalone` as a user runs it: a subprocess on a free port, on SQLite, with the
embedded broker. Log in over HTTP, run a pipeline through its worker, see the result, stop it
with Ctrl-C (SIGINT) and check that nothing it started is left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import host_pids

ROOT = Path(__file__).resolve().parents[1]

DEFINITION = """
name: smoke
stages:
  - name: hello
    steps:
      - name: hello
        run: echo "hello from the worker $CLEARWAY_PARAM_WHO"
parameters:
  - name: who
    default: standalone
"""

SLEEPER = """
name: sleeper
stages:
  - name: sleep
    steps:
      - name: sleep
        run: echo started; sleep 120.0419
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def standalone_env(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env.update(
        CLEARWAY_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
        PYTHONUNBUFFERED="1",
        DJANGO_SUPERUSER_PASSWORD="s3cret-pass-for-test",
    )
    setup = (
        "from django.contrib.auth.models import Group, User;"
        "from orchestrator.models import Team;"
        "User.objects.create_superuser('root', 'root@example.org', 's3cret-pass-for-test');"
        "Team.objects.create(slug='ops', name='Ops', group=Group.objects.create(name='team-ops'))"
    )
    for args in (["migrate", "--verbosity", "0"], ["shell", "-c", setup]):
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=180,
            capture_output=True,
        )
    return env


def test_standalone_serves_runs_a_task_and_stops_cleanly(standalone_env, tmp_path):
    port = _free_port()
    log = open(tmp_path / "standalone.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port), "--no-demo"],
        cwd=ROOT,
        env=standalone_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up():
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 90, "the standalone server to answer")
        banner = (tmp_path / "standalone.log").read_text()
        assert f"http://127.0.0.1:{port}/" in banner
        # Audit checkpoints: a key made under var/ at start (not on settings import).
        assert f"audit checkpoints: signed with {tmp_path / 'audit-signing-key.pem'}" in banner
        assert (tmp_path / "audit-signing-key.pub.pem").exists()
        details = httpx.get(f"{base}/healthz", timeout=5).json()["details"]
        assert details["audit_checkpoint"]["configured"] is True

        with httpx.Client(base_url=base, timeout=10) as http:
            page = http.get("/accounts/login/")
            assert page.status_code == 200 and "Log in" in page.text
            csrf = http.cookies["csrftoken"]
            login = http.post(
                "/accounts/login/",
                data={
                    "username": "root",
                    "password": "s3cret-pass-for-test",
                    "csrfmiddlewaretoken": csrf,
                    "next": "/",
                },
            )
            assert login.status_code == 302, login.text
            assert "sessionid" in http.cookies
            headers = {"X-CSRFToken": http.cookies["csrftoken"], "Referer": base + "/"}
            created = http.post(
                "/api/v1/pipelines/",
                headers=headers,
                json={"slug": "smoke", "team": "ops", "definition": DEFINITION},
            )
            assert created.status_code == 201, created.text
            # From 127.0.0.1 with a forged X-Forwarded-For: uvicorn must not believe it.
            run = http.post(
                "/api/v1/pipelines/smoke/runs/",
                headers={**headers, "X-Forwarded-For": "6.6.6.6"},
                json={"parameters": {"who": "in-a-test"}},
            )
            assert run.status_code == 201, run.text
            run_id = run.json()["id"]
            [trigger] = http.get("/api/v1/audit-events/", params={"action": "run.trigger"}).json()[
                "results"
            ]
            assert trigger["ip"] == "127.0.0.1"

            def finished():
                body = http.get(f"/api/v1/runs/{run_id}/").json()
                return body if body["status"] in ("succeeded", "failed") else None

            detail = _wait(finished, 60, "the run to finish")
            assert detail["status"] == "succeeded", detail
            step = detail["stages"][0]["steps"][0]
            lines = http.get(f"/api/v1/runs/{run_id}/log/", params={"step": step["id"]}).json()[
                "lines"
            ]
            assert any("hello from the worker in-a-test" in line for line in lines)

            # Leave a step running: Ctrl-C must stop it too.
            http.post(
                "/api/v1/pipelines/",
                headers=headers,
                json={"slug": "sleeper", "team": "ops", "definition": SLEEPER},
            )
            http.post("/api/v1/pipelines/sleeper/runs/", headers=headers, json={"parameters": {}})

            # The step's pid namespace is its own: find its sleep on the host by its command.
            [sleeper_pid] = _wait(
                lambda: [p for p in host_pids("sleep 120.0419") if _comm(p) == "sleep"],
                30,
                "the sleeping step to start",
            )
        started = _descendants(proc.pid)
        assert sleeper_pid in started
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        assert proc.returncode == 0, (tmp_path / "standalone.log").read_text()
        leftovers = [pid for pid in started if _alive(pid)]
        assert leftovers == [], f"processes left behind: {leftovers}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


PROBE = r"""
name: probe
stages:
  - name: probe
    steps:
      - name: probe
        run: |
          echo "--- environ"; tr '\0' '\n' < /proc/$PPID/environ 2>&1
          for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>&1; done
          echo "--- sqlite"; head -c 16 "$PROBE_DB" 2>&1; echo
          echo "--- var"; ls -a "$PROBE_VAR" 2>&1
          echo "--- ps"; ps -eo comm 2>&1
          echo "--- done"
"""


def test_a_step_in_standalone_mode_reads_neither_the_sqlite_file_nor_the_server(
    standalone_env, tmp_path
):
    """Standalone runs the worker in the server's own process, next to the SQLite file: the
    sandboxed step gets neither."""
    port = _free_port()
    log = open(tmp_path / "standalone.log", "wb")  # noqa: SIM115
    db_file = tmp_path / "clearway.sqlite3"
    assert db_file.read_bytes()[:15] == b"SQLite format 3"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port), "--no-demo"],
        cwd=ROOT,
        env=standalone_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up():
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 90, "the standalone server to answer")
        with httpx.Client(base_url=base, timeout=10) as http:
            http.get("/accounts/login/")
            http.post(
                "/accounts/login/",
                data={
                    "username": "root",
                    "password": "s3cret-pass-for-test",
                    "csrfmiddlewaretoken": http.cookies["csrftoken"],
                    "next": "/",
                },
            )
            headers = {"X-CSRFToken": http.cookies["csrftoken"], "Referer": base + "/"}
            definition = PROBE.replace(
                "        run: |",
                f'        env: {{PROBE_DB: "{db_file}", PROBE_VAR: "{tmp_path}"}}\n        run: |',
            )
            created = http.post(
                "/api/v1/pipelines/",
                headers=headers,
                json={"slug": "probe", "team": "ops", "definition": definition},
            )
            assert created.status_code == 201, created.text
            run_id = http.post(
                "/api/v1/pipelines/probe/runs/", headers=headers, json={"parameters": {}}
            ).json()["id"]

            def finished():
                body = http.get(f"/api/v1/runs/{run_id}/").json()
                return body if body["status"] in ("succeeded", "failed") else None

            detail = _wait(finished, 60, "the probe to finish")
            step = detail["stages"][0]["steps"][0]
            lines = http.get(f"/api/v1/runs/{run_id}/log/", params={"step": step["id"]}).json()[
                "lines"
            ]
        text = "\n".join(lines)
        assert "--- done" in text, text
        assert "s3cret-pass-for-test" not in text  # DJANGO_SUPERUSER_PASSWORD of the server
        assert "DJANGO_SETTINGS_MODULE" not in text and "CLEARWAY_VAR_DIR" not in text
        assert "SQLite format" not in text
        assert "clearway.sqlite3" not in text.replace(str(db_file), "")
        ps = text.split("--- ps")[1].split("--- done")[0]
        assert "python" not in ps and "uvicorn" not in ps
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

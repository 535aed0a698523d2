"""The step sandbox with real bubblewrap: a step run by the executor in this process — the
way standalone mode runs it, on SQLite — tries to reach what belongs to the worker and
fails; network and resource limits hold."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from governance.models import Environment
from orchestrator import sandbox, spec
from orchestrator.models import Run, RunStatus

from .conftest import log_text, steps_of

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _bwrap_present():
    try:
        sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"bubblewrap is required in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))


def steps_yaml(*steps: dict, environment: str | None = None) -> str:
    stage = {"name": "probe", "steps": list(steps)}
    if environment:
        stage["environment"] = environment
    return json.dumps({"name": "probe", "stages": [stage]})


def run_steps(start, worker, *steps: dict, environment: str | None = None) -> Run:
    run = start(steps_yaml(*steps, environment=environment))
    worker.drive(run)
    return run


PROBE = r"""
echo "uid=$(id -u) gid=$(id -g)"
echo "--- parent environ"; tr '\0' '\n' < /proc/$PPID/environ 2>&1
echo "--- every environ"
for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>&1; done
echo "--- database file"; head -c 64 "$PROBE_DB" 2>&1; echo
echo "--- parent of the workspace"; ls -a .. 2>&1
echo "--- another run"; ls -a "$PROBE_OTHER" 2>&1; cat "$PROBE_OTHER/loot.txt" 2>&1
echo "--- var"; ls -a "$PROBE_VAR" 2>&1
echo "--- code and settings"; ls "$PROBE_CODE" 2>&1
head -3 "$PROBE_CODE/orchestrator/settings.py" 2>&1
echo "--- home"; ls -a "$PROBE_HOME" 2>&1
echo "--- ps"; ps -eo pid,user,comm 2>&1
echo "--- writes"
echo x > "$PROBE_TMP"  # the sandbox's own /tmp: the host's must not get it
for target in /etc/probe /usr/probe /probe "$PROBE_OTHER/probe" "$PROBE_CODE/probe"; do
  if (echo x > "$target") 2>/dev/null; then echo "WROTE $target"; else echo "refused $target"; fi
done
echo x > "$CLEARWAY_WORKSPACE/mine" && echo "wrote my workspace"
echo x > /tmp/scratch && echo "wrote my tmp"
echo "--- env"; env | sort
"""


def test_escape_probes_in_process_on_sqlite_get_nothing(start, worker, monkeypatch, tmp_path):
    marker = f"worker-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("SECRET_KEY", marker)
    monkeypatch.setenv("DATABASE_URL", f"postgres://clearway:{marker}@db/clearway")
    db_file = Path(settings.DATABASES["default"]["TEST"]["NAME"])
    assert db_file.read_bytes()[:15] == b"SQLite format 3"
    other = Path(settings.CLEARWAY["WORKSPACE_ROOT"]) / "run-987654"
    other.mkdir(parents=True, exist_ok=True)
    (other / "loot.txt").write_text(f"loot {marker}")
    host_tmp = Path("/tmp") / f"clearway-probe-{uuid.uuid4().hex}"
    env = {
        "PROBE_DB": str(db_file),
        "PROBE_OTHER": str(other),
        "PROBE_VAR": str(settings.VAR_DIR),
        "PROBE_CODE": str(ROOT),
        "PROBE_HOME": os.environ.get("HOME", "/root"),
        "PROBE_TMP": str(host_tmp),
    }
    run = run_steps(start, worker, {"name": "probe", "run": PROBE, "env": env})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    [step] = steps_of(run).values()
    text = log_text(step)
    # stdout only: stderr lines ("Permission denied") interleave with it in time order.
    lines = [line.split(" ", 1)[1] for line in text.splitlines() if " [stderr] " not in line]

    assert marker not in text, "something of the worker reached the step"
    uid = next(line for line in lines if line.startswith("uid="))
    assert uid != f"uid={os.geteuid()} gid={os.getegid()}", "the step runs as the worker"
    if os.geteuid() == 0:
        assert "uid=0" not in uid
    assert "SQLite format 3" not in text
    parent = lines[lines.index("--- parent of the workspace") + 1 : lines.index("--- another run")]
    assert sorted(parent) == [".", "..", f"run-{run.pk}"], parent
    assert "loot" not in text.replace("loot.txt", "")
    assert "DJANGO_SETTINGS_MODULE" not in text and "import environ" not in text
    ps = lines[lines.index("--- ps") + 1 : lines.index("--- writes")]
    commands = {line.split()[-1] for line in ps[1:]}
    assert commands <= {"bwrap", "sh", "ps", "setpriv"}, ps
    assert not any("python" in line or "pytest" in line for line in ps)
    assert not any(line.startswith("WROTE") for line in lines), lines
    assert not host_tmp.exists() and not (other / "probe").exists()
    assert "wrote my workspace" in lines and "wrote my tmp" in lines
    env_lines = lines[lines.index("--- env") + 1 :]
    names = {line.split("=", 1)[0] for line in env_lines if "=" in line}
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "TERM", "PWD", "SHLVL", "_"} | set(env)
    assert {n for n in names if not n.startswith("CLEARWAY_")} <= allowed, names


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


CONNECT = "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 3)\""


def test_network_is_on_by_default_and_cut_by_network_none(start, worker):
    with _listener() as sock:
        port = sock.getsockname()[1]
        run = run_steps(
            start,
            worker,
            {"name": "online", "run": CONNECT.format(port=port)},
            {"name": "offline", "run": CONNECT.format(port=port), "network": "none"},
        )
    steps = steps_of(run)
    assert steps["probe/online"].status == "succeeded", log_text(steps["probe/online"])
    assert steps["probe/offline"].status == "failed"
    assert "ConnectionRefusedError" in log_text(steps["probe/offline"]) or "Network" in log_text(
        steps["probe/offline"]
    )


def test_an_environment_with_network_none_cuts_every_step_of_its_stages(start, worker):
    Environment.objects.create(name="airgap", network="none")
    with _listener() as sock:
        run = run_steps(
            start,
            worker,
            {"name": "connect", "run": CONNECT.format(port=sock.getsockname()[1])},
            environment="airgap",
        )
    [step] = steps_of(run).values()
    assert step.status == "failed", log_text(step)


def test_limits_come_from_the_environment_and_the_step_within_the_maximum(start, worker):
    Environment.objects.create(name="small", step_limits={"processes": 64, "memory_mb": 256})
    show = 'echo "nproc=$(ulimit -p) data=$(ulimit -d) cpu=$(ulimit -t)"'
    run = run_steps(
        start,
        worker,
        {"name": "defaults", "run": show},
        {"name": "own", "run": show, "limits": {"cpu_seconds": 30, "memory_mb": 128}},
        {
            "name": "hog",
            "run": "python3 -c 'x = bytearray(400 * 1024 * 1024)'",
            "limits": {"memory_mb": 128},
        },
        environment="small",
    )
    steps = steps_of(run)
    cpu = settings.CLEARWAY["STEP_LIMITS"]["cpu_seconds"]
    assert f"nproc=64 data={256 * 1024} cpu={cpu}" in log_text(steps["probe/defaults"])
    assert f"nproc=64 data={128 * 1024} cpu=30" in log_text(steps["probe/own"])
    assert steps["probe/hog"].status == "failed"
    assert "MemoryError" in log_text(steps["probe/hog"])


def test_a_step_asking_for_more_than_the_maximum_is_refused_with_line_and_column(settings):
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "STEP_LIMITS_MAX": {**settings.CLEARWAY["STEP_LIMITS_MAX"], "memory_mb": 1024},
    }
    text = (
        "name: big\nstages:\n  - name: s\n    steps:\n      - name: x\n        run: 'true'\n"
        "        limits:\n          memory_mb: 4096\n        network: offline\n"
    )
    with pytest.raises(spec.SpecError) as caught:
        spec.parse_pipeline(text, limits_max=settings.CLEARWAY["STEP_LIMITS_MAX"])
    errors = {e["path"]: e for e in caught.value.errors}
    memory = errors["stages[0].steps[0].limits.memory_mb"]
    assert (memory["line"], memory["column"]) == (8, 22)
    assert "above this installation's maximum of 1024" in memory["message"]
    network = errors["stages[0].steps[0].network"]
    assert network["line"] == 9 and "default, none" in network["message"]


def test_sandbox_off_runs_unsandboxed_and_marks_the_run(start, worker, settings):
    settings.CLEARWAY = {**settings.CLEARWAY, "SANDBOX": "off"}
    run = run_steps(start, worker, {"name": "bare", "run": "id -u"})
    assert run.status == RunStatus.SUCCEEDED
    assert run.sandboxed is False
    [step] = steps_of(run).values()
    assert "runs WITHOUT the sandbox" in log_text(step)
    settings.CLEARWAY = {**settings.CLEARWAY, "SANDBOX": "on"}
    again = run_steps(start, worker, {"name": "boxed", "run": "id -u"})
    assert again.sandboxed is True


def _without_bwrap(tmp_path: Path) -> dict:
    """An environment whose PATH holds everything but bwrap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "setpriv"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        PATH=str(bin_dir),
        CLEARWAY_VAR_DIR=str(tmp_path / "var"),
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
    )
    return env


def test_a_worker_without_bubblewrap_refuses_to_start_and_says_how_to_fix(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "orchestrator", "worker", "-P", "solo"],
        cwd=ROOT,
        env=_without_bwrap(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "refuses to start: bubblewrap (bwrap) is not installed" in output
    assert "apt-get install -y bubblewrap" in output and "CLEARWAY_SANDBOX=off" in output
    assert "ready." not in output


def test_standalone_without_bubblewrap_refuses_to_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "standalone", "--no-demo", "--port", "0"],
        cwd=ROOT,
        env=_without_bwrap(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Clearway refuses to start: bubblewrap (bwrap) is not installed" in done.stderr


def test_a_worker_with_sandbox_off_on_purpose_starts_with_a_warning(tmp_path):
    env = {**_without_bwrap(tmp_path), "CLEARWAY_SANDBOX": "off"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup();"
            "from orchestrator import sandbox; print(sandbox.startup_check('worker'))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "CLEARWAY_SANDBOX=off" in done.stdout and "WITHOUT the sandbox" in done.stdout

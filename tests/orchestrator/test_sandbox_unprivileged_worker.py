"""A worker that is not root: bubblewrap then runs unprivileged, in a user namespace where
the step is uid 65534 — but on the host it keeps the worker's uid (the namespace maps it
there), which the issue forbids ("a user that is not the worker's"). So such a worker
refuses to start and says how to fix it, unless CLEARWAY_SANDBOX_ALLOW_WORKER_UID is set on
purpose; and the unprivileged sandbox itself still isolates the step.

This machine's Python lives where only root may read it, so the worker process cannot be
run as another user here: the sandbox is started by `setpriv` as a non-root uid (the very
command a non-root worker runs), and the start-up check sees a non-root uid through
sandbox._worker_uid."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from orchestrator import sandbox

UID = 54321

PROBE = r"""
echo "uid=$(id -u)"
echo "--- parent"; ls -a .. 2>&1
echo "--- code"; ls -a "$PROBE_CODE" 2>&1
echo "--- processes"; ls /proc | grep -E '^[0-9]+$' | tr '\n' ' '; echo
echo "--- write"; touch /etc/owned 2>&1 || echo "write refused"
touch "$CLEARWAY_WORKSPACE/mine" && echo "workspace writable"
"""


@pytest.fixture
def not_root(monkeypatch):
    monkeypatch.setattr(sandbox, "_worker_uid", lambda: UID)


def test_a_worker_that_is_not_root_refuses_to_start_and_says_how_to_fix(not_root):
    try:
        sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc}")
    with pytest.raises(sandbox.SandboxUnavailable) as refused:
        sandbox.startup_check("worker")
    message = str(refused.value)
    assert f"runs as uid {UID}, not root" in message
    assert "Run the worker as root" in message
    assert "CLEARWAY_SANDBOX_ALLOW_WORKER_UID=1" in message


def test_allowed_on_purpose_it_starts_with_a_warning(not_root, settings):
    try:
        sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap cannot run here: {exc}")
    settings.CLEARWAY = {**settings.CLEARWAY, "SANDBOX_ALLOW_WORKER_UID": True}
    warning = sandbox.startup_check("worker")
    assert warning.startswith("WARNING: CLEARWAY_SANDBOX_ALLOW_WORKER_UID is set")
    assert f"as uid {UID} on the host" in warning


def test_a_root_worker_needs_no_such_setting():
    if os.geteuid() != 0:
        pytest.skip("the test process is not root")
    assert sandbox.startup_check("worker") == ""


@pytest.fixture
def shared_dir():
    """A directory the other uid can traverse (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="clearway-unpriv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_unprivileged_sandbox_isolates_the_step_but_keeps_the_worker_uid(not_root, shared_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to start the sandbox as another uid (setpriv)")
    workspace = shared_dir / "run-9"
    workspace.mkdir()
    os.chown(workspace, UID, UID)
    plan = sandbox.launch(
        PROBE,
        run_id=9,
        workspace=workspace,
        env={"LANG": "C.UTF-8", "PROBE_CODE": str(Path(django_settings.BASE_DIR))},
        limits=sandbox.limits_for({}),
    )
    assert "--unshare-user" in plan.argv and "setpriv" not in plan.argv
    as_worker = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"]
    done = subprocess.run(
        as_worker + plan.argv,
        env=plan.env,
        cwd=plan.cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0 and "namespace" in done.stderr.lower():
        pytest.skip(f"unprivileged user namespaces are off here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "uid=65534" in out
    parent = out.split("--- parent\n")[1].split("---")[0].split()
    assert sorted(parent) == [".", "..", "run-9"]
    code = out.split("--- code\n")[1].split("---")[0]
    # Clearway's code and settings: an empty tmpfs over them, or — for a checkout under /tmp,
    # which the sandbox replaces with its own private /tmp — not there at all.
    assert sorted(code.split()) == [".", ".."] or "No such file or directory" in code, code
    processes = out.split("--- processes\n")[1].split("---")[0].split()
    # bwrap's init, the shell and the three commands of the pipeline that lists them.
    assert len(processes) <= 6, processes
    assert "write refused" in out and "workspace writable" in out
    # What the start-up check refuses by default: uid 65534 inside is the worker's uid on the
    # host — the file the step wrote belongs to the worker's user.
    assert (workspace / "mine").stat().st_uid == UID

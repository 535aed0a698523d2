"""A worker that goes on with its run starts the next step's sandbox inside the transaction
that claims it, held at a barrier (executors.prestart, sandbox.Limits.shell with `barrier`):
nothing of the script runs before the claim committed, a claim that rolls back leaves no
process and no effect, and steps that ask for secrets are never pre-started."""

from __future__ import annotations

import os
import subprocess

import pytest

from governance import audit
from orchestrator import actions, executors, sandbox, tasks
from orchestrator.models import RunStatus, StepRun, StepStatus

from .conftest import log_text, steps_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _bwrap_present():
    try:
        sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"bubblewrap is required in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))


def two_stages(second: str) -> str:
    return (
        "name: two\nstages:\n"
        "  - name: first\n    steps:\n      - name: a\n        run: echo first\n"
        "  - name: second\n    needs: [first]\n    steps:\n      - name: b\n"
        f"        run: {second}\n"
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def held(monkeypatch):
    """Every sandbox pre-started in this test, as executors.prestart returned it."""
    seen: list[executors.Prestarted] = []
    real = executors.prestart

    def spy(step):
        result = real(step)
        if result is not None:
            seen.append(result)
        return result

    monkeypatch.setattr(executors, "prestart", spy)
    return seen


def _plan(workspace, script: str):
    return sandbox.launch(
        script,
        run_id=7,
        workspace=workspace,
        env={"LANG": "C.UTF-8"},
        limits=sandbox.limits_for({}),
        barrier=True,
    )


def test_the_held_shell_runs_nothing_until_released(tmp_path):
    workspace = tmp_path / "run-7"
    workspace.mkdir()
    plan = _plan(workspace, "touch ran; echo up; cat")  # `cat`: stdin must be /dev/null
    proc = subprocess.Popen(
        plan.argv, env=plan.env, cwd=plan.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    # Held: no output and no file, however long it waits (the barrier is a blocking read).
    assert not (workspace / "ran").exists()
    proc.stdin.write(sandbox.BARRIER_GO)
    proc.stdin.close()
    assert proc.stdout.read() == b"up\n"
    assert proc.wait(timeout=20) == 0
    assert (workspace / "ran").exists()


def test_end_of_file_at_the_barrier_ends_the_shell_before_the_script(tmp_path):
    workspace = tmp_path / "run-7"
    workspace.mkdir()
    plan = _plan(workspace, "touch ran")
    proc = subprocess.Popen(plan.argv, env=plan.env, cwd=plan.cwd, stdin=subprocess.PIPE)
    proc.stdin.close()
    assert proc.wait(timeout=20) == sandbox.BARRIER_EXIT
    assert not (workspace / "ran").exists()


def test_the_next_step_runs_in_the_sandbox_started_by_the_claiming_transaction(start, worker, held):
    run = start(two_stages('sh -c "echo second uid=$(id -u) pid=$$"'))
    [first] = worker.take()
    executors.execute_step(first.step_id, first.attempt, chain=tasks.INLINE_STEPS)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.reason
    steps = steps_of(run)
    second = steps["second/b"]
    assert [(h.step_id, h.attempt) for h in held] == [(second.pk, 1)]
    assert held[0].proc.returncode == 0
    text = log_text(second)
    assert "second uid=" in text and "uid=0" not in text  # still not the worker's uid
    assert worker.take() == []


def test_a_claim_that_rolls_back_leaves_no_process_and_no_effect(start, worker, held, monkeypatch):
    run = start(two_stages("touch must-not-exist"))
    [first] = worker.take()

    real_append = audit._append

    def fail(rows):
        if not held:  # the first step's own claim
            return real_append(rows)
        raise RuntimeError("the transaction fails after the claim, before its commit")

    # The audit rows are appended as the transaction's last writes (audit.batch), after the
    # claim and its pre-start: failing there rolls everything back.
    monkeypatch.setattr(audit, "_append", fail)
    with pytest.raises(RuntimeError):
        executors.execute_step(first.step_id, first.attempt, chain=tasks.INLINE_STEPS)
    [prestarted] = held
    assert prestarted is not None
    assert prestarted.proc.returncode is not None and not alive(prestarted.proc.pid)
    assert not (actions.workspace_for(run.pk) / "must-not-exist").exists()
    # Nothing of the transaction stayed: the first step is still running, the second pending.
    steps = steps_of(run)
    assert steps["first/a"].status == StepStatus.RUNNING
    assert steps["second/b"].status == StepStatus.PENDING
    with executors._running_lock:
        assert prestarted.proc not in executors._running


def test_an_error_before_the_step_runs_ends_its_held_sandbox(start, worker, held, monkeypatch):
    run = start(two_stages("touch must-not-exist"))
    [first] = worker.take()
    real = executors._receive_artifacts

    def broken(step, run_, stage, log):
        if held:  # the pre-started second step: an unexpected error before it runs
            raise OSError("the artifact storage went away")
        return real(step, run_, stage, log)

    monkeypatch.setattr(executors, "_receive_artifacts", broken)
    executors.execute_step(first.step_id, first.attempt, chain=tasks.INLINE_STEPS)
    [prestarted] = held
    assert prestarted.proc.returncode is not None and not alive(prestarted.proc.pid)
    assert not (actions.workspace_for(run.pk) / "must-not-exist").exists()
    second = steps_of(run)["second/b"]
    assert second.status == StepStatus.FAILED
    assert "executor error: OSError: the artifact storage went away" in second.error


def test_steps_that_ask_for_secrets_or_are_http_are_not_prestarted(settings):
    plain = StepRun(kind="run", config={"run": "true"})
    asking = StepRun(kind="run", config={"run": "true", "secrets": ["DB_PASSWORD"]})
    http = StepRun(kind="http", config={"http": {"url": "http://127.0.0.1/"}})
    assert executors.prestartable(plain)
    assert not executors.prestartable(asking)
    assert not executors.prestartable(http)
    settings.CLEARWAY = {**settings.CLEARWAY, "SANDBOX": "off"}
    assert not executors.prestartable(plain)

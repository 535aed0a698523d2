"""Step executors: `run` (a shell command in the run's workspace) and `http` (a request).

Parameters and context reach a command only as environment variables — never by text
substitution into the command — so a parameter value cannot inject shell code. The child
gets a minimal environment: nothing of the worker's own (database URL, secrets) leaks.

Output is captured line by line with timestamps and written in batches (>= LOG_BATCH_LINES
lines or LOG_BATCH_SECONDS) as LogChunk rows, each announced as one live `log` event, so a
chatty step cannot flood the database or the channel layer. Past LOG_CAP_BYTES the log is
truncated with a marker and the rest of the output is drained and dropped.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F

from governance import secrets
from governance.models import Gate

from . import actions, events, logcontext, sandbox
from . import artifacts as artifact_store
from .kernel import fastsql
from .masking import Masker
from .models import LogChunk, Run, StepRun

MAX_LINE_CHARS = 8192

logger = logging.getLogger(__name__)

# Process groups started by this process, so a shutting-down standalone server can stop them.
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()
# Set when this process shuts down: a chain (see execute_step) claims no further step.
_stopping = threading.Event()
# A chain (see execute_step) claims no further step after this many seconds.
CHAIN_SECONDS = 30.0


def stop_chaining() -> None:
    """From now on, an executor that finishes a step lets the next one go to the broker."""
    _stopping.set()


def kill_running_steps() -> int:
    """Stop every step process group this process started; returns how many."""
    stop_chaining()
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        _kill_group(proc, grace=1.0)
    return len(procs)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")  # keeps ESC (\x1b) for ANSI


def clean_line(raw: bytes) -> str:
    """Decode a line safely: invalid UTF-8 is replaced, NUL and control characters become
    U+FFFD (PostgreSQL text cannot hold NUL), ANSI escapes are kept for the viewer."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    text = _CONTROL.sub("\ufffd", text)
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + " …[line truncated]"
    return text


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LogWriter:
    """Buffers lines of one step and writes them in batches."""

    def __init__(self, step: StepRun, run_id: int):
        self.step = step
        self.run_id = run_id
        cfg = settings.CLEARWAY
        self.batch_lines = cfg["LOG_BATCH_LINES"]
        self.batch_seconds = cfg["LOG_BATCH_SECONDS"]
        self.cap = cfg["LOG_CAP_BYTES"]
        self.offset = step.log_lines
        self.bytes = step.log_bytes
        self.truncated = step.log_truncated
        self.buffer: list[str] = []
        self.first_at = 0.0
        # The step's released secret values, masked in every line before it is buffered
        # (so before it is stored or streamed).
        self.masker = Masker(())

    def add(self, text: str, stream: str = "out") -> None:
        if self.truncated:
            return
        text = self.masker.mask(text)
        line = f"{_stamp()} {'[stderr] ' if stream == 'err' else ''}{text}"
        size = len(line.encode()) + 1
        if self.bytes + size > self.cap:
            self.truncated = True
            cap_mib = self.cap / (1024 * 1024)
            line = (
                f"{_stamp()} [clearway] log truncated at {cap_mib:g} MiB: further output of "
                "this step is discarded (the step keeps running)"
            )
            size = len(line.encode()) + 1
        if not self.buffer:
            self.first_at = time.monotonic()
        self.buffer.append(line)
        self.bytes += size
        if len(self.buffer) >= self.batch_lines:
            self.flush()

    def due(self) -> bool:
        return bool(self.buffer) and time.monotonic() - self.first_at >= self.batch_seconds

    def flush(self) -> None:
        if not self.buffer:
            return
        lines, self.buffer = self.buffer, []
        offset = self.offset
        with transaction.atomic():
            # The run row first (the event's sequence number), then the step's: the order of
            # cancel_run and finish_step. The other way round, a flush during a cancel
            # deadlocks on PostgreSQL.
            events.publish_log(self.step, self.run_id, offset, lines)
            LogChunk.objects.create(
                step=self.step, offset=offset, line_count=len(lines), text="\n".join(lines)
            )
            StepRun.objects.filter(pk=self.step.pk).update(
                log_lines=F("log_lines") + len(lines),
                log_bytes=self.bytes,
                log_truncated=self.truncated,
            )
        self.offset += len(lines)

    def write_locked(self, step: StepRun) -> list[str]:
        """Write what is buffered inside the caller's transaction, which holds the run row
        (actions.finish_step: the last lines and the step's outcome commit together). Sets
        the step's log counters; returns the fields the caller saves with it."""
        if not self.buffer:
            return []
        lines, self.buffer = self.buffer, []
        events.publish_log(step, self.run_id, self.offset, lines)
        fastsql.insert(
            LogChunk(step=step, offset=self.offset, line_count=len(lines), text="\n".join(lines))
        )
        self.offset += len(lines)
        step.log_lines += len(lines)  # `step` was read under the lock: as F() + n
        step.log_bytes = self.bytes
        step.log_truncated = self.truncated
        return ["log_lines", "log_bytes", "log_truncated"]


class Pulse:
    """A running step's link to the database: every second a cheap read notices a cancel (or
    a reap); every HEARTBEAT_SECONDS a write refreshes the heartbeat the reaper watches.

    The heartbeat is also the attempt's lease. The reaper gives a step up (and may start the
    next attempt) once its heartbeat is HEARTBEAT_TIMEOUT old; so the supervisor stops the
    step itself when it could not renew the heartbeat for half of that (database gone, the
    process stalled): by the time the reaper acts, this attempt can no longer be running —
    or its supervisor is dead, and the step died with it (--die-with-parent)."""

    CHECK_SECONDS = 1.0

    def __init__(self, step: StepRun):
        self.step = step
        self.write_every = settings.CLEARWAY["HEARTBEAT_SECONDS"]
        self.lease = settings.CLEARWAY["HEARTBEAT_TIMEOUT"] / 2
        self.last_check = self.last_write = self.last_renewed = time.monotonic()
        self.reason = ""

    def alive(self) -> bool:
        now = time.monotonic()
        if now - self.last_check < self.CHECK_SECONDS:
            return True
        self.last_check = now
        write = now - self.last_write >= self.write_every
        if write:
            self.last_write = now
        try:
            mine = actions.heartbeat(self.step.pk, self.step.attempt, write=write)
        except DatabaseError:
            if now - self.last_renewed > self.lease:
                self.reason = (
                    f"lost the database for {now - self.last_renewed:.0f} s: the attempt's "
                    "lease ran out, so it stops before the reaper may start another"
                )
                return False
            return True
        if write and mine:
            self.last_renewed = now
        if not mine:
            self.reason = "canceled"
        return mine


@dataclass
class Result:
    succeeded: bool
    exit_code: int | None = None
    error: str = ""
    artifacts: list = field(default_factory=list)  # stored, unsaved Artifact rows


def _child_env(step: StepRun, run, stage) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
    }
    for name, value in (run.parameters or {}).items():
        env[f"CLEARWAY_PARAM_{name.upper()}"] = str(value)
    env.update(
        CLEARWAY_RUN_ID=str(run.pk),
        CLEARWAY_RUN_NUMBER=str(run.number),
        CLEARWAY_PIPELINE=run.pipeline.slug,
        CLEARWAY_STAGE=stage.name,
        CLEARWAY_STEP=step.name,
        CLEARWAY_ATTEMPT=str(step.attempt),
        CLEARWAY_ENVIRONMENT=stage.environment.name if stage.environment_id else "",
    )
    for key, value in (step.config.get("env") or {}).items():
        env[str(key)] = str(value)
    return env


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """Stop the whole process group the step started (its children too)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_command(
    step: StepRun, run, stage, log: LogWriter, prestarted: Prestarted | None = None
) -> Result:
    timeout = float(step.config.get("timeout") or 600)
    proc = prestarted.proc if prestarted is not None else None
    try:
        log.add(f"$ {step.config['run']}" if "\n" not in step.config["run"] else "$ <script>")
        if proc is not None:
            # Started in the transaction that claimed the step (see prestart), now committed:
            # its shell goes on with the script. Only steps without secrets are pre-started.
            _release_barrier(proc)
        else:
            env = _child_env(step, run, stage)
            refused = _release_secrets(step, run, stage, env, log)
            if refused is not None:
                return refused
            if not sandbox.enabled():
                _mark_unsandboxed(run, log)
            proc = _spawn(step, run, stage, env)
        return _supervise(proc, step, log, timeout)
    except BaseException:
        # Whatever went wrong here (the database, the worker going down), the step does not
        # go on unsupervised.
        if proc is not None:
            _kill_group(proc, grace=0.5)
        raise
    finally:
        if proc is not None:
            with _running_lock:
                _running.discard(proc)


def _spawn(step: StepRun, run, stage, env: dict, *, barrier: bool = False) -> subprocess.Popen:
    """Start the step's command: in the sandbox unless CLEARWAY_SANDBOX=off. With `barrier`
    (sandboxed only), its shell waits on stdin for BARRIER_GO before it runs the script."""
    workspace = actions.workspace_for(run.pk)
    workspace.mkdir(parents=True, exist_ok=True)
    # Running a shell command is the feature; parameters reach it only as environment
    # variables (see the module docstring), never spliced into the text.
    if sandbox.enabled():
        environment = stage.environment if stage.environment_id else None
        plan = sandbox.launch(
            step.config["run"],
            run_id=run.pk,
            workspace=workspace,
            env=env,
            limits=sandbox.limits_for(step.config, environment),
            network=not sandbox.network_off(step.config, environment),
            barrier=barrier,
        )
        argv, cwd, env = plan.argv, plan.cwd, plan.env
    else:
        env["HOME"] = env["CLEARWAY_WORKSPACE"] = str(workspace)
        argv, cwd = ["/bin/sh", "-c", step.config["run"]], str(workspace)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if barrier else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        bufsize=0,
    )
    with _running_lock:
        _running.add(proc)
    return proc


# --- pre-started sandboxes: the next step's start overlaps the commit that claims it ------


@dataclass
class Prestarted:
    """A claimed step's sandboxed shell, started before the claim committed and held at its
    barrier (sandbox.Limits.shell): nothing of the script runs before _release_barrier."""

    step_id: int
    attempt: int
    proc: subprocess.Popen


def prestartable(step: StepRun) -> bool:
    """Only sandboxed `run` steps without secrets: secrets are released when the step starts,
    after its claim committed (a protected environment's gate is read then)."""
    return step.kind != "http" and sandbox.enabled() and not step.config.get("secrets")


def prestart(step: StepRun) -> Prestarted | None:
    """Called inside the transaction that claims `step` (actions.finish_step_and_claim_next,
    on_claimed): start its sandbox held at the barrier, so that bubblewrap's start (~5 ms:
    its exec, namespaces, mounts, the init's fork, setpriv and sh) runs while the
    transaction commits instead of after it. Writes nothing; None when the step cannot be
    pre-started or the start failed (the step then starts the usual way, and fails there
    with the reason if it must)."""
    if not prestartable(step):
        return None
    stage = step.stage
    try:
        proc = _spawn(step, stage.run, stage, _child_env(step, stage.run, stage), barrier=True)
    except Exception:
        logger.warning("could not pre-start step %s; it starts after its claim", step.pk)
        return None
    return Prestarted(step.pk, step.attempt, proc)


def _release_barrier(proc: subprocess.Popen) -> None:
    try:
        os.write(proc.stdin.fileno(), sandbox.BARRIER_GO)
    except OSError:
        pass  # the shell is gone already: _supervise reports how it ended
    finally:
        proc.stdin.close()


def abandon(prestarted: Prestarted) -> None:
    """The claim did not commit (or claimed another step): end the held shell. End of file
    on its barrier makes it exit before the script; the group is killed all the same."""
    proc = prestarted.proc
    try:
        proc.stdin.close()
        _kill_group(proc, grace=0.2)
        proc.wait(timeout=5)
    finally:
        with _running_lock:
            _running.discard(proc)


def _end_held(held: Prestarted | None) -> None:
    """After an error before or while the step ran: a pre-started shell still held at its
    barrier (or still running) must not outlive the attempt."""
    if held is not None and held.proc.poll() is None:
        abandon(held)


def _release_secrets(step: StepRun, run, stage, env: dict, log: LogWriter) -> Result | None:
    """Add the secrets the step asks for to its environment, at the moment it starts (a
    protected environment's only past an open gate), and mask them in its log. A refusal
    fails the step before anything runs; its message names the secret and the rule."""
    names = list(step.config.get("secrets") or [])
    if not names:
        return None
    gate_status = Gate.objects.filter(stage_run_id=stage.pk).values_list("status", flat=True)
    try:
        released = secrets.release_for_step(
            names, stage=stage, team_id=run.pipeline.team_id, gate_status=gate_status.first()
        )
    except secrets.SecretRefused as exc:
        log.add(f"[clearway] secret refused: {exc}")
        return Result(False, None, f"secret refused: {exc}")
    log.masker = Masker(released.env.values())
    env.update(released.env)
    StepRun.objects.filter(pk=step.pk).update(secrets=released.record)
    step.secrets = released.record
    listed = ", ".join(f"{r['name']} v{r['version']}" for r in released.record)
    log.add(f"[clearway] secrets released: {listed}")
    return None


def _mark_unsandboxed(run, log: LogWriter) -> None:
    """CLEARWAY_SANDBOX=off: say so in the step's log and on the run (pages, reports)."""
    log.add("[clearway] WARNING: CLEARWAY_SANDBOX=off — this step runs WITHOUT the sandbox")
    if run.sandboxed:
        Run.objects.filter(pk=run.pk).update(sandboxed=False)
        run.sandboxed = False


def _supervise(proc: subprocess.Popen, step: StepRun, log: LogWriter, timeout: float) -> Result:
    sel = selectors.DefaultSelector()
    partial = {"out": b"", "err": b""}
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    started = time.monotonic()
    pulse = Pulse(step)
    open_streams = 2
    stop_reason = ""
    # Until the output is closed AND the shell has exited: a command that closed its output
    # (`exec >/dev/null`, a daemon) is still bound by the timeout and by cancel.
    while open_streams or proc.poll() is None:
        if open_streams:
            ready = sel.select(timeout=0.1)
        else:  # output closed, process still running: wait for it a little (returns on exit)
            ready = []
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        for key, _ in ready:
            chunk = os.read(key.fileobj.fileno(), 65536)
            stream = key.data
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                if partial[stream]:
                    log.add(clean_line(partial[stream]), stream)
                    partial[stream] = b""
                continue
            data = partial[stream] + chunk
            *lines, partial[stream] = data.split(b"\n")
            for raw in lines:
                log.add(clean_line(raw), stream)
            if len(partial[stream]) > MAX_LINE_CHARS * 4:
                log.add(clean_line(partial[stream]), stream)
                partial[stream] = b""
        if log.due():
            log.flush()
        now = time.monotonic()
        if now - started > timeout:
            stop_reason = f"timed out after {timeout:g} s"
            _kill_group(proc)
            break
        if not pulse.alive():
            stop_reason = pulse.reason
            _kill_group(proc)
            break
    for stream_file in (proc.stdout, proc.stderr):
        try:
            sel.unregister(stream_file)
        except (KeyError, ValueError):
            pass
        stream_file.close()
    code = proc.wait()
    # Whatever the step left running in its process group (`server &`) ends with the step.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if stop_reason:
        log.add(f"[clearway] step stopped: {stop_reason}")
        return Result(False, code, stop_reason)
    if code != 0:
        return Result(False, code, f"exit code {code}")
    return Result(True, 0)


def run_http(step: StepRun, run, stage, log: LogWriter) -> Result:
    import httpx

    cfg = step.config["http"]
    method = cfg.get("method", "GET")
    timeout = float(step.config.get("timeout") or 30)
    expect = cfg.get("expect") or [200]
    log.add(f"{method} {cfg['url']}")
    started = time.monotonic()
    box: dict = {}

    def call() -> None:
        try:
            box["response"] = httpx.request(
                method,
                cfg["url"],
                headers=cfg.get("headers") or {},
                content=cfg.get("body"),
                timeout=timeout,
                follow_redirects=False,
            )
        except Exception as exc:
            box["error"] = exc

    # The request runs in a thread so that this one keeps the step's heartbeat going (a long
    # request is not a lost worker for the reaper) and notices a cancel.
    thread = threading.Thread(target=call, name=f"http-step-{step.pk}", daemon=True)
    thread.start()
    pulse = Pulse(step)
    while True:
        thread.join(Pulse.CHECK_SECONDS)
        if not thread.is_alive():
            break
        if not pulse.alive():
            log.add("[clearway] step stopped: canceled")
            return Result(False, None, "canceled")
    error = box.get("error")
    if isinstance(error, httpx.TimeoutException):
        return Result(False, None, f"timed out after {timeout:g} s")
    if isinstance(error, httpx.HTTPError):
        return Result(False, None, f"request failed: {error.__class__.__name__}: {error}")
    if error is not None:
        raise error
    response = box["response"]
    elapsed = (time.monotonic() - started) * 1000
    log.add(f"HTTP {response.status_code} in {elapsed:.0f} ms")
    for raw in response.content[:4096].split(b"\n")[:40]:
        log.add(clean_line(raw))
    if response.status_code not in expect:
        return Result(
            False,
            response.status_code,
            f"status {response.status_code}, expected {', '.join(map(str, expect))}",
        )
    return Result(True, response.status_code)


def _receive_artifacts(step: StepRun, run, stage, log: LogWriter) -> Result | None:
    """Before a run step starts (and so before its sandbox): the artifacts of the stages
    its stage needs, copied from storage into the workspace with their digests checked,
    once per stage on this host. A failure fails the step before anything runs."""
    if step.kind == "http" or not stage.needs:
        return None
    workspace = actions.workspace_for(run.pk)
    workspace.mkdir(parents=True, exist_ok=True)
    try:
        received = artifact_store.deliver(step, stage, workspace, sandbox.workspace_uid(run.pk))
    except artifact_store.ArtifactError as exc:
        log.add(f"[clearway] artifact not received: {exc}")
        return Result(False, None, f"artifact not received: {exc}")
    for row in received:
        log.add(
            f"[clearway] received artifact {row.name}: {row.path} ({row.size} bytes, "
            f"sha256 {row.sha256[:12]}…)"
        )
    return None


def _store_artifacts(step: StepRun, run, log: LogWriter, result: Result) -> Result:
    """After a run step succeeded: its `artifacts:` checked and stored (see artifacts.py).
    Any problem fails the step with the message, and nothing of it stays stored."""
    if not result.succeeded or step.kind == "http" or not step.config.get("artifacts"):
        return result
    workspace = actions.workspace_for(run.pk)
    try:
        files = artifact_store.collect(step, workspace)
        rows = artifact_store.store(step, run, workspace, files)
    except artifact_store.ArtifactError as exc:
        log.add(f"[clearway] artifact not stored: {exc}")
        return Result(False, result.exit_code, f"artifact not stored: {exc}")
    for row in rows:
        log.add(
            f"[clearway] stored artifact {row.name}: {row.path} ({row.size} bytes, "
            f"sha256 {row.sha256[:12]}…)"
        )
    return Result(True, result.exit_code, result.error, rows)


def _verdict(result: Result) -> str:
    return "succeeded" if result.succeeded else f"failed: {result.error or result.exit_code}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_step(step_id: int, attempt: int, *, chain: int = 0) -> None:
    """Claim and run one attempt of a step, then record its outcome.

    With `chain` > 0 (the Celery task), the worker goes on with up to `chain` more steps of
    the same run: the transaction that records a step's outcome also claims the first step
    that became ready for this worker (actions.finish_step_and_claim_next), which then runs
    here without a round trip through the broker. Any other step that became ready at the
    same time is dispatched to the workers as usual, so parallel stages still run in
    parallel. A chain claims no further step once it has run for CHAIN_SECONDS: long steps
    go through the broker (where the round trip does not matter), and a worker's warm
    shutdown — which waits for the task — is never held up by more than one step."""
    worker = worker_name()
    deadline = time.monotonic() + CHAIN_SECONDS
    step = actions.claim_step(step_id, attempt, worker=worker)
    held: Prestarted | None = None
    while step is not None:
        go_on = chain > 0 and not _stopping.is_set() and time.monotonic() < deadline
        step, held = _run_claimed(step, worker if go_on else "", held)
        chain -= 1


def _run_claimed(
    step: StepRun, claim_next_for: str, held: Prestarted | None = None
) -> tuple[StepRun | None, Prestarted | None]:
    """Run a claimed step (`held`: its pre-started sandbox) and record its outcome; returns
    the next step claimed for `claim_next_for` in the same transaction, if any, with its
    pre-started sandbox."""
    stage = step.stage
    run = stage.run
    logcontext.bind(run_id=run.pk, step_id=step.pk)  # on every log record of this step
    log = LogWriter(step, run.pk)
    if step.attempt > 1:
        log.add(f"[clearway] attempt {step.attempt} of {step.max_attempts}")
    try:
        # The needed stages' artifacts land in the workspace first: a pre-started sandbox
        # sees them (its workspace is a bind mount), and is ended if they cannot be received.
        refused = _receive_artifacts(step, run, stage, log)
        if refused is not None:
            if held is not None:
                abandon(held)
            result = refused
        elif step.kind == "http":
            result = run_http(step, run, stage, log)
        else:
            result = run_command(step, run, stage, log, held)
        result = _store_artifacts(step, run, log, result)
    except Exception as exc:  # an executor bug must fail the step, not leave it running
        _end_held(held)
        result = Result(False, None, f"executor error: {exc.__class__.__name__}: {exc}")
    except BaseException:  # the worker is going down: keep what the step printed
        _end_held(held)
        log.flush()
        raise
    logger.info("step %s %s (attempt %s)", step.name, _verdict(result), step.attempt)
    outcome = {
        "succeeded": result.succeeded,
        "exit_code": result.exit_code,
        "error": result.error,
        "log": log,  # its last lines are written with the outcome, in one transaction
        "artifacts": result.artifacts,  # saved with the outcome, or deleted if refused
    }
    if claim_next_for:
        return _finish_and_claim_next(step, claim_next_for, outcome)
    actions.finish_step(step.pk, step.attempt, **outcome)
    return None, None


def _finish_and_claim_next(
    step: StepRun, worker: str, outcome: dict
) -> tuple[StepRun | None, Prestarted | None]:
    """Record the outcome and claim the next step in one transaction, pre-starting the
    claimed step's sandbox inside it (prestart); abandoned if the transaction fails."""
    started: list[Prestarted] = []

    def on_claimed(claimed: StepRun) -> None:
        held = prestart(claimed)
        if held is not None:
            started.append(held)

    try:
        claimed = actions.finish_step_and_claim_next(
            step.pk, step.attempt, worker=worker, on_claimed=on_claimed, **outcome
        )
    except BaseException:
        for held in started:
            abandon(held)
        raise
    held = started[0] if started else None
    if held is not None and (
        claimed is None or (claimed.pk, claimed.attempt) != (held.step_id, held.attempt)
    ):
        abandon(held)
        held = None
    return claimed, held

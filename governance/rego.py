"""Policy-as-code engine adapter: Rego v1 policies evaluated by OPA in isolated processes.

Pure Python (no Django). The web app calls :func:`compile_policy` when a policy is saved,
:func:`run_test_suite` / :func:`run_test_cases` for the policy's test cases (with OPA's
coverage) and dry runs, and :func:`evaluate_many` at a gate. Every call that touches OPA
(``opa-golib-python-bindings``: OPA v1.20's Go ``rego`` package) goes to a small pool of
long-lived evaluator processes (``governance/rego_worker.py``), sandboxed under bubblewrap
with no network, never into this process: OPA has no time or memory limits of its own and
its ``http.send`` really connects. See docs/policy-authoring.md for the guards and the
reasons, docs/architecture.md ("Policy engine") for why the binding is pinned.

Fail closed: a policy that cannot be evaluated (timeout, crash, memory limit, compile or
runtime error, undefined or malformed result) gives a Decision with ``result == "error"`` and
a ``deny`` message; it is never an allow.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import importlib.util
import json
import logging
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from governance import rego_worker as _worker

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TIMEOUT",
    "INPUT_SCHEMA",
    "PROBE_INPUT",
    "SCHEMA_VERSION",
    "Decision",
    "PolicyCompileError",
    "PolicyError",
    "compile_policy",
    "configure_pool",
    "configure_sandbox",
    "demo_policies",
    "evaluate",
    "evaluate_many",
    "input_hash",
    "pool_pids",
    "render_time",
    "run_test_cases",
    "run_test_suite",
    "sandbox_mode",
    "shutdown_pool",
]

SCHEMA_VERSION = 2
DEFAULT_TIMEOUT = 2.0  # seconds per policy evaluation
DEFAULT_COMPILE_TIMEOUT = 5.0
DEFAULT_POOL_SIZE = 2
DEFAULT_MEMORY_LIMIT_MB = 512
STARTUP_TIMEOUT = 15.0  # an evaluator must say "ready" within this
ACQUIRE_TIMEOUT = 30.0  # how long a caller waits for a free evaluator
WORKER_PATH = Path(_worker.__file__).resolve()
DEMO_POLICY_DIR = Path(__file__).resolve().parent / "demo_policies"
PROBE_INPUT = _worker.PROBE_INPUT

# Margin over the budget at which the parent kills an evaluator on its own (resident set
# size). Go reserves address space at start, so RLIMIT_AS cannot be the limit; RLIMIT_DATA
# (set by the evaluator at budget + 256 MiB) is only the backstop.
_RSS_MARGIN_MB = 64
_POLL_INTERVAL = 0.05


# --- public types ------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyError:
    message: str
    line: int | None = None
    column: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"line {self.line}, column {self.column}: {self.message}"
        return self.message


class PolicyCompileError(Exception):
    """A policy was refused: syntax error, Rego v0 form, bad deny/warn, missing package..."""

    def __init__(self, errors: list[PolicyError]):
        self.errors: list[PolicyError] = list(errors) or [PolicyError("unknown compile error")]
        super().__init__("; ".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class Decision:
    result: str  # "pass" | "warn" | "deny" | "error"
    deny: list[str] = field(default_factory=list)
    warn: list[str] = field(default_factory=list)
    duration_ms: float = 0.0
    error: str | None = None
    # Test runs only: the lines of the policy the evaluation covered / did not (OPA's
    # coverage report) and what print() wrote.
    coverage: dict | None = None
    prints: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        """True for "pass" and "warn"; "deny" and "error" both block."""
        return self.result in ("pass", "warn")


def _decision(
    deny: list[str], warn: list[str], duration_ms: float, reply: dict | None = None
) -> Decision:
    result = "deny" if deny else ("warn" if warn else "pass")
    reply = reply or {}
    return Decision(
        result,
        list(deny),
        list(warn),
        duration_ms,
        None,
        reply.get("coverage"),
        list(reply.get("prints") or []),
    )


def _failure(name: str, reason: str, duration_ms: float = 0.0, warn=None) -> Decision:
    message = f"policy {name} could not be evaluated: {reason}"
    return Decision("error", [message], list(warn or []), duration_ms, message)


# --- input helpers -------------------------------------------------------------------------


def render_time(value) -> str:
    """RFC 3339 in UTC with an explicit ``+00:00`` offset, never ``Z``.

    One spelling for every time keeps a gate's input hash stable (OPA reads ``Z`` too).
    Naive datetimes are taken to be UTC; ISO strings (``Z`` or any offset) are accepted and
    normalised."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        value = dt.datetime.fromisoformat(text)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        spec = "microseconds" if value.microsecond else "seconds"
        return value.isoformat(timespec=spec)
    if isinstance(value, dt.date):
        return render_time(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC))
    raise TypeError(f"render_time expects a datetime or an ISO 8601 string, not {type(value)!r}")


def _canonical_json(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def input_hash(input_doc: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a gate input document."""
    return hashlib.sha256(_canonical_json(input_doc).encode("utf-8")).hexdigest()


# JSON Schema of the gate input (schema_version 2); docs/policy-input.md shows the same.
_STR = {"type": "string"}
_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00$"}
_GROUPS = {"type": "array", "items": _STR}
INPUT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://clearway.example/schemas/gate-input-v2.json",
    "title": "Clearway gate input",
    "type": "object",
    "required": [
        "schema_version",
        "now",
        "pipeline",
        "run",
        "stage",
        "environment",
        "previous_stages",
        "approvals",
        "artifacts",
        "artifact_files",
    ],
    "properties": {
        "schema_version": {"const": 2},
        "now": _TIME,
        "pipeline": {
            "type": "object",
            "required": ["slug", "name", "team", "version"],
            "properties": {
                "slug": _STR,
                "name": _STR,
                "team": _STR,
                "version": {"type": "integer", "minimum": 1},
            },
        },
        "run": {
            "type": "object",
            "required": ["id", "number", "trigger", "triggered_by", "parameters"],
            "properties": {
                "id": _STR,
                "number": {"type": "integer", "minimum": 1},
                "trigger": {"enum": ["manual", "api", "schedule", "webhook"]},
                "triggered_by": {
                    "type": "object",
                    "required": ["username", "groups"],
                    "properties": {"username": _STR, "groups": _GROUPS},
                },
                "parameters": {"type": "object"},
            },
        },
        "stage": {
            "type": "object",
            "required": ["name", "environment"],
            "properties": {
                "name": _STR,
                "environment": {"type": ["string", "null"]},
                "secrets": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
                    "uniqueItems": True,
                },
            },
        },
        "environment": {
            "type": "object",
            "required": [
                "name",
                "tier",
                "protected",
                "timezone",
                "freeze_windows",
                "change_windows",
                "in_freeze",
                "in_change_window",
            ],
            "properties": {
                "name": _STR,
                "tier": _STR,
                "protected": {"type": "boolean"},
                "timezone": _STR,
                "freeze_windows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["start", "end", "reason"],
                        "properties": {"start": _TIME, "end": _TIME, "reason": _STR},
                    },
                },
                "change_windows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["days", "start", "end"],
                        "properties": {
                            "days": {
                                "type": "array",
                                "items": {"type": "integer", "minimum": 0, "maximum": 6},
                            },
                            "start": {"type": "string", "pattern": r"^\d{2}:\d{2}$"},
                            "end": {"type": "string", "pattern": r"^\d{2}:\d{2}$"},
                        },
                    },
                },
                "in_freeze": {"type": "boolean"},
                "in_change_window": {"type": "boolean"},
            },
        },
        "previous_stages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "status", "environment"],
                "properties": {
                    "name": _STR,
                    "status": _STR,
                    "environment": {"type": ["string", "null"]},
                },
            },
        },
        "approvals": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["username", "groups", "decision", "at"],
                "properties": {
                    "username": _STR,
                    "groups": _GROUPS,
                    "decision": {"enum": ["approve", "reject"]},
                    "at": _TIME,
                },
            },
        },
        # schema_version 2: the earlier stages' policy-input artifacts, parsed, by name
        "artifacts": {"type": "object"},
        "artifact_files": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "stage", "path", "sha256", "size", "policy_input", "error"],
                "properties": {
                    "name": _STR,
                    "stage": _STR,
                    "path": _STR,
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "size": {"type": "integer", "minimum": 0},
                    "policy_input": {"type": "boolean"},
                    "error": _STR,
                },
            },
        },
    },
}


# --- the evaluator pool ----------------------------------------------------------------


class _WorkerFailure(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _PoolUnavailable(_WorkerFailure):
    """No evaluator could be had at all (shut down, none free in time, none would start)."""


SANDBOX_HINT = (
    "install bubblewrap (`sudo apt-get install bubblewrap`, or `make sandbox-deps`), or set "
    "CLEARWAY_SANDBOX=off to run policy evaluators without a sandbox (not recommended)"
)
_sandbox = {"mode": os.environ.get("CLEARWAY_SANDBOX", "on").strip().lower() or "on"}
_log = logging.getLogger("clearway.rego")


def configure_sandbox(mode: str) -> None:
    """``"on"`` (the default): evaluators run under bubblewrap with no network and no view of
    Clearway's files; without a working ``bwrap`` every evaluation fails closed. ``"off"``:
    plain subprocesses (a warning is logged). Restarts a running pool."""
    mode = str(mode or "on").strip().lower()
    if mode not in ("on", "off"):
        raise ValueError(f'CLEARWAY_SANDBOX must be "on" or "off", not {mode!r}')
    with _pool_lock:
        changed = _sandbox["mode"] != mode
        _sandbox["mode"] = mode
    if changed:
        shutdown_pool()


def sandbox_mode() -> str:
    return _sandbox["mode"]


def _scrubbed_env(memory_limit_mb: int) -> dict[str, str]:
    """The evaluator's whole environment (opa.runtime() would show it to every policy)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if memory_limit_mb > 0:
        # Go's soft limit: its collector works harder as the heap nears the budget, well
        # before the parent's resident-size check or the data limit kill the evaluator.
        env["GOMEMLIMIT"] = f"{max(16, memory_limit_mb * 3 // 4)}MiB"
    return env


def _binding_dir() -> Path:
    """Where opa_bindings is installed, found without importing it (no OPA in this process)."""
    spec = importlib.util.find_spec("opa_bindings")
    if spec is None or not spec.submodule_search_locations:
        raise _WorkerFailure(
            "OPA's evaluator (opa-golib-python-bindings) is not installed: run `make "
            ".venv/.installed` or see docs/operations.md (it needs "
            "`pip install --ignore-requires-python -r requirements/opa.txt`)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _sandbox_argv(memory_limit_mb: int, info_fd: int) -> list[str]:
    """bubblewrap around the evaluator: its own network namespace (no interface but a
    loopback of its own), a read-only root holding a read-only view of /usr and the Python
    installation only, the evaluator script and the OPA binding bound at /clearway, an empty
    private /tmp; no /proc, no home, no Clearway directory (settings, var/, database file,
    keys)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise _WorkerFailure(
            f"bubblewrap (bwrap) is not installed, and policies are evaluated in a sandbox: "
            f"{SANDBOX_HINT}"
        )
    python = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix).resolve()
    argv = [bwrap, "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    if Path("/etc/ld.so.cache").exists():
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for path in {prefix, python.parent.parent}:
        if not str(path).startswith("/usr/") and path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    env = _scrubbed_env(memory_limit_mb)
    argv += [
        "--ro-bind", str(_binding_dir()), "/clearway/opa_bindings",
        "--ro-bind", str(WORKER_PATH), "/clearway/rego_worker.py",
        "--dev", "/dev",
        "--tmpfs", "/tmp",  # noqa: S108 (a fresh tmpfs inside the sandbox)
        "--remount-ro", "/",  # after every mount under it: nothing but /tmp is writable
        "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--unshare-user-try",
        "--die-with-parent", "--new-session",
        "--clearenv",
    ]  # fmt: skip
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", "/", "--info-fd", str(info_fd)]
    argv += [str(python), "-I", "-S", "/clearway/rego_worker.py", "--lib-dir", "/clearway"]
    return argv + ["--memory-mb", str(memory_limit_mb)]


_warned_unsandboxed = False


def _evaluator_argv(memory_limit_mb: int, info_fd: int | None) -> list[str]:
    global _warned_unsandboxed
    if info_fd is not None:
        return _sandbox_argv(memory_limit_mb, info_fd)
    if not _warned_unsandboxed:
        _warned_unsandboxed = True
        _log.warning(
            "CLEARWAY_SANDBOX=off: policy evaluators run without bubblewrap, so a policy "
            "that gets past the publish-time checks could reach the network"
        )
    _binding_dir()  # a clear message when the binding is missing
    return [sys.executable, "-I", str(WORKER_PATH), "--memory-mb", str(memory_limit_mb)]


# Tests only: start evaluators that skip the publish-time refusal of network built-ins, to
# show that the sandbox stops a policy that got past it. Not reachable from settings.
_SKIP_BUILTIN_CHECK = False


class _Evaluator:
    """One evaluator process and its pipes. Used by one thread at a time (the pool sees to it).

    Sandboxed, ``proc`` is bubblewrap and ``pid`` the evaluator inside it (bubblewrap reports
    it on its info pipe): the resident-size check, ``pool_pids()`` and kills use that pid."""

    def __init__(self, memory_limit_mb: int):
        self.memory_limit_mb = memory_limit_mb
        self.sandboxed = _sandbox["mode"] != "off"
        self._stderr = tempfile.TemporaryFile()
        self._buf = b""
        self._next_id = 0
        self.failed = False
        self.peak_rss_mb = 0.0
        self.owner_pid = os.getpid()
        info_read = info_write = None
        if self.sandboxed:
            info_read, info_write = os.pipe()
        try:
            argv = _evaluator_argv(memory_limit_mb, info_write)
            if _SKIP_BUILTIN_CHECK:
                argv.append("--skip-builtin-check")
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=_scrubbed_env(memory_limit_mb),
                cwd=tempfile.gettempdir(),
                close_fds=True,
                pass_fds=(info_write,) if info_write is not None else (),
                start_new_session=True,
            )
        except BaseException:
            for fd in (info_read, info_write):
                if fd is not None:
                    os.close(fd)
            self._stderr.close()
            raise
        self.pid = self.proc.pid
        self._fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        if info_read is not None:
            os.close(info_write)
            try:
                self.pid = self._sandbox_child(info_read, deadline)
            except _WorkerFailure:
                self.kill()
                raise
            finally:
                os.close(info_read)
        try:
            hello = self._read(deadline, what="start-up")
        except _WorkerFailure:
            self.kill()
            raise
        if not hello.get("ready"):
            self.kill()
            raise _WorkerFailure(f"evaluator did not start: {hello!r}")

    def _sandbox_child(self, fd: int, deadline: float) -> int:
        data = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], _POLL_INTERVAL)
            if ready:
                chunk = os.read(fd, 4096)
                if chunk:
                    data += chunk
                    try:
                        return int(json.loads(data)["child-pid"])
                    except (ValueError, KeyError, TypeError):
                        continue
            if (ready and not chunk) or self.proc.poll() is not None:
                break
        self.failed = True
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        message = self._stderr_tail().decode("utf-8", "replace").strip().splitlines()
        detail = message[-1] if message else "no reason given"
        raise _WorkerFailure(
            f"the sandbox (bubblewrap) could not start the evaluator ({detail}): {SANDBOX_HINT}"
        )

    def _stderr_tail(self) -> bytes:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 8192))
            return self._stderr.read()
        except (OSError, ValueError):
            return b""

    # plumbing ---------------------------------------------------------------------------
    def alive(self) -> bool:
        return not self.failed and self.proc.poll() is None

    def _rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm") as fh:
                rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def _crash_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        tail = self._stderr_tail()
        near_limit = self.memory_limit_mb > 0 and self.peak_rss_mb > 0.8 * self.memory_limit_mb
        if b"out of memory" in tail or b"MemoryError" in tail or near_limit:
            return f"memory limit exceeded ({self.memory_limit_mb} MiB)"
        number = None
        if code is not None and code < 0:
            number = -code
        elif self.sandboxed and code is not None and code > 128:
            number = code - 128  # bubblewrap exits with 128 + N when its child died of N
        # Go's runtime catches fatal signals, prints "SIGSEGV: segmentation violation" and a
        # traceback, then dies of SIGQUIT: name the signal that caused it.
        caught = re.search(rb"^(SIG[A-Z]+): ", tail, re.M)
        if caught and caught.group(1).decode() in signal.Signals.__members__:
            number = int(signal.Signals[caught.group(1).decode()])
        if number is not None:
            return f"evaluator crashed (signal {number})"
        return f"evaluator exited unexpectedly (status {code})"

    def _fail(self, reason: str) -> _WorkerFailure:
        self.failed = True
        return _WorkerFailure(reason)

    def _read(self, deadline: float, *, what: str = "evaluation", timeout: float | None = None):
        limit_mb = self.memory_limit_mb + _RSS_MARGIN_MB if self.memory_limit_mb > 0 else 0
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                shown = f"{timeout:g} s" if timeout is not None else what
                raise self._fail(f"timeout after {shown}")
            try:
                ready, _, _ = select.select([self._fd], [], [], min(remaining, _POLL_INTERVAL))
            except InterruptedError:  # pragma: no cover - PEP 475 retries anyway
                continue
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    raise self._fail(self._crash_reason())
                self._buf += chunk
            elif limit_mb and self._rss_mb() > limit_mb:
                self.kill()
                raise self._fail(f"memory limit exceeded ({self.memory_limit_mb} MiB)")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            raise self._fail("evaluator sent a malformed response") from None

    def send(self, payload: dict) -> int:
        self._next_id += 1
        payload = {"id": self._next_id, **payload}
        data = (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._fail(self._crash_reason()) from None
        return self._next_id

    def receive(self, request_id: int, timeout: float) -> dict:
        reply = self._read(time.monotonic() + timeout, timeout=timeout)
        if reply.get("id") != request_id or "fatal" in reply:
            self.kill()
            raise self._fail(f"evaluator protocol error: {reply.get('fatal', 'wrong reply id')}")
        return reply

    def kill(self) -> None:
        self.failed = True
        if self.proc.poll() is None:
            # the evaluator first (inside the sandbox), then bubblewrap around it
            for pid in dict.fromkeys((self.pid, self.proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def close(self, graceful: bool = True) -> None:
        if graceful and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass

    def abandon(self) -> None:
        """After fork(): drop the parent's evaluator without signalling it."""
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                stream.close()
            except OSError:
                pass
        self.proc.returncode = 0  # keep Popen.__del__ from tracking a process we don't own


_starter: tuple[int, queue.SimpleQueue] | None = None  # (pid, requests to the starter thread)


def _start_evaluator(memory_limit_mb: int) -> _Evaluator:
    """Start an evaluator from one long-lived thread of this process. Evaluators ask to be
    killed when their parent dies (PR_SET_PDEATHSIG), and for the kernel the parent is the
    *thread* that forked them: one started by a request thread (ASGI servers run each sync
    request in a thread that ends with it) was killed right after that request, and the next
    caller wrote into a dead pipe."""
    global _starter
    with _pool_lock:  # re-created after fork(); a child starts its own starter thread
        if _starter is None or _starter[0] != os.getpid():
            requests: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(
                target=_starter_loop, args=(requests,), name="rego-evaluator-starter", daemon=True
            ).start()
            _starter = (os.getpid(), requests)
        requests = _starter[1]
    done: Future = Future()
    requests.put((memory_limit_mb, done))
    return done.result()


def _starter_loop(requests: queue.SimpleQueue) -> None:
    while True:
        memory_limit_mb, done = requests.get()
        try:
            done.set_result(_Evaluator(memory_limit_mb))
        except BaseException as exc:
            done.set_exception(exc)


class EvaluatorPool:
    """A few long-lived evaluator processes, shared by the threads of this process."""

    def __init__(
        self, size: int = DEFAULT_POOL_SIZE, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
    ):
        self.size = max(1, int(size))
        self.memory_limit_mb = int(memory_limit_mb)
        self._cond = threading.Condition()
        self._idle: list[_Evaluator] = []
        self._busy: set[_Evaluator] = set()
        self._starting = 0
        self._closed = False
        self.owner_pid = os.getpid()

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in [*self._idle, *self._busy] if w.proc.poll() is None)

    def warm_up(self) -> None:
        """Start every evaluator now instead of on first use."""
        acquired = []
        try:
            for _ in range(self.size):
                acquired.append(self.acquire())
        finally:
            for evaluator in acquired:
                self.release(evaluator)

    def acquire(self, timeout: float = ACQUIRE_TIMEOUT) -> _Evaluator:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise _PoolUnavailable("the evaluator pool is shut down")
                if self._idle:
                    evaluator = self._idle.pop()
                    self._busy.add(evaluator)
                    return evaluator
                if len(self._busy) + self._starting < self.size:
                    self._starting += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _PoolUnavailable(f"no evaluator became free within {timeout:g} s")
                self._cond.wait(remaining)
        try:
            evaluator = _start_evaluator(self.memory_limit_mb)
        except BaseException as exc:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            if isinstance(exc, _WorkerFailure | OSError):
                reason = getattr(exc, "reason", None) or str(exc)
                raise _PoolUnavailable(f"evaluator could not start: {reason}") from exc
            raise
        with self._cond:
            self._starting -= 1
            self._busy.add(evaluator)
        return evaluator

    def release(self, evaluator: _Evaluator) -> None:
        with self._cond:
            self._busy.discard(evaluator)
            keep = not self._closed and evaluator.alive()
            if keep:
                self._idle.append(evaluator)
            self._cond.notify()
        if not keep:
            evaluator.close(graceful=False)

    @contextmanager
    def evaluator(self) -> Iterator[_Evaluator]:
        evaluator = self.acquire()
        try:
            yield evaluator
        except BaseException:
            # An exception mid-conversation (KeyboardInterrupt...) leaves the pipe in an
            # unknown state: never hand that evaluator out again.
            evaluator.kill()
            raise
        finally:
            self.release(evaluator)

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            evaluators = [*self._idle, *self._busy]
            self._idle.clear()
            self._cond.notify_all()
        for evaluator in evaluators:
            evaluator.close(graceful=True)

    def abandon(self) -> None:
        self._closed = True
        for evaluator in [*self._idle, *self._busy]:
            evaluator.abandon()
        self._idle.clear()
        self._busy.clear()


_pool: EvaluatorPool | None = None
_pool_lock = threading.Lock()
_pool_settings = {"size": DEFAULT_POOL_SIZE, "memory_limit_mb": DEFAULT_MEMORY_LIMIT_MB}


def _get_pool() -> EvaluatorPool:
    global _pool
    pool = _pool
    if pool is not None and pool.owner_pid == os.getpid() and not pool._closed:
        return pool
    with _pool_lock:
        if _pool is not None and _pool.owner_pid != os.getpid():
            _pool.abandon()  # inherited through fork(): those processes belong to the parent
            _pool = None
        if _pool is None or _pool._closed:
            _pool = EvaluatorPool(**_pool_settings)
        return _pool


def configure_pool(
    size: int = DEFAULT_POOL_SIZE, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB
) -> None:
    """Set the pool size and per-evaluator memory budget (restarts the pool if running)."""
    with _pool_lock:
        _pool_settings.update(size=int(size), memory_limit_mb=int(memory_limit_mb))
    shutdown_pool()


def pool_pids() -> list[int]:
    """Process ids of the live evaluators (for tests and the admin page)."""
    pool = _pool
    if pool is None or pool.owner_pid != os.getpid():
        return []
    return pool.pids()


def warm_up() -> list[int]:
    """Start the evaluators now (e.g. at app start) and return their pids."""
    pool = _get_pool()
    pool.warm_up()
    return pool.pids()


def shutdown_pool() -> None:
    """Stop every evaluator of this process. The next call starts a fresh pool."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        if pool.owner_pid == os.getpid():
            pool.shutdown()
        else:
            pool.abandon()


def _after_fork_in_child() -> None:
    global _pool, _pool_lock
    _pool_lock = threading.Lock()
    pool, _pool = _pool, None
    if pool is not None:
        pool._cond = threading.Condition()
        pool.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown_pool)


# --- the API ------------------------------------------------------------------------------


def _errors_from(raw: list[dict]) -> list[PolicyError]:
    return [
        PolicyError(e.get("message", "error"), e.get("line"), e.get("column"), e.get("file"))
        for e in raw
    ]


def compile_policy(source: str) -> None:
    """Check a policy before it is saved or published; raise PolicyCompileError if refused.

    Refuses: a missing package, Rego v0 rule heads, single-value deny/warn, syntax errors
    (with line and column), deny/warn that are not sets of strings on a probe input, a policy
    with neither deny nor warn, and one that fails, loops or crashes on the probe input."""
    if not isinstance(source, str):
        raise PolicyCompileError([PolicyError("the policy source must be text")])
    static = _worker.static_errors(source)
    if static:
        raise PolicyCompileError(_errors_from(static))
    try:
        with _get_pool().evaluator() as evaluator:
            request_id = evaluator.send({"op": "compile", "source": source})
            reply = evaluator.receive(request_id, DEFAULT_COMPILE_TIMEOUT)
    except _WorkerFailure as exc:
        raise PolicyCompileError([PolicyError(f"the policy could not be compiled: {exc.reason}")])
    if not reply.get("ok"):
        raise PolicyCompileError(_errors_from(reply.get("errors") or []))


def evaluate(
    source: str,
    input_doc,
    *,
    name: str = "policy",
    timeout: float = DEFAULT_TIMEOUT,
    coverage: bool = False,
) -> Decision:
    """Evaluate one policy against any JSON document (the gate input is an object, the
    evaluate endpoint takes arrays too). Never raises for policy faults: those are "error"
    decisions."""
    return evaluate_many([(name, source)], input_doc, timeout=timeout, coverage=coverage)[0]


def evaluate_many(
    policies: list[tuple[str, str]],
    input_doc,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    coverage: bool = False,
) -> list[Decision]:
    """Evaluate (name, source) pairs against one input, in one round trip to an evaluator.

    ``timeout`` applies to each policy. If an evaluator dies or times out, that policy is an
    "error" decision and the remaining ones go to a fresh evaluator. ``coverage`` asks OPA
    for the lines each evaluation covered (slower; for test runs)."""
    policies = list(policies)
    results: list[Decision | None] = [None] * len(policies)
    try:
        json.dumps(input_doc, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return [_failure(n, f"the input document is not JSON: {exc}") for n, _ in policies]
    pool = _get_pool()
    if len(policies) > 1 and not coverage:
        at_once = _evaluate_at_once(pool, policies, input_doc, timeout)
        if at_once is not None:
            return at_once
    pending = list(range(len(policies)))
    while pending:
        batch = pending
        pending = []
        started = time.perf_counter()
        try:
            with pool.evaluator() as evaluator:
                request_id = evaluator.send(
                    {
                        "op": "evaluate",
                        "input": input_doc,
                        "coverage": coverage,
                        "policies": [
                            {"name": policies[i][0], "source": policies[i][1]} for i in batch
                        ],
                    }
                )
                for position, index in enumerate(batch):
                    name = policies[index][0]
                    started = time.perf_counter()
                    try:
                        reply = evaluator.receive(request_id, timeout)
                    except _WorkerFailure as exc:
                        elapsed = (time.perf_counter() - started) * 1000.0
                        results[index] = _failure(name, exc.reason, elapsed)
                        pending = batch[position + 1 :]
                        break
                    if reply.get("index") != position:
                        evaluator.kill()
                        results[index] = _failure(name, "evaluator protocol error")
                        pending = batch[position + 1 :]
                        break
                    duration = float(reply.get("duration_ms") or 0.0)
                    if reply.get("error"):
                        results[index] = _failure(name, reply["error"], duration)
                    else:
                        results[index] = _decision(
                            reply.get("deny") or [], reply.get("warn") or [], duration, reply
                        )
        except _WorkerFailure as exc:  # no evaluator could be had, or it died on send
            elapsed = (time.perf_counter() - started) * 1000.0
            first = next((i for i in batch if results[i] is None), None)
            if first is None:
                continue
            results[first] = _failure(policies[first][0], exc.reason, elapsed)
            pending = [i for i in batch if results[i] is None]
            if isinstance(exc, _PoolUnavailable):
                for i in pending:
                    results[i] = _failure(policies[i][0], exc.reason)
                pending = []
    return [r for r in results if r is not None]


def _evaluate_at_once(
    pool: EvaluatorPool, policies: list[tuple[str, str]], input_doc, timeout: float
) -> list[Decision] | None:
    """The fast path of a gate: every policy in one request, every result in one reply line,
    so this process wakes once per decision (on a busy host each wake-up can wait for a
    CPU). None when the evaluator failed or the whole batch took longer than ``timeout``:
    the caller then evaluates the policies with one reply each, which names the policy that
    hangs or crashes (a hang costs at most ``timeout`` more)."""
    try:
        with pool.evaluator() as evaluator:
            request_id = evaluator.send(
                {
                    "op": "evaluate",
                    "input": input_doc,
                    "batch": True,
                    "policies": [{"name": n, "source": src} for n, src in policies],
                }
            )
            reply = evaluator.receive(request_id, timeout)
    except _PoolUnavailable as exc:
        return [_failure(name, exc.reason) for name, _ in policies]
    except _WorkerFailure:
        return None
    replies = reply.get("results")
    if not isinstance(replies, list) or len(replies) != len(policies):
        return None
    decisions = []
    for (name, _source), one in zip(policies, replies, strict=True):
        duration = float(one.get("duration_ms") or 0.0)
        if one.get("error"):
            decisions.append(_failure(name, one["error"], duration))
        else:
            decisions.append(_decision(one.get("deny") or [], one.get("warn") or [], duration))
    return decisions


def _check_expected(label: str, expected, actual: list[str]) -> str | None:
    if expected is None:
        return None
    if isinstance(expected, bool) or not isinstance(expected, int | list):
        return f"expect.{label} must be a list of messages or a count"
    if isinstance(expected, int):
        if len(actual) != expected:
            return f"expected {expected} {label} message(s), got {len(actual)}: {actual}"
        return None
    if sorted(expected) != sorted(actual):
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        parts = []
        if missing:
            parts.append(f"missing {label} {missing}")
        if extra:
            parts.append(f"unexpected {label} {extra}")
        return "; ".join(parts) or f"{label} differs: expected {expected}, got {actual}"
    return None


def run_test_cases(
    source: str, cases: list[dict], *, timeout: float = DEFAULT_TIMEOUT
) -> list[dict]:
    """Run a policy's test cases: ``[{"name", "input", "expect": {"deny", "warn"}}]``.

    ``expect.deny`` / ``expect.warn`` are either the exact messages (order ignored) or a
    count; a key that is left out is not checked. ``expect.error`` (true or a substring)
    expects the evaluation to fail closed. Returns one dict per case:
    ``{"name", "passed", "deny", "warn", "message", "result", "covered", "prints"}``."""
    return run_test_suite(source, cases, timeout=timeout)["results"]


def run_test_suite(source: str, cases: list[dict], *, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """The test cases' results and OPA's coverage of the policy over all of them:
    ``{"results": [...], "coverage": {"covered": [line, ...], "not_covered": [...],
    "percent": float} | None}`` (lines are 1-based; a line is covered when some case
    evaluated it)."""
    compile_error = None
    try:
        compile_policy(source)
    except PolicyCompileError as exc:
        compile_error = str(exc)
    report = []
    covered: set[int] = set()
    not_covered: set[int] = set()
    for number, case in enumerate(cases, start=1):
        name = str(case.get("name") or f"case {number}")
        expect = case.get("expect") or {}
        if compile_error is not None:
            report.append(
                {
                    "name": name,
                    "passed": False,
                    "deny": [],
                    "warn": [],
                    "message": f"policy does not compile: {compile_error}",
                    "result": "error",
                    "covered": [],
                    "prints": [],
                }
            )
            continue
        decision = evaluate(
            source, case.get("input"), name="under test", timeout=timeout, coverage=True
        )
        if decision.coverage:
            covered.update(decision.coverage.get("covered") or [])
            not_covered.update(decision.coverage.get("not_covered") or [])
        problems = []
        wants_error = expect.get("error")
        if decision.result == "error":
            if not wants_error:
                problems.append(decision.error or "evaluation failed")
            elif isinstance(wants_error, str) and wants_error not in (decision.error or ""):
                problems.append(f"expected an error containing {wants_error!r}: {decision.error}")
        elif wants_error:
            problems.append(f"expected an evaluation error, got {decision.result}")
        else:
            for label, actual in (("deny", decision.deny), ("warn", decision.warn)):
                problem = _check_expected(label, expect.get(label), actual)
                if problem:
                    problems.append(problem)
        report.append(
            {
                "name": name,
                "passed": not problems,
                "deny": decision.deny,
                "warn": decision.warn,
                "message": "; ".join(problems) if problems else "ok",
                "result": decision.result,
                "covered": sorted((decision.coverage or {}).get("covered") or []),
                "prints": decision.prints,
            }
        )
    coverage = None
    if covered or not_covered:
        missed = not_covered - covered
        total = len(covered) + len(missed)
        coverage = {
            "covered": sorted(covered),
            "not_covered": sorted(missed),
            "percent": round(100.0 * len(covered) / total, 1) if total else 100.0,
        }
    return {"results": report, "coverage": coverage}


_DENY_HEAD_RE = re.compile(r"^[ \t]*(?:deny|violation)(?:_[A-Za-z0-9_]+)?[ \t]+contains\b", re.M)


def defines_deny(source: str) -> bool:
    """Whether the policy has a deny-like rule (`deny`/`violation`[_x] contains ...), comments
    ignored. A policy that only warns (`warn contains ...`) never denies."""
    return bool(_DENY_HEAD_RE.search(_worker._strip_comments(source)))


def demo_policies() -> list[dict]:
    """The shipped demo policies: ``[{"name", "title", "enforcement", "description", "source",
    "tests"}]``, read from governance/demo_policies (header comments give the metadata)."""
    found = []
    for path in sorted(DEMO_POLICY_DIR.glob("*.rego")):
        source = path.read_text(encoding="utf-8")
        meta = {}
        for line in source.splitlines():
            if not line.startswith("#"):
                break
            key, sep, value = line[1:].strip().partition(":")
            if sep:
                meta[key.strip().lower()] = value.strip()
        tests_path = path.with_name(path.stem + ".tests.json")
        tests = json.loads(tests_path.read_text(encoding="utf-8")) if tests_path.exists() else []
        found.append(
            {
                "name": path.stem,
                "title": meta.get("title", path.stem),
                "enforcement": meta.get("enforcement", "advisory"),
                "description": meta.get("description", ""),
                "source": source,
                "tests": tests,
            }
        )
    return found

"""The bubblewrap sandbox every `run` step executes in (docs/security.md, "Step sandbox").

`launch()` turns a step's script into the command line of `bwrap` plus what the executor
passes to Popen: the environment (built by the executor: exactly the CLEARWAY_* variables,
the step's `env:` and its released secrets) and the workspace.

What the step gets:
- its own PID, IPC, UTS and (where the kernel allows) cgroup namespaces: it sees no worker
  process and no /proc of the worker; with `network: none` a network namespace of its own
  too (only a loopback interface);
- a root file system that is a read-only tmpfs holding read-only binds of the host's system
  directories (/usr, /etc, /opt, /var, the /bin → usr/bin links, ...). Never bound: /root,
  /home, /run (database and Docker sockets), /tmp, /mnt, /media, /proc, /sys, /boot. Hidden
  under empty tmpfs mounts when they lie inside a bound directory: Clearway's code and
  settings (BASE_DIR), its var/ directory and database file, the workspace root, the
  worker's home and CLEARWAY_SANDBOX_HIDE;
- fresh /proc and /dev, a private /tmp and /var/tmp, and its run's workspace — the only
  writable place of the host — at /workspace/run-<id>;
- a user that is not the worker's (see `_step_uid`): when the worker is root, bubblewrap
  runs privileged (no user namespace) and `setpriv` drops the step to uid/gid
  STEP_UID_BASE + run id % STEP_UID_RANGE with no groups, no capabilities (bounding set
  empty) and no_new_privs. When the worker is not root, bubblewrap makes a user namespace
  in which the step is uid 65534 without capabilities; on the host it still is the worker's
  uid, so hiding the worker's files (above) is what protects them — docs/security.md says
  why root workers are the recommended setup.

Why not `--unshare-user --uid N` as root: the user namespace maps the step's uid onto the
uid that created it, so a root worker's step would be uid 0 on the host — owner of every
root file that a read-only bind shows (try `cat /etc/shadow`).

The step dies with its supervisor: `--die-with-parent` (PR_SET_PDEATHSIG) kills the
sandbox's init when the executor's thread or process dies, even by SIGKILL, and with it the
whole PID namespace. A prefork worker's child gets PR_SET_PDEATHSIG too
(`die_with_parent`, from tasks.py), so SIGKILL of the main worker process reaches it.

Resource limits are rlimits set by the step's shell before it runs the script, inherited
by everything it starts (see Limits.shell).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WORKSPACE_MOUNT = "/workspace"
# Top-level directories never shown to a step, whatever the host holds in them.
NEVER_BOUND = frozenset(
    {"proc", "sys", "dev", "tmp", "run", "root", "home", "mnt", "media", "lost+found", "boot"}
)
PR_SET_PDEATHSIG = 1


class SandboxUnavailable(Exception):
    """Bubblewrap cannot run here; the message says how to fix it."""


def enabled() -> bool:
    """Steps run sandboxed unless CLEARWAY_SANDBOX=off was set on purpose."""
    return str(settings.CLEARWAY.get("SANDBOX", "on")).lower() != "off"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one step (rlimits, per process of the step): memory is
    RLIMIT_DATA (heap and private mappings — not address space, which Go and Node reserve
    by gigabytes), processes is RLIMIT_NPROC (counted per uid: see docs/security.md), CPU
    time is RLIMIT_CPU."""

    memory_mb: int
    processes: int
    cpu_seconds: int

    def shell(self, script: str) -> list[str]:
        """The step's shell: it sets the limits (hard and soft: the step, without
        capabilities, cannot raise them again) and then runs the script as `sh -c` would.
        Set in the shell itself, not by a preexec_fn (which makes Python fork instead of
        vfork: 3–5 ms per step at a worker's size) nor by `prlimit` (one more exec: ~1 ms);
        see benchmarks/engine_overhead.py. The script is an argument, never spliced into
        the text; `set --` leaves no positional parameter behind."""
        prelude = (
            f"ulimit -c 0 && ulimit -d {self.memory_mb * 1024} && ulimit -p {self.processes}"
            f" && ulimit -t {self.cpu_seconds} || exit 125\n"
            'eval "set --\n$1"'
        )
        return ["/bin/sh", "-c", prelude, "clearway-step", script]

    def as_dict(self) -> dict:
        return {
            "memory_mb": self.memory_mb,
            "processes": self.processes,
            "cpu_seconds": self.cpu_seconds,
        }


LIMIT_KEYS = ("memory_mb", "processes", "cpu_seconds")


def limits_for(step_config: dict, environment=None) -> Limits:
    """The step's `limits:` over its environment's defaults over the installation's, each
    capped at the maximum (the spec refuses more at save; the cap holds for older specs)."""
    cfg = settings.CLEARWAY
    values = dict(cfg["STEP_LIMITS"])
    if environment is not None:
        values.update({k: v for k, v in (environment.step_limits or {}).items() if v})
    values.update({k: v for k, v in (step_config.get("limits") or {}).items() if v})
    maximum = cfg["STEP_LIMITS_MAX"]
    return Limits(**{key: min(int(values[key]), int(maximum[key])) for key in LIMIT_KEYS})


def network_off(step_config: dict, environment=None) -> bool:
    if step_config.get("network") == "none":
        return True
    return bool(environment is not None and getattr(environment, "network", "") == "none")


@dataclass
class Launch:
    """What the executor hands to Popen."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    workspace: str  # the workspace as the step sees it


def _is_root() -> bool:
    return os.geteuid() == 0


def _step_uid(run_id: int) -> int:
    """A uid of the run's own (root workers): steps of different runs cannot signal each
    other or share a process count. No passwd entry is needed."""
    cfg = settings.CLEARWAY
    return int(cfg["STEP_UID_BASE"]) + run_id % int(cfg["STEP_UID_RANGE"])


def workspace_uid(run_id: int) -> int | None:
    """The owner the worker gives files it puts into a run's workspace (received
    artifacts): the step's uid when a root worker sandboxes, else None (the worker's)."""
    return _step_uid(run_id) if enabled() and _is_root() else None


def _protected_paths() -> list[Path]:
    cfg = settings.CLEARWAY
    paths = [Path(settings.BASE_DIR), Path(settings.VAR_DIR), Path(cfg["WORKSPACE_ROOT"])]
    db_name = str(settings.DATABASES["default"].get("NAME") or "")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and db_name.startswith("/"):
        paths.append(Path(db_name).parent)
    home = os.environ.get("HOME")
    if home:
        paths.append(Path(home))
    for extra in str(cfg.get("SANDBOX_HIDE") or "").split(":"):
        if extra.strip():
            paths.append(Path(extra.strip()))
    out = []
    for path in paths:
        try:
            out.append(path.resolve())
        except OSError:
            continue
    return out


@functools.lru_cache(maxsize=8)
def _root_mounts(protected: tuple[Path, ...]) -> tuple[str, ...]:
    """The read-only view of the host: binds of its top-level directories, links as links,
    then empty tmpfs over the protected paths that lie inside a bound directory."""
    args: list[str] = []
    bound: set[str] = set()
    top_protected = {p.parts[1] for p in protected if len(p.parts) == 2}
    for entry in sorted(os.scandir("/"), key=lambda e: e.name):
        name = entry.name
        if name in NEVER_BOUND or name in top_protected or name.startswith("."):
            continue
        path = f"/{name}"
        if entry.is_symlink():
            args += ["--symlink", os.readlink(path), path]
        elif entry.is_dir():
            args += ["--ro-bind", path, path]
            bound.add(name)
    if "var" in bound:
        args += ["--perms", "1777", "--tmpfs", "/var/tmp"]  # noqa: S108 (the step's own tmpfs)
    for path in sorted(protected, key=lambda p: len(p.parts)):
        if len(path.parts) > 2 and path.parts[1] in bound and path.is_dir():
            args += ["--tmpfs", str(path)]
        elif len(path.parts) > 2 and path.parts[1] in bound and path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    return tuple(args)


def _bwrap() -> str:
    return shutil.which("bwrap") or "bwrap"


def launch(
    script: str,
    *,
    run_id: int,
    workspace: Path,
    env: dict[str, str],
    limits: Limits,
    network: bool = True,
) -> Launch:
    """The sandboxed command of one step (see the module docstring)."""
    inside = f"{WORKSPACE_MOUNT}/{workspace.name}"
    env = {**env, "PATH": SANDBOX_PATH, "HOME": inside, "CLEARWAY_WORKSPACE": inside}
    root = _is_root()
    argv = [_bwrap()]
    if root:
        uid = _step_uid(run_id)
        # The workspace is the step's: its files are written by that uid.
        os.chown(workspace, uid, uid)
        os.chmod(workspace, 0o700)
    else:
        argv += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        argv.append("--unshare-net")
    # Not --as-pid-1 (one process less): bubblewrap's own init must stay PID 1. It keeps
    # PR_SET_PDEATHSIG, which setpriv's uid change would clear on the step's own process,
    # and its death ends the namespace (tests: cancel and timeout kill a background sleep).
    argv += ["--hostname", "clearway-step", "--die-with-parent", "--new-session"]
    argv += list(_root_mounts(tuple(_protected_paths())))
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--tmpfs", "/tmp"]  # noqa: S108 (a private tmpfs)
    argv += ["--perms", "0755", "--dir", WORKSPACE_MOUNT]
    argv += ["--bind", str(workspace), inside, "--chdir", inside, "--remount-ro", "/"]
    argv.append("--")
    if root:
        argv += [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    argv += limits.shell(script)
    return Launch(argv=argv, env=env, cwd="/", workspace=inside)


# --- start-up check ---------------------------------------------------------------------

HOW_TO_FIX = (
    "Install bubblewrap (`sudo apt-get install -y bubblewrap`, or `make sandbox-deps`) and "
    "make sure user namespaces are allowed (`sysctl kernel.unprivileged_userns_clone=1`, "
    "and on Ubuntu `sysctl kernel.apparmor_restrict_unprivileged_userns=0`), or run the "
    "worker as root. To run steps WITHOUT any isolation (development only), set "
    "CLEARWAY_SANDBOX=off on purpose."
)


def check() -> None:
    """Raise SandboxUnavailable unless a step can start in the sandbox here: the same
    command a step gets, running `true` in a scratch workspace."""
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed. {HOW_TO_FIX}")
    if _is_root() and shutil.which("setpriv") is None:
        raise SandboxUnavailable(
            "setpriv (util-linux) is missing: a root worker needs it to drop a step's "
            "privileges. Install it with `sudo apt-get install -y util-linux`."
        )
    scratch = Path(settings.CLEARWAY["WORKSPACE_ROOT"]) / f"check-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        plan = launch(
            "true",
            run_id=0,
            workspace=scratch,
            env={"LANG": "C.UTF-8"},
            limits=limits_for({}),
            network=False,
        )
        try:
            done = subprocess.run(
                plan.argv,
                env=plan.env,
                cwd=plan.cwd,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bubblewrap could not start: {exc}. {HOW_TO_FIX}") from exc
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise SandboxUnavailable(
                f"bubblewrap cannot create a sandbox here ({detail[-1] if detail else 'exit '}"
                f"{'' if detail else done.returncode}). {HOW_TO_FIX}"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def startup_check(component: str) -> str:
    """For workers at start: "" when steps will be sandboxed; the warning to print when the
    sandbox was switched off on purpose; raises SandboxUnavailable otherwise."""
    if not enabled():
        return (
            f"WARNING: CLEARWAY_SANDBOX=off — this {component} runs pipeline steps WITHOUT the "
            "sandbox: a step can read this process's environment, the database file and "
            "every workspace. Every run it executes is marked unsandboxed."
        )
    check()
    return ""


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (prefork worker
    children: SIGKILL of the main process then ends them, and their steps with them)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        logger.warning("PR_SET_PDEATHSIG is not available; steps may outlive a killed worker")

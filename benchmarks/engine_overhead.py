"""Orchestration overhead of the engine compared with a bare Celery round trip.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/clearway_bench_engine \\
    REDIS_URL=redis://127.0.0.1:6379/12 \\
    .venv/bin/python benchmarks/engine_overhead.py [--runs 20] [--concurrent 20] \\
        [--tasks 2000] [--pings 300] [--concurrency 2]

Both variables default to the values above (a database and a Redis db index of its own: the
database is created if missing and migrated, the Redis db is flushed). The script starts a
real `celery -A orchestrator worker -P prefork -c 2` subprocess against them, with DEBUG off
as in production, and measures:

(a) sequential overhead: a 10-stage pipeline whose stages are chained with `needs` and whose
    one step is `run: "true"`, run --runs times one after the other. From the database
    timestamps: the gap between a stage's finished_at and the next stage's started_at (finish
    the step, advance the run, claim the next step: through the broker, or in the same
    transaction when the worker goes on with the run itself), and the gap from the run's
    creation to its first stage's start. Median and p95. Also the gap from a stage's
    finished_at to the timestamp of the next step's first log line (taken just before its
    command is started): everything the engine does between two commands, commit included.
(b) the bare Celery round trip `clearway.ping.apply_async().get()` on the same broker,
    backend and worker, --pings times. Goals: median overhead <= 5x the bare median,
    p95 overhead <= 10x the bare median.
(c) throughput: --concurrent 10-stage runs started at once, stages per second until the last
    one ends (polled every POLL_SECONDS), against --tasks no-op tasks sent at once and
    collected (tasks per second). Goal: stages/s >= 0.2x tasks/s. The gaps and busy times
    under this load are reported with it, and the CPU time per stage and per bare task spent
    by the worker (pool processes and step commands included), PostgreSQL, Redis and this
    process (which triggers the runs and polls for their end) — where the 2 CPUs go.
(d) where the time goes: one run executed in this process as a worker executes it, with the
    time and the number of SQL statements of the trigger, the claim of a dispatched step, the
    command and finish (last log lines + outcome + advance + claim of the next step).
(e) the step sandbox (bubblewrap, orchestrator/sandbox.py): every step runs in it, and its
    command is `echo up`, so the gap from a stage's finished_at to the timestamp of that
    "up" line (read by the executor from the sandboxed shell) is the gap to the next command
    *with the sandbox's start included*. Goals as in (b). And the sandbox's own start cost:
    --sandbox-starts runs of the sandboxed `true` against the same unsandboxed `sh -c true`,
    from this process (the difference of the medians, goal <= 15 ms). A worker that goes on
    with the run starts the next step's sandbox inside the transaction that claims it, held
    at a barrier until that commits (executors.prestart), so only part of that start cost is
    left between two commands: `prestarted_release` is that part, measured from this
    process (barrier released → first output line read).

(f) with --ab-runs N (default 10): 2N runs executed in this process as in (d), alternately
    with and without executors.prestart, and the gap to the sandboxed command of each kind —
    an A/B of the pre-started sandbox under the same load.

Prints one JSON document. Not part of the test run. Results: benchmarks/ENGINE_RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/clearway_bench_engine"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
STAGES = 10
POLL_SECONDS = 0.025  # wait_terminal's interval; (c)'s end is known to within that


def chain_definition(stages: int = STAGES) -> str:
    lines = ["name: bench chain", "stages:"]
    for i in range(stages):
        lines.append(f"  - name: s{i}")
        if i:
            lines.append(f"    needs: [s{i - 1}]")
        lines += ["    steps:", "      - name: noop", "        run: echo up"]
    return "\n".join(lines) + "\n"


def stats(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


def configure_environment(tmp: Path) -> dict[str, str]:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS)
    os.environ["DJANGO_SETTINGS_MODULE"] = "orchestrator.settings"
    os.environ["DEBUG"] = "false"  # as in production: no query log kept in memory
    os.environ.setdefault("SECRET_KEY", "benchmark-only-" + "x" * 40)
    os.environ["CLEARWAY_VAR_DIR"] = str(tmp / "var")
    os.environ["CLEARWAY_WORKSPACE_ROOT"] = str(tmp / "workspaces")
    os.environ["LOG_LEVEL"] = "WARNING"
    return dict(os.environ)


def celery_worker_main() -> None:
    """`engine_overhead.py --celery-worker ARGS`: `celery ARGS` (Django set up first)."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    if os.environ.get("CLEARWAY_BENCH_NO_PRESTART") == "1":
        # --no-prestart: the step sandbox as before executors.prestart (started after the
        # claim committed), to compare within one session.
        from orchestrator import executors

        executors.prestart = lambda step: None
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[2:]]
    celery_main()


def start_worker(env: dict, log_path: Path, concurrency: int) -> subprocess.Popen:
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--celery-worker",
        "-A",
        "orchestrator",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"bench-{os.getpid()}@%h",
    ]
    log = open(log_path, "wb")  # noqa: SIM115 — closed with the process
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{log_path.read_text(errors='replace')}")
        if b"ready." in log_path.read_bytes():
            return proc
        time.sleep(0.1)
    raise SystemExit(f"worker not ready after 60 s:\n{log_path.read_text(errors='replace')}")


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def cpu_seconds(worker_pid: int) -> dict[str, float]:
    """CPU time (user + system) used so far by: the worker and its pool processes (and the
    step commands they waited for), PostgreSQL's processes, Redis, and this process."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {"worker": 0.0, "postgresql": 0.0, "redis": 0.0, "benchmark": 0.0}
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of stat(5), here 11-14
        cpu = sum(int(x) for x in fields[11:15]) / tick
        procs[int(entry)] = (name, int(fields[1]), cpu)
    worker_tree = {worker_pid}
    changed = True
    while changed:
        changed = False
        for pid, (_, ppid, _) in procs.items():
            if ppid in worker_tree and pid not in worker_tree:
                worker_tree.add(pid)
                changed = True
    for pid, (name, _, cpu) in procs.items():
        if pid in worker_tree:
            totals["worker"] += cpu
        elif name.startswith("postgres"):
            totals["postgresql"] += cpu
        elif name.startswith("redis-server"):
            totals["redis"] += cpu
        elif pid == os.getpid():
            totals["benchmark"] += cpu
    return totals


def cpu_per(before: dict, after: dict, units: int) -> dict[str, float]:
    """CPU milliseconds per unit (stage or task) between two cpu_seconds() readings."""
    out = {k: round((after[k] - before[k]) * 1000 / units, 2) for k in before}
    out["total"] = round(sum(out.values()), 2)
    return out


def wait_terminal(run_ids: list[int], timeout: float = 120) -> None:
    from orchestrator.models import RUN_TERMINAL, Run

    deadline = time.monotonic() + timeout
    pending = set(run_ids)
    while pending:
        done = Run.objects.filter(pk__in=pending, status__in=RUN_TERMINAL).values_list(
            "pk", flat=True
        )
        pending -= set(done)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"runs {sorted(pending)} did not finish in {timeout} s")
        # Not more often: each poll costs ~1 ms of CPU here and in PostgreSQL, which the
        # workers measured in (c) would share (every 5 ms, it was ~5 ms of CPU per stage).
        time.sleep(POLL_SECONDS)


def _first_line_at(text: str) -> datetime:
    """The timestamp of a log chunk's first line (executors._stamp: ...T12:34:56.789Z)."""
    return datetime.strptime(text[:23], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


def gaps_of(run_ids: list[int]) -> dict[str, list[float]]:
    """Stage-to-stage gaps, stage-to-next-command gaps, creation-to-first-start gaps, stage
    busy times and run totals, in ms."""
    from orchestrator.models import LogChunk, Run, RunStatus

    keys = ("between", "command", "in_sandbox", "first", "busy", "total")
    out: dict[str, list[float]] = {k: [] for k in keys}
    first_lines: dict[int, datetime] = {}
    up_lines: dict[int, datetime] = {}  # the command's own output: the sandbox has started
    chunks = LogChunk.objects.filter(step__stage__run__in=run_ids).order_by("step_id", "offset")
    for step_id, offset, text in chunks.values_list("step_id", "offset", "text"):
        if offset == 0:
            first_lines[step_id] = _first_line_at(text)
        for line in text.split("\n"):
            if line[25:] == "up" and step_id not in up_lines:  # not "$ echo up"
                up_lines[step_id] = _first_line_at(line)
    for run in Run.objects.filter(pk__in=run_ids).prefetch_related("stages__steps"):
        if run.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"run {run.pk} ended {run.status}: {run.reason}")
        stages = sorted(run.stages.all(), key=lambda s: s.position)
        out["first"].append((stages[0].started_at - run.created_at).total_seconds() * 1000)
        for prev, nxt in zip(stages, stages[1:], strict=False):
            out["between"].append((nxt.started_at - prev.finished_at).total_seconds() * 1000)
            [step] = nxt.steps.all()
            command_at = first_lines[step.pk]
            out["command"].append((command_at - prev.finished_at).total_seconds() * 1000)
            up_at = up_lines[step.pk]
            out["in_sandbox"].append((up_at - prev.finished_at).total_seconds() * 1000)
        out["busy"] += [(s.finished_at - s.started_at).total_seconds() * 1000 for s in stages]
        out["total"].append((run.finished_at - run.created_at).total_seconds() * 1000)
    return out


def bare_round_trips(n: int) -> list[float]:
    from orchestrator.celery import ping

    samples = []
    for _ in range(n):
        began = time.perf_counter()
        assert ping.apply_async().get(timeout=30) == "pong"
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def bare_throughput(n: int) -> float:
    from orchestrator.celery import ping

    began = time.perf_counter()
    results = [ping.apply_async() for _ in range(n)]
    for result in results:
        result.get(timeout=120)
    return n / (time.perf_counter() - began)


def breakdown(pipeline, actor) -> dict:
    """One run executed in this process as a Celery worker executes it (executors.execute_step
    with its chain), phase by phase, with no broker in between: the first step comes through
    a dispatch and a claim, each next one is claimed by the transaction that finishes the
    step before it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from orchestrator import actions, executors

    sent: list[tuple[int, int]] = []
    real_dispatch = actions.dispatch_step
    actions.dispatch_step = lambda step_id, attempt, countdown=0: sent.append((step_id, attempt))
    phases: dict[str, list[tuple[float, int]]] = {
        "trigger": [],
        "claim": [],
        "command": [],
        "finish_and_advance": [],
    }

    def measure(name, fn, *args, **kwargs):
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            value = fn(*args, **kwargs)
            elapsed = (time.perf_counter() - began) * 1000
        phases[name].append((elapsed, len(queries)))
        return value

    try:
        measure("trigger", actions.trigger_run, pipeline, actor=actor, trigger="api")
        while sent:
            step_id, attempt = sent.pop(0)
            step = measure("claim", actions.claim_step, step_id, attempt, worker="bench")
            while step is not None:
                log = executors.LogWriter(step, step.stage.run_id)
                result = measure(
                    "command", executors.run_command, step, step.stage.run, step.stage, log
                )
                step = measure(
                    "finish_and_advance",
                    actions.finish_step_and_claim_next,
                    step.pk,
                    step.attempt,
                    worker="bench",
                    succeeded=result.succeeded,
                    exit_code=result.exit_code,
                    error=result.error,
                    log=log,
                )
    finally:
        actions.dispatch_step = real_dispatch
    out = {}
    for name, samples in phases.items():
        out[name] = {
            "median_ms": round(statistics.median(s[0] for s in samples), 2),
            "queries": round(statistics.median(s[1] for s in samples)),
            "n": len(samples),
        }
    return out


def sandbox_start_cost(n: int) -> dict:
    """The sandbox's own start cost: `true` in the step sandbox vs `sh -c true`, n each,
    interleaved (the same load on both)."""
    from orchestrator import sandbox

    workspace = Path(tempfile.mkdtemp(prefix="clearway-bench-sandbox-"))
    plan = sandbox.launch(
        "true", run_id=1, workspace=workspace, env={}, limits=sandbox.limits_for({})
    )
    boxed: list[float] = []
    bare: list[float] = []
    for _ in range(n):
        began = time.perf_counter()
        subprocess.run(plan.argv, env=plan.env, cwd=plan.cwd, check=True)
        boxed.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "true"], env=plan.env, check=True)
        bare.append((time.perf_counter() - began) * 1000)
    shutil.rmtree(workspace, ignore_errors=True)
    sandboxed, unsandboxed = stats(boxed), stats(bare)
    return {
        "sandboxed_true": sandboxed,
        "unsandboxed_true": unsandboxed,
        "start_cost_median_ms": round(sandboxed["median_ms"] - unsandboxed["median_ms"], 2),
        "start_cost_p95_ms": round(sandboxed["p95_ms"] - unsandboxed["p95_ms"], 2),
    }


def prestart_ab(pipeline, actor, runs: int) -> dict:
    """The gap to the sandboxed command with and without executors.prestart, interleaved
    (run by run, so that the machine's load weighs on both alike): each run executed in this
    process as a worker executes it (executors.execute_step with its chain, no broker)."""
    from orchestrator import actions, executors

    sent: list[tuple[int, int]] = []
    real_dispatch, real_prestart = actions.dispatch_step, executors.prestart
    actions.dispatch_step = lambda step_id, attempt, countdown=0: sent.append((step_id, attempt))
    ids: dict[str, list[int]] = {"prestarted": [], "started_after_commit": []}
    try:
        for i in range(runs * 2):
            mode = "prestarted" if i % 2 == 0 else "started_after_commit"
            executors.prestart = real_prestart if mode == "prestarted" else lambda step: None
            run = actions.trigger_run(pipeline, actor=actor, trigger="api")
            while sent:
                step_id, attempt = sent.pop(0)
                executors.execute_step(step_id, attempt, chain=50)
            ids[mode].append(run.pk)
    finally:
        actions.dispatch_step, executors.prestart = real_dispatch, real_prestart
    return {mode: stats(gaps_of(run_ids)["in_sandbox"]) for mode, run_ids in ids.items()}


def sandbox_release_cost(n: int, hold_ms: float = 20.0) -> dict:
    """What is left of the sandbox's start on the critical path when the step is pre-started
    (executors.prestart: started inside the transaction that claims it, held at its barrier
    while that commits): from writing the barrier's line to reading the command's first
    output line (`echo up`), n times. Each sandbox is given hold_ms to reach its barrier
    first, as the commit and its follow-up give it in the worker."""
    from orchestrator import sandbox

    workspace = Path(tempfile.mkdtemp(prefix="clearway-bench-sandbox-"))
    plan = sandbox.launch(
        "echo up",
        run_id=1,
        workspace=workspace,
        env={},
        limits=sandbox.limits_for({}),
        barrier=True,
    )
    samples: list[float] = []
    for _ in range(n):
        proc = subprocess.Popen(
            plan.argv,
            env=plan.env,
            cwd=plan.cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        time.sleep(hold_ms / 1000)
        began = time.perf_counter()
        os.write(proc.stdin.fileno(), sandbox.BARRIER_GO)
        line = proc.stdout.readline()
        samples.append((time.perf_counter() - began) * 1000)
        proc.stdin.close()
        proc.stdout.close()
        if proc.wait() != 0 or line != b"up\n":
            raise SystemExit(f"pre-started sandbox: exit {proc.returncode}, output {line!r}")
    shutil.rmtree(workspace, ignore_errors=True)
    return stats(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sandbox-starts", type=int, default=200)
    parser.add_argument("--ab-runs", type=int, default=10)
    parser.add_argument(
        "--no-prestart",
        action="store_true",
        help="start each step's sandbox after its claim commits (as before executors.prestart)",
    )
    args = parser.parse_args()
    if args.no_prestart:
        os.environ["CLEARWAY_BENCH_NO_PRESTART"] = "1"

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="clearway-bench-engine-"))
    env = configure_environment(tmp)
    sys.path.insert(0, str(ROOT))
    harness.ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()

    from orchestrator import actions
    from orchestrator.models import Team

    group, _ = Group.objects.get_or_create(name="team-bench")
    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench", "group": group})
    user, _ = get_user_model().objects.get_or_create(username="bench")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    pipeline = actions.create_pipeline(
        actor=user, slug=f"chain-{stamp}", definition=chain_definition(), team=team
    )

    worker = start_worker(env, tmp / "worker.log", args.concurrency)
    try:
        # Warm up: worker processes open their database connections, import everything.
        warm = [actions.trigger_run(pipeline, actor=user, trigger="api").pk for _ in range(2)]
        wait_terminal(warm)
        bare_round_trips(30)

        bare = stats(bare_round_trips(args.pings))

        seq_ids = []
        for _ in range(args.runs):
            run = actions.trigger_run(pipeline, actor=user, trigger="api")
            wait_terminal([run.pk])
            seq_ids.append(run.pk)
        gaps = gaps_of(seq_ids)

        cpu_before = cpu_seconds(worker.pid)
        began = time.perf_counter()
        conc_ids = [
            actions.trigger_run(pipeline, actor=user, trigger="api").pk
            for _ in range(args.concurrent)
        ]
        wait_terminal(conc_ids, timeout=600)
        stages_per_s = args.concurrent * STAGES / (time.perf_counter() - began)
        cpu_stage = cpu_per(cpu_before, cpu_seconds(worker.pid), args.concurrent * STAGES)
        conc = gaps_of(conc_ids)  # and all succeeded

        cpu_before = cpu_seconds(worker.pid)
        tasks_per_s = bare_throughput(args.tasks)
        cpu_task = cpu_per(cpu_before, cpu_seconds(worker.pid), args.tasks)
    finally:
        stop_worker(worker)

    phases = breakdown(pipeline, user)
    ab = prestart_ab(pipeline, user, args.ab_runs) if args.ab_runs else {}
    sandbox_cost = sandbox_start_cost(args.sandbox_starts)
    sandbox_cost["prestarted_release"] = sandbox_release_cost(args.sandbox_starts // 2)

    overhead = stats(gaps["between"])
    to_command = stats(gaps["command"])
    in_sandbox = stats(gaps["in_sandbox"])
    unit = bare["median_ms"]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "worker": f"celery prefork -c {args.concurrency}, DEBUG off",
        "bare_round_trip": bare,
        "stage_to_stage_gap": overhead,
        "stage_to_next_command_gap": to_command,
        "stage_to_command_in_sandbox_gap": in_sandbox,
        "sandbox_start": sandbox_cost,
        "creation_to_first_stage": stats(gaps["first"]),
        "stage_busy_time": stats(gaps["busy"]),
        "run_total": stats(gaps["total"]),
        "ratios": {
            "gap_median_over_bare_median": round(overhead["median_ms"] / unit, 2),
            "gap_p95_over_bare_median": round(overhead["p95_ms"] / unit, 2),
            "gap_p95_over_bare_p95": round(overhead["p95_ms"] / bare["p95_ms"], 2),
            "command_gap_median_over_bare_median": round(to_command["median_ms"] / unit, 2),
            "command_gap_p95_over_bare_median": round(to_command["p95_ms"] / unit, 2),
            "sandboxed_command_gap_median_over_bare_median": round(
                in_sandbox["median_ms"] / unit, 2
            ),
            "sandboxed_command_gap_p95_over_bare_median": round(in_sandbox["p95_ms"] / unit, 2),
        },
        "throughput": {
            "stages_per_s": round(stages_per_s, 1),
            "bare_tasks_per_s": round(tasks_per_s, 1),
            "ratio": round(stages_per_s / tasks_per_s, 3),
            "cpu_ms_per_stage": cpu_stage,
            "cpu_ms_per_bare_task": cpu_task,
            "stage_to_stage_gap": stats(conc["between"]),
            "stage_to_next_command_gap": stats(conc["command"]),
            "stage_to_command_in_sandbox_gap": stats(conc["in_sandbox"]),
            "stage_busy_time": stats(conc["busy"]),
            "creation_to_first_stage": stats(conc["first"]),
        },
        "goals": {
            "median <= 5x bare": overhead["median_ms"] <= 5 * unit,
            "p95 <= 10x bare": overhead["p95_ms"] <= 10 * unit,
            "command gap: median <= 5x bare": to_command["median_ms"] <= 5 * unit,
            "command gap: p95 <= 10x bare": to_command["p95_ms"] <= 10 * unit,
            "throughput >= 0.2x bare": stages_per_s >= 0.2 * tasks_per_s,
            "sandboxed command gap: median <= 5x bare": in_sandbox["median_ms"] <= 5 * unit,
            "sandboxed command gap: p95 <= 10x bare": in_sandbox["p95_ms"] <= 10 * unit,
            "sandbox start cost: median <= 15 ms": sandbox_cost["start_cost_median_ms"] <= 15,
        },
        "in_process_breakdown": phases,
        "in_process_prestart_ab": {
            mode: {
                **v,
                "median_over_bare_median": round(v["median_ms"] / unit, 2),
                "p95_over_bare_median": round(v["p95_ms"] / unit, 2),
            }
            for mode, v in ab.items()
        },
        "params": vars(args),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--celery-worker"]:
        celery_worker_main()
    else:
        main()

"""Live fan-out: Clearway's event path against a bare Channels project, on the same machine.

    .venv/bin/python benchmarks/live_fanout.py [--clients 200] [--rate 5] [--duration 30]
        [--rounds 1] [--schedule sequential|paired] [--bare-lean] [--burst-clients 100]
        [--burst-lines 1000]
        [--database-url postgres://postgres@127.0.0.1:5432/clearway_bench_live]
        [--redis-url redis://127.0.0.1:6379/11] [--no-write]

Needs PostgreSQL and Redis on 127.0.0.1. The database is created if missing and migrated;
the Redis db index is flushed (it is this benchmark's own). Everything runs on loopback with
free ports; every process this script starts is stopped by its pid when it ends (bounded:
each phase has a deadline). Takes about 1.5 min per round plus a minute. Not part of the test
run. On a shared machine run it as `nice -n -10 .venv/bin/python ...` (root) so that other
work disturbs it less; the results record the niceness and the load average.

Two servers run side by side for the whole benchmark, each `uvicorn ... --ws
websockets-sansio` on a free port: Clearway (`orchestrator.asgi:application`, DEBUG off,
REDIS_URL → channels_redis, as in production) and the bare Channels project of
benchmarks/bare_channels (a consumer that joins one group and forwards; the same channel
layer configuration). Each round runs a Clearway phase and a bare phase: with --schedule
sequential (the default) one after the other, alternating which goes first, so they do not
compete for the CPUs; with --schedule paired both at the same moment, so both see the same
background load (on a shared, busy machine the only fair comparison). The groups are emptied
before every phase.

1. Clearway status events. --clients websocket clients in one asyncio process, each with its
   own Django session cookie (created here for a developer of the pipeline's team) and an
   Origin header, connect to /ws/events/, send {"subscribe": "run", "id": N} and wait for
   "subscribed". A publisher process (the "worker") drives a real Run row through its life:
   run running, then per stage: stage queued, step queued, stage running, step running, step
   succeeded, stage succeeded; then run succeeded — each transition in its own transaction
   with the run row locked, announced by orchestrator.events.publish_run/stage/step, i.e.
   sent after commit by the per-process sender loop to channels-redis. --rate transitions per
   second for about --duration seconds. The publisher records, per seq, the wall-clock time
   the transaction started (t_start), the time the event was handed to the sender at commit
   (t_commit) and the time its group_send returned (t_sent) — by wrapping, in the publisher
   process only, orchestrator.events._emit and RedisChannelLayer.group_send; the clients record their
   receipt time per seq. Both on this machine, so time.time() is comparable. Latency =
   receipt - t_start (the whole path: the transaction, commit, sender loop, Redis, server
   fan-out, websocket). Delivery: every client's last seq and run status equal the run's
   event_seq and status in the database, and no seq between the one "subscribed" reported
   and the final one is missing.
2. Bare Channels: the same clients (no cookie needed), the same number of events at the same
   rate, published by benchmarks/bare_channels/publisher.py with group_send from its own
   process. Latency = receipt - the time just before group_send. The bare consumer stamps
   the time it forwards (t_server), which splits its latency into server and client side.
   With --bare-lean it skips Channels' per-message close_old_connections() thread hop, as
   Clearway's consumer does for relayed events (the lower bound for a Channels relay).
3. Clearway log burst (once, after the rounds). --burst-clients clients subscribe to another
   run; the publisher writes --burst-lines lines through orchestrator.executors.LogWriter
   (which batches >= 50 lines or 200 ms into one `log` event) as fast as it can; every client
   must end with every line, in order, at the right offsets.

Also counted per phase: group members left in Redis after every client closed (a consumer
that died or failed to leave its groups), and in the server logs: ASGI exceptions, Redis read
timeouts, "Too many connections" (redis-py's pool limit), "over capacity".

Goals: Clearway status p95 <= 1.5 x the bare p95 (pooled over the rounds); 100 % delivered;
no "over capacity" in the logs (server and publishers); every burst client has all lines.
Prints one JSON document and appends the figures, with the date, to
benchmarks/LIVE_RESULTS.md (unless --no-write).

The script also runs its own roles (`--role clients|publisher|burst`); those are internal.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
PY = sys.executable
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/clearway_bench_live"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
RESULTS = HERE / "LIVE_RESULTS.md"
PIPELINE_SLUG = "live-fanout"
TERMINAL = {"succeeded", "failed", "canceled", "blocked"}


# --- helpers ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 2)


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50),
        "p95_ms": pct(values, 95),
        "p99_ms": pct(values, 99),
        "max_ms": round(max(values), 2) if values else None,
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return float("nan")


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


class Proc:
    """A child process in its own process group, its output in a file; stopped by its pid."""

    def __init__(self, name: str, args: list[str], env: dict, logdir: Path, cwd: Path = ROOT):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.err_path = logdir / f"{name}.err"
        self.out = open(self.log_path, "wb")  # noqa: SIM115
        self.err = open(self.err_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self.out, stderr=self.err, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        self.out.close()
        self.err.close()

    def text(self) -> str:
        for f in (self.out, self.err):
            if not f.closed:
                f.flush()
        return self.log_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")


def over_capacity_lines(*procs: Proc) -> int:
    return sum(p.text().lower().count("over capacity") for p in procs)


# --- role: clients ------------------------------------------------------------------------


async def clients_main(opts) -> None:
    from websockets.asyncio.client import connect

    sessions = json.loads(Path(opts.sessions_file).read_text())[: opts.n]
    stop_file = Path(opts.stop_file)
    deadline = time.monotonic() + opts.deadline
    states = [
        {
            "sub_seq": None,
            "receipts": [],
            "last_seq": 0,
            "last_status": None,
            "errors": [],
            "lines": {},
            "done": False,
        }
        for _ in range(opts.n)
    ]
    sem = asyncio.Semaphore(25)

    async def open_one(i: int):
        headers = {"Cookie": f"sessionid={sessions[i]}"} if opts.mode == "clearway" else {}
        async with sem:
            ws = await connect(
                opts.url,
                origin=opts.origin,
                additional_headers=headers,
                open_timeout=60,
                ping_interval=None,
                max_size=None,
            )
            if opts.mode == "clearway":
                hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert hello.get("type") == "hello", hello
                await ws.send(json.dumps({"subscribe": "run", "id": opts.run}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if msg.get("type") == "subscribed":
                        states[i]["sub_seq"] = msg["seq"]
                        states[i]["last_seq"] = msg["seq"]
                        break
                    if msg.get("type") == "error":
                        raise RuntimeError(f"subscribe refused: {msg}")
            else:
                states[i]["sub_seq"] = 0
            return ws

    async def read(i: int, ws) -> None:
        st = states[i]
        try:
            async for raw in ws:
                now = time.time()
                msg = json.loads(raw)
                seq = msg.get("seq")
                if seq is None or msg.get("run") != opts.run:
                    continue
                st["receipts"].append(
                    (seq, now, msg["t_server"]) if "t_server" in msg else (seq, now)
                )
                if seq > st["last_seq"]:
                    st["last_seq"] = seq
                kind = msg.get("type")
                if kind == "run.updated":
                    st["last_status"] = msg["data"]["status"]
                elif kind == "log":
                    data = msg["data"]
                    for k, line in enumerate(data["lines"]):
                        st["lines"][data["offset"] + k] = line
                if opts.mode == "clearway" and st["last_status"] in TERMINAL:
                    break
                if opts.mode == "bare" and st["last_seq"] >= opts.final_seq:
                    break
        except Exception as exc:  # noqa: BLE001 - recorded, judged by the caller
            st["errors"].append(repr(exc))
        st["done"] = True

    t0 = time.time()
    conns = await asyncio.gather(*[open_one(i) for i in range(opts.n)])
    connect_s = time.time() - t0
    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(conns)]
    await asyncio.sleep(0.5)
    Path(opts.ready_file).write_text(json.dumps({"connect_s": connect_s}))
    while not all(r.done() for r in readers):
        if stop_file.exists() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    for r in readers:
        r.cancel()
    await asyncio.gather(*[ws.close() for ws in conns], return_exceptions=True)

    out = []
    for st in states:
        lines = st.pop("lines")
        expected = opts.burst_lines
        ok = None
        if expected:
            ok = len(lines) == expected and all(
                k in lines and lines[k].endswith(f"burst line {k:05d}") for k in range(expected)
            )
        out.append({**st, "log_lines": len(lines), "log_ok": ok})
    Path(opts.out).write_text(
        json.dumps(
            {
                "connect_s": round(connect_s, 2),
                "cpu_s": round(time.process_time(), 2),
                "clients": out,
            }
        )
    )


# --- role: publisher (status transitions) and burst (LogWriter) ---------------------------


def _django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    import django

    django.setup()


def _instrument() -> dict:
    """Record, per seq, when the event was emitted (inside the transaction), handed to the
    sender (on commit) and sent (group_send returned). Only wraps; changes nothing."""
    from channels_redis.core import RedisChannelLayer
    from django.db import transaction

    from orchestrator import events

    times: dict[int, dict] = {}
    original_emit = events._emit
    original_group_send = RedisChannelLayer.group_send

    def emit(groups, event):
        rec = times.setdefault(event["seq"], {})
        rec["t_start"] = _instrument.t_start
        rec["t_emit"] = time.time()
        rec["type"] = event["type"]
        original_emit(groups, event)
        transaction.on_commit(lambda: rec.__setitem__("t_commit", time.time()))

    async def group_send(self, group, message):
        await original_group_send(self, group, message)
        for event in message.get("events") or [message.get("event") or {}]:
            if "seq" in event and event["seq"] in times:
                times[event["seq"]]["t_sent"] = time.time()

    events._emit = emit
    RedisChannelLayer.group_send = group_send
    return times


_instrument.t_start = 0.0


def _transitions(run) -> list:
    """The life of a run, one transaction per status change, as the engine and the executor
    announce it."""
    from django.utils import timezone

    from orchestrator import lifecycle
    from orchestrator.models import RunStatus, StageStatus, StepRun, StepStatus

    def run_to(status):
        def apply(locked):
            lifecycle.run(locked, status, now=timezone.now(), action=None)

        return apply

    def stage_to(stage, status):
        def apply(locked):
            stage.refresh_from_db()
            lifecycle.stage(stage, status, run=locked, now=timezone.now())

        return apply

    def step_to(step, status):
        def apply(locked):
            step.refresh_from_db()
            step.worker, step.exit_code = "bench@localhost", 0
            lifecycle.step(step, status, run=locked, now=timezone.now(), fields=["worker"])

        return apply

    out = [run_to(RunStatus.RUNNING)]
    for stage in run.stages.order_by("position"):
        step = StepRun.objects.filter(stage=stage).order_by("position").first()
        out += [
            stage_to(stage, StageStatus.QUEUED),
            step_to(step, StepStatus.QUEUED),
            stage_to(stage, StageStatus.RUNNING),
            step_to(step, StepStatus.RUNNING),
            step_to(step, StepStatus.SUCCEEDED),
            stage_to(stage, StageStatus.SUCCEEDED),
        ]
    out.append(run_to(RunStatus.SUCCEEDED))
    return out


def publisher_main(opts) -> None:
    _django()
    from django.db import transaction

    from orchestrator import events
    from orchestrator.models import Run

    times = _instrument()
    run = Run.objects.get(pk=opts.run)
    steps = _transitions(run)
    start = time.time()
    for i, apply in enumerate(steps):
        delay = start + i / opts.rate - time.time()
        if delay > 0:
            time.sleep(delay)
        _instrument.t_start = time.time()
        with transaction.atomic():
            locked = Run.objects.select_for_update().get(pk=run.pk)
            apply(locked)
    elapsed = time.time() - start
    events.sender.flush(timeout=30)
    time.sleep(0.2)
    Path(opts.out).write_text(
        json.dumps({"events": len(steps), "elapsed_s": round(elapsed, 3), "times": times})
    )


def burst_main(opts) -> None:
    _django()
    from django.db import transaction
    from django.utils import timezone

    from orchestrator import events, lifecycle
    from orchestrator.executors import LogWriter
    from orchestrator.models import Run, RunStatus, StageStatus, StepRun, StepStatus

    times = _instrument()
    run = Run.objects.get(pk=opts.run)
    stage = run.stages.get()
    step = StepRun.objects.get(stage=stage)

    _instrument.t_start = time.time()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        now = timezone.now()
        lifecycle.run(locked, RunStatus.RUNNING, now=now, action=None)
        for status in (StageStatus.QUEUED, StageStatus.RUNNING):
            lifecycle.stage(stage, status, run=locked, now=now)
        for status in (StepStatus.QUEUED, StepStatus.RUNNING):
            lifecycle.step(step, status, run=locked, now=now)

    writer = LogWriter(step, run.pk)
    t0 = time.time()
    for k in range(opts.lines):
        _instrument.t_start = time.time()  # the add() that fills a batch flushes it
        writer.add(f"compiling module {k % 37} ... ok   burst line {k:05d}")
    _instrument.t_start = time.time()
    writer.flush()
    burst_s = time.time() - t0

    _instrument.t_start = time.time()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        step.refresh_from_db()
        step.exit_code, now = 0, timezone.now()
        lifecycle.step(step, StepStatus.SUCCEEDED, run=locked, now=now, fields=["exit_code"])
        lifecycle.stage(stage, StageStatus.SUCCEEDED, run=locked, now=now)
        lifecycle.run(locked, RunStatus.SUCCEEDED, now=now)
    events.sender.flush(timeout=30)
    time.sleep(0.2)
    log_events = sum(1 for t in times.values() if t["type"] == "log")
    Path(opts.out).write_text(
        json.dumps(
            {
                "lines": opts.lines,
                "log_events": log_events,
                "burst_s": round(burst_s, 3),
                "times": times,
            }
        )
    )


# --- the orchestrating main ---------------------------------------------------------------


def chain_definition(stages: int) -> str:
    lines = ["name: Live fan-out bench", "stages:"]
    for i in range(stages):
        lines.append(f"  - name: s{i:02d}")
        if i:
            lines.append(f"    needs: [s{i - 1:02d}]")
        lines += ["    steps:", "      - name: work", '        run: "true"']
    return "\n".join(lines) + "\n"


def setup_fixtures(stages: int, sessions: int, rounds: int) -> dict:
    """A developer of team-bench, the pipelines, fresh runs (one per round, one for the
    burst), sessions."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction

    from orchestrator import actions
    from orchestrator.models import Pipeline, Run, StageRun, StepRun, Team

    group, _ = Group.objects.get_or_create(name="team-bench")
    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench", "group": group})
    user, _ = User.objects.get_or_create(username="bench-dev", defaults={"email": "b@x.test"})
    user.groups.add(group, Group.objects.get(name="developer"))
    pipeline = Pipeline.objects.filter(slug=PIPELINE_SLUG).first()
    definition = chain_definition(stages)
    if pipeline is None:
        pipeline = actions.create_pipeline(
            actor=user, slug=PIPELINE_SLUG, definition=definition, team=team
        )
    elif pipeline.current_version.definition != definition:
        actions.update_pipeline(pipeline, actor=user, definition=definition)
        pipeline.refresh_from_db()
    burst_pipeline = Pipeline.objects.filter(slug=PIPELINE_SLUG + "-burst").first()
    if burst_pipeline is None:
        burst_pipeline = actions.create_pipeline(
            actor=user,
            slug=PIPELINE_SLUG + "-burst",
            definition="name: Live fan-out burst\nstages:\n  - name: build\n    steps:\n"
            '      - name: compile\n        run: "true"\n',
            team=team,
        )

    def new_run(p: Pipeline) -> Run:
        with transaction.atomic():
            locked = Pipeline.objects.select_for_update().get(pk=p.pk)
            number = locked.next_run_number
            locked.next_run_number = number + 1
            locked.save(update_fields=["next_run_number"])
            version = locked.current_version
            run = Run.objects.create(pipeline=p, version=version, number=number, triggered_by=user)
            for pos, st in enumerate(version.spec["stages"]):
                stage = StageRun.objects.create(
                    run=run, name=st["name"], position=pos, needs=st.get("needs") or []
                )
                for spos, sp in enumerate(st["steps"]):
                    StepRun.objects.create(
                        stage=stage, name=sp["name"], position=spos, kind=sp["type"], config=sp
                    )
        return run

    status_runs = [new_run(pipeline).pk for _ in range(rounds)]
    burst_run = new_run(burst_pipeline)
    keys = []
    for _ in range(sessions):
        s = SessionStore()
        s[SESSION_KEY] = str(user.pk)
        s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        s[HASH_SESSION_KEY] = user.get_session_auth_hash()
        s.create()
        keys.append(s.session_key)
    return {
        "status_runs": status_runs,
        "burst_run": burst_run.pk,
        "sessions": keys,
        "pipeline": pipeline.pk,
        "burst_pipeline": burst_pipeline.pk,
    }


def start_server(kind: str, env: dict, logdir: Path) -> tuple[Proc, int]:
    port = harness.free_port()
    app = (
        "orchestrator.asgi:application" if kind == "clearway" else "bare_channels.asgi:application"
    )
    args = harness.uvicorn_command(port, app, "--ws", "websockets-sansio")
    if kind == "bare":
        args += ["--app-dir", str(HERE)]
    proc = Proc(f"server-{kind}", args, env, logdir)
    harness.wait_listening(port, proc.popen, f"{kind} server", proc.text)
    return proc, port


def group_sizes(redis_url: str, groups: list[str]) -> int:
    import redis

    r = redis.Redis.from_url(redis_url)
    return sum(r.zcard(f"asgi:group:{g}") for g in groups)


def server_errors(text: str) -> dict:
    return {
        "asgi_exceptions": text.count("Exception in ASGI application"),
        "redis_timeouts": text.count("TimeoutError: Timeout reading"),
        "too_many_connections": text.count("MaxConnectionsError"),
        "over_capacity": text.lower().count("over capacity"),
    }


class Phase:
    """One server's clients and publisher; several phases can run at the same moment."""

    def __init__(
        self,
        *,
        name: str,
        mode: str,
        port: int,
        n: int,
        run_id: int,
        sessions_file: Path,
        publisher_args: list[str],
        env: dict,
        logdir: Path,
        deadline: float,
        groups: list[str],
        redis_url: str,
        server: Proc,
        final_seq: int = 0,
        burst_lines: int = 0,
    ):
        self.name, self.env, self.logdir, self.deadline = name, env, logdir, deadline
        self.server, self.groups, self.redis_url = server, groups, redis_url
        self.publisher_args = publisher_args
        self.ready = logdir / f"{name}.ready"
        self.stop_file = logdir / f"{name}.stop"
        self.out = logdir / f"{name}.clients.json"
        self.pub_out = logdir / f"{name}.publisher.json"
        self.clients_args = [
            PY, __file__, "--role", "clients", "--mode", mode, "--n", str(n),
            "--url", f"ws://127.0.0.1:{port}/ws/events/", "--origin", f"http://127.0.0.1:{port}",
            "--run", str(run_id), "--sessions-file", str(sessions_file),
            "--ready-file", str(self.ready), "--stop-file", str(self.stop_file),
            "--out", str(self.out), "--deadline", str(deadline), "--final-seq", str(final_seq),
            "--burst-lines", str(burst_lines),
        ]  # fmt: skip
        self.clients = self.publisher = None

    def start_clients(self) -> None:
        import redis

        self.log_mark = len(self.server.text())
        self.members_before = group_sizes(self.redis_url, self.groups)
        # Start every phase from empty groups: members a previous phase left behind (see
        # "stale group members") would otherwise make this phase's fan-out bigger.
        redis.Redis.from_url(self.redis_url).delete(*[f"asgi:group:{g}" for g in self.groups])
        self.load_before = os.getloadavg()[0]
        self.clients = Proc(f"{self.name}-clients", self.clients_args, self.env, self.logdir)

    def wait_ready(self, limit: float) -> None:
        while not self.ready.exists():
            if self.clients.popen.poll() is not None or time.monotonic() > limit:
                raise RuntimeError(
                    f"{self.name}: clients did not get ready:\n{self.clients.text()[-3000:]}"
                )
            time.sleep(0.05)
        self.members_connected = group_sizes(self.redis_url, self.groups)

    def start_publisher(self) -> None:
        self.cpu0 = cpu_seconds(self.server.pid)
        args = [*self.publisher_args, "--out", str(self.pub_out)]
        self.publisher = Proc(f"{self.name}-publisher", args, self.env, self.logdir)

    def wait_publisher(self, limit: float) -> None:
        if self.publisher.wait(max(1.0, limit - time.monotonic())) is None:
            raise RuntimeError(f"{self.name}: publisher overran {self.deadline} s")
        if self.publisher.popen.returncode != 0:
            raise RuntimeError(f"{self.name}: publisher failed:\n{self.publisher.text()[-3000:]}")
        self.load_after = os.getloadavg()[0]

    def wait_clients(self) -> None:
        # Clients stop by themselves on the final event; give stragglers 20 s, then stop.
        if self.clients.wait(20) is None:
            self.stop_file.write_text("stop")
            self.clients.wait(30)
        self.server_cpu = cpu_seconds(self.server.pid) - self.cpu0
        if self.clients.popen.returncode != 0:
            raise RuntimeError(f"{self.name}: clients failed:\n{self.clients.text()[-3000:]}")

    def result(self) -> dict:
        return {
            "clients": json.loads(self.out.read_text()),
            "publisher": json.loads(self.pub_out.read_text()),
            "server_cpu_s": round(self.server_cpu, 2),
            "server_rss_mib": rss_mib(self.server.pid),
            "over_capacity_publisher": over_capacity_lines(self.publisher),
            "server_errors": server_errors(self.server.text()[self.log_mark :]),
            "group_members": {
                "left_from_earlier_phases": self.members_before,
                "connected": self.members_connected,
                "after_all_closed": group_sizes(self.redis_url, self.groups),
            },
            "loadavg_1min": [round(self.load_before, 2), round(self.load_after, 2)],
        }

    def stop(self) -> None:
        for proc in (self.clients, self.publisher):
            if proc is not None:
                proc.stop()


def run_phases(*phases: Phase) -> list[dict]:
    """Run the phases at the same moment (one phase: on its own): clients connect, then
    every publisher starts, then everything is collected."""
    try:
        for ph in phases:
            ph.start_clients()
        limit = time.monotonic() + 120
        for ph in phases:
            ph.wait_ready(limit)
        for ph in phases:
            ph.start_publisher()
        limit = time.monotonic() + max(ph.deadline for ph in phases)
        for ph in phases:
            ph.wait_publisher(limit)
        for ph in phases:
            ph.wait_clients()
        time.sleep(2)  # let the servers process the closes (group_discard)
        return [ph.result() for ph in phases]
    finally:
        for ph in phases:
            ph.stop()


def judge(items: list[tuple[dict, int, str | None]]) -> dict:
    """Latency and delivery over one or more phases: (phase, final seq, final run status).
    Latency is receipt - t_start (the publisher's time for that seq)."""
    lat, lat_commit, to_server = [], [], []
    per_type: dict[str, list[float]] = {}
    hop_vals: dict[str, list[float]] = {}
    n_clients = missing_total = wrong_final = errors = expected_total = events = 0
    for phase, final_seq, final_status in items:
        times = {int(k): v for k, v in phase["publisher"]["times"].items()}
        events += len(times)
        for c in phase["clients"]["clients"]:
            n_clients += 1
            seen = {r[0] for r in c["receipts"]}
            expected = set(range((c["sub_seq"] or 0) + 1, final_seq + 1))
            expected_total += len(expected)
            missing_total += len(expected - seen)
            if c["last_seq"] != final_seq or (final_status and c["last_status"] != final_status):
                wrong_final += 1
            errors += len(c["errors"])
            for seq, t, *server in c["receipts"]:
                rec = times.get(seq)
                if rec is None or "t_start" not in rec:
                    continue
                ms = (t - rec["t_start"]) * 1000
                if server:  # the bare consumer stamps when it forwards
                    to_server.append((server[0] - rec["t_start"]) * 1000)
                lat.append(ms)
                per_type.setdefault(rec.get("type", "event"), []).append(ms)
                if "t_commit" in rec:
                    lat_commit.append((t - rec["t_commit"]) * 1000)
        for a, b in (("t_start", "t_commit"), ("t_commit", "t_sent"), ("t_start", "t_sent")):
            vals = [(r[b] - r[a]) * 1000 for r in times.values() if a in r and b in r]
            if vals:
                hop_vals.setdefault(f"{a}->{b}", []).extend(vals)

    def total(key):
        return {k: sum(p[key][k] for p, _, _ in items) for k in items[0][0][key]}

    return {
        "phases": len(items),
        "clients": n_clients // len(items),
        "events_published": events,
        "latency": summary(lat),
        "latency_from_commit": summary(lat_commit) if lat_commit else None,
        "latency_by_type": {k: summary(v) for k, v in sorted(per_type.items())},
        "publish_to_server_forward": summary(to_server) if to_server else None,
        "publisher_hops": {k: summary(v) for k, v in hop_vals.items()},
        "delivered": expected_total - missing_total,
        "expected": expected_total,
        "delivered_pct": round(100 * (expected_total - missing_total) / expected_total, 3)
        if expected_total
        else None,
        "missing_seqs": missing_total,
        "clients_final_state_wrong": wrong_final,
        "client_errors": errors,
        "connect_all_s": [p["clients"]["connect_s"] for p, _, _ in items],
        "server_cpu_s": [p["server_cpu_s"] for p, _, _ in items],
        "server_cpu_ms_per_message": round(
            1000 * sum(p["server_cpu_s"] for p, _, _ in items) / max(1, len(lat)), 3
        ),
        "server_rss_mib": [p["server_rss_mib"] for p, _, _ in items],
        "clients_cpu_s": [p["clients"]["cpu_s"] for p, _, _ in items],
        "loadavg_1min": [p["loadavg_1min"] for p, _, _ in items],
        "group_members": [p["group_members"] for p, _, _ in items],
        "stale_group_members": sum(p["group_members"]["after_all_closed"] for p, _, _ in items),
        "server_errors": total("server_errors"),
        "over_capacity_publisher": sum(p["over_capacity_publisher"] for p, _, _ in items),
    }


def main(opts) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="clearway-live-"))
    logdir = tmp / "logs"
    logdir.mkdir()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": opts.database_url,
        "REDIS_URL": opts.redis_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "CLEARWAY_VAR_DIR": str(tmp / "var"),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    harness.ensure_database(opts.database_url)
    subprocess.run(
        [PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=600
    )
    import redis

    redis.Redis.from_url(opts.redis_url).flushdb()
    _django()
    stages = max(1, round((opts.rate * opts.duration - 2) / 6))
    count = 2 + 6 * stages
    fx = setup_fixtures(stages, max(opts.clients, opts.burst_clients), opts.rounds)
    from django.db import connections

    from orchestrator.models import Run

    connections.close_all()
    sessions_file = tmp / "sessions.json"
    sessions_file.write_text(json.dumps(fx["sessions"]))
    deadline = opts.duration * 2 + 60

    cw_env = dict(env)
    bare_env = {**env, "DJANGO_SETTINGS_MODULE": "bare_channels.settings"}
    if opts.bare_lean:
        bare_env["BARE_LEAN"] = "1"
    result: dict = {
        "benchmark": "live fan-out: Clearway /ws/events/ vs bare Channels (uvicorn, channels-redis)",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "niceness": os.nice(0),
        },
        "parameters": {
            "clients": opts.clients,
            "rate_per_s": opts.rate,
            "duration_s": opts.duration,
            "events_per_phase": count,
            "stages": stages,
            "rounds": opts.rounds,
            "schedule": opts.schedule,
            "bare_lean": opts.bare_lean,
            "burst_clients": opts.burst_clients,
            "burst_lines": opts.burst_lines,
        },
    }
    cw_server = bare_server = None
    cw_items, bare_items, rounds = [], [], []
    try:
        cw_server, cw_port = start_server("clearway", cw_env, logdir)
        bare_server, bare_port = start_server("bare", bare_env, logdir)
        for r in range(opts.rounds):
            run_id = fx["status_runs"][r]
            cw_phase = Phase(
                name=f"r{r}-clearway",
                mode="clearway",
                port=cw_port,
                n=opts.clients,
                run_id=run_id,
                sessions_file=sessions_file,
                env=cw_env,
                logdir=logdir,
                publisher_args=[PY, __file__, "--role", "publisher", "--run", str(run_id),
                                "--rate", str(opts.rate)],
                deadline=deadline,
                server=cw_server,
                redis_url=opts.redis_url,
                groups=[f"pipeline.{fx['pipeline']}", f"run.{run_id}"],
            )  # fmt: skip
            bare_phase = Phase(
                name=f"r{r}-bare",
                mode="bare",
                port=bare_port,
                n=opts.clients,
                run_id=1,
                sessions_file=sessions_file,
                env=bare_env,
                logdir=logdir,
                publisher_args=[PY, str(HERE / "bare_channels" / "publisher.py"), str(count),
                                str(opts.rate)],
                deadline=deadline,
                final_seq=count,
                server=bare_server,
                redis_url=opts.redis_url,
                groups=["bench.run"],
            )  # fmt: skip
            if opts.schedule == "paired":
                order = ["at the same time"]
                cw_result, bare_result = run_phases(cw_phase, bare_phase)
            elif r % 2 == 0:
                order = ["clearway first"]
                cw_result, bare_result = run_phases(cw_phase)[0], run_phases(bare_phase)[0]
            else:
                order = ["bare first"]
                bare_result, cw_result = run_phases(bare_phase)[0], run_phases(cw_phase)[0]
            db_run = Run.objects.get(pk=run_id)
            cw_items.append((cw_result, db_run.event_seq, db_run.status))
            bare_items.append((bare_result, count, None))
            per_round = {"clearway": judge([cw_items[-1]]), "bare": judge([bare_items[-1]])}
            rounds.append(
                {
                    "order": order,
                    "clearway_p95_ms": per_round["clearway"]["latency"]["p95_ms"],
                    "bare_p95_ms": per_round["bare"]["latency"]["p95_ms"],
                    "ratio": round(
                        per_round["clearway"]["latency"]["p95_ms"]
                        / per_round["bare"]["latency"]["p95_ms"],
                        2,
                    ),
                }
            )
        result["clearway"] = judge(cw_items)
        result["clearway"]["db_final"] = [{"event_seq": s, "status": st} for _, s, st in cw_items]
        result["bare"] = judge(bare_items)
        result["rounds"] = rounds

        burst_phase = Phase(
            name="clearway-burst",
            mode="clearway",
            port=cw_port,
            n=opts.burst_clients,
            run_id=fx["burst_run"],
            sessions_file=sessions_file,
            env=cw_env,
            logdir=logdir,
            publisher_args=[PY, __file__, "--role", "burst", "--run", str(fx["burst_run"]),
                            "--lines", str(opts.burst_lines)],
            deadline=120,
            burst_lines=opts.burst_lines,
            server=cw_server,
            redis_url=opts.redis_url,
            groups=[f"pipeline.{fx['burst_pipeline']}", f"run.{fx['burst_run']}"],
        )  # fmt: skip
        burst = run_phases(burst_phase)[0]
        db_burst = Run.objects.get(pk=fx["burst_run"])
        b = judge([(burst, db_burst.event_seq, db_burst.status)])
        cl = burst["clients"]["clients"]
        b.update(
            {
                "lines": opts.burst_lines,
                "log_events": burst["publisher"]["log_events"],
                "logwriter_s": burst["publisher"]["burst_s"],
                "clients_with_all_lines": sum(1 for c in cl if c["log_ok"]),
                "min_lines_per_client": min(c["log_lines"] for c in cl),
            }
        )
        result["clearway_burst"] = b
    finally:
        for proc in (cw_server, bare_server):
            if proc is not None:
                proc.stop()
        connections.close_all()
    result["server_log_totals"] = {
        "clearway": server_errors(cw_server.text()),
        "bare": server_errors(bare_server.text()),
    }

    c, bb, br = result["clearway"], result["bare"], result["clearway_burst"]
    ratio = round(c["latency"]["p95_ms"] / bb["latency"]["p95_ms"], 2)
    over = (
        result["server_log_totals"]["clearway"]["over_capacity"]
        + c["over_capacity_publisher"]
        + br["over_capacity_publisher"]
    )
    result["goals"] = {
        "p95_ratio_clearway_over_bare": ratio,
        "p95_ratio_met": ratio <= 1.5,
        "delivered_100pct": c["missing_seqs"] == 0 and c["clients_final_state_wrong"] == 0,
        "no_over_capacity": over == 0,
        "burst_all_lines_every_client": br["clients_with_all_lines"] == br["clients"],
        "bare_delivered_100pct": bb["missing_seqs"] == 0 and bb["clients_final_state_wrong"] == 0,
    }
    result["logs"] = str(logdir)
    return result


def write_results(r: dict) -> None:
    c, b, br, g = r["clearway"], r["bare"], r["clearway_burst"], r["goals"]
    par = r["parameters"]

    def row(name, s):
        lat = s["latency"]
        return (
            f"| {name} | {s['clients']} | {s['events_published']} | {lat['p50_ms']} | "
            f"{lat['p95_ms']} | {lat['p99_ms']} | {lat['max_ms']} | "
            f"{s['delivered']}/{s['expected']} ({s['delivered_pct']} %) | "
            f"{s['clients_final_state_wrong']} | {s['client_errors']} | "
            f"{s['stale_group_members']} | {s['server_cpu_s']} | "
            f"{s['server_cpu_ms_per_message']} |"
        )

    yes = {True: "met", False: "NOT met"}
    e_cw, e_bare = r["server_log_totals"]["clearway"], r["server_log_totals"]["bare"]
    text = [
        f"\n## Run {r['date']}\n",
        f"Python {r['machine']['python']}, {r['machine']['cpus']} CPUs, loopback, niceness "
        f"{r['machine']['niceness']}. "
        f"{par['clients']} clients, {par['rate_per_s']} events/s, {par['events_per_phase']} "
        f"events per phase ({par['stages']} stages), {par['rounds']} round(s), schedule "
        f"{par['schedule']}{', bare consumer lean' if par['bare_lean'] else ''}; 1-min load average during the phases: Clearway {c['loadavg_1min']}, bare "
        f"{b['loadavg_1min']}.\n",
        "| server | clients | events | p50 ms | p95 ms | p99 ms | max ms | delivered | "
        "clients with wrong final state | clients whose connection failed | "
        "stale group members after close | server CPU s | server CPU ms per message |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        row("Clearway (orchestrator.asgi, publish_* after commit)", c),
        row("bare Channels (group_send → forward)", b),
        "",
        "Per round (p95 ms Clearway / bare = ratio): "
        + "; ".join(
            f"{x['order'][0]}: {x['clearway_p95_ms']} / {x['bare_p95_ms']} = {x['ratio']}"
            for x in r["rounds"]
        )
        + ".\n",
        f"Clearway latency from the commit instead of the transaction start: p50 "
        f"{c['latency_from_commit']['p50_ms']} / p95 {c['latency_from_commit']['p95_ms']} / "
        f"p99 {c['latency_from_commit']['p99_ms']} ms. Publisher hops (ms, p50/p95): "
        + "; ".join(f"{k} {v['p50_ms']}/{v['p95_ms']}" for k, v in c["publisher_hops"].items())
        + f". Final state in the database: {c['db_final']}.\n",
        f"Log burst: {br['lines']} lines through LogWriter → {br['log_events']} `log` events "
        f"in {br['logwriter_s']} s, to {br['clients']} clients: "
        f"{br['clients_with_all_lines']}/{br['clients']} clients have every line "
        f"(fewest lines on a client: {br['min_lines_per_client']}); missing seqs "
        f"{br['missing_seqs']}; latency p50 {br['latency']['p50_ms']} / p95 "
        f"{br['latency']['p95_ms']} / max {br['latency']['max_ms']} ms.\n",
        f'Server logs (whole run): Clearway {e_cw}; bare {e_bare}. "over capacity" in the '
        f"publishers' logs: Clearway {c['over_capacity_publisher'] + br['over_capacity_publisher']}"
        f", bare {b['over_capacity_publisher']}.\n",
        f"Goals: p95 ratio Clearway/bare = **{g['p95_ratio_clearway_over_bare']}** (<= 1.5: "
        f"{yes[g['p95_ratio_met']]}); 100 % delivered: {yes[g['delivered_100pct']]}; "
        f"no over capacity: {yes[g['no_over_capacity']]}; burst complete on every client: "
        f"{yes[g['burst_all_lines_every_client']]}.\n",
    ]
    harness.append_results(RESULTS, "Live fan-out (benchmarks/live_fanout.py)", "\n".join(text))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", default="main", choices=["main", "clients", "publisher", "burst"])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--burst-clients", type=int, default=100)
    p.add_argument("--burst-lines", type=int, default=1000)
    p.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS))
    p.add_argument(
        "--rounds", type=int, default=1, help="Clearway/bare pairs, alternating which goes first"
    )
    p.add_argument(
        "--schedule",
        choices=["sequential", "paired"],
        default="sequential",
        help="sequential: Clearway and bare phases one after the other, alternating which goes "
        "first; paired: both at the same moment (same background load, sharing the CPUs)",
    )
    p.add_argument(
        "--bare-lean",
        action="store_true",
        help="the bare consumer skips Channels' per-message close_old_connections thread hop "
        "(as Clearway's does for relayed events): the lower bound for a Channels relay",
    )
    p.add_argument("--no-write", action="store_true")
    # internal roles
    p.add_argument("--mode", choices=["clearway", "bare"])
    p.add_argument("--n", type=int)
    p.add_argument("--url")
    p.add_argument("--origin")
    p.add_argument("--run", type=int)
    p.add_argument("--sessions-file")
    p.add_argument("--ready-file")
    p.add_argument("--stop-file")
    p.add_argument("--out")
    p.add_argument("--deadline", type=float, default=120)
    p.add_argument("--final-seq", type=int, default=0)
    p.add_argument("--lines", type=int, default=1000)
    return p.parse_args(argv)


if __name__ == "__main__":
    opts = parse()
    if opts.role == "clients":
        asyncio.run(clients_main(opts))
    elif opts.role == "publisher":
        publisher_main(opts)
    elif opts.role == "burst":
        burst_main(opts)
    else:
        res = main(opts)
        if not opts.no_write:
            write_results(res)
        print(json.dumps(res, indent=1))

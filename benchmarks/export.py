"""Benchmark the streamed audit log export through a real server on PostgreSQL.

    .venv/bin/python benchmarks/export.py [--sizes 10000,100000] [--events-per-change 10]
        [--database-url postgres://postgres@127.0.0.1:5432/clearway_bench_export] [--keep]

For each size (in changes), the database holds that many changes' worth of audit events
(10 per change by default: trigger, gate waiting, two approvals, gate open, stage queued,
step start/succeeded, stage and run succeeded), bulk-inserted with a valid hash chain
(governance.audit.compute_hash / row_payload) — the sizes are reached by appending to the same
chain, so the chain verifies. A fresh `uvicorn orchestrator.asgi:application` process serves
`GET /api/v1/reports/audit?format=csv` (token auth, a compliance manager), and we measure:

* time to first byte (goal <= 1 s) and time to the first data row;
* rows/s over the data rows (goal >= 20,000), and the total time including the trailer,
  whose chain verification re-hashes the whole chain;
* peak RSS of the serving process (VmHWM from /proc/<pid>/status, also sampled VmRSS), goal:
  the largest size <= 1.2 x the smallest.

The database is dropped and re-created first unless --keep. Prints one JSON document and
writes the figures, with the date, to benchmarks/EXPORT_RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import harness

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/clearway_bench_export"
TOKEN = ""  # the bench user's API token (read scope), made by ensure_user


def psql(url: str, sql: str, db: str = "postgres") -> None:
    u = urlparse(url)
    cmd = [
        "psql",
        "-h",
        u.hostname or "127.0.0.1",
        "-p",
        str(u.port or 5432),
        "-U",
        u.username or "postgres",
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
        "-qc",
        sql,
    ]
    env = {**os.environ, **({"PGPASSWORD": u.password} if u.password else {})}
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def prepare_database(url: str, keep: bool) -> None:
    name = urlparse(url).path.lstrip("/")
    if not keep:
        psql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    try:
        psql(url, f'CREATE DATABASE "{name}"')
    except subprocess.CalledProcessError:
        pass  # exists (--keep)
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def ensure_user() -> None:
    from datetime import timedelta

    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from governance import tokens

    global TOKEN
    user, _ = User.objects.get_or_create(username="bench-carl")
    user.groups.add(Group.objects.get(name="compliance-manager"))
    expires = timezone.now() + timedelta(days=1)
    TOKEN = tokens.issue(user, name="bench", scopes=["read"], expires_at=expires)[1]


CHANGE_EVENTS = [
    ("alice", "run.trigger", "run", {"trigger": "api", "parameters": {"version": "2.{n}.0"}}),
    ("system", "gate.waiting", "gate", {"reason": "needs 2 approvals from sre"}),
    ("bob", "gate.approve", "gate", {"comment": "LGTM", "environment": "production"}),
    ("李雷", "gate.approve", "gate", {"comment": "同意 — Zoë", "environment": "production"}),
    ("system", "gate.open", "gate", {"reason": "", "environment": "production"}),
    ("system", "stage.queued", "stagerun", {"run": "{n}"}),
    ("system", "step.start", "steprun", {"attempt": 1, "worker": "celery@w1"}),
    ("system", "step.succeeded", "steprun", {"exit_code": 0, "attempt": 1}),
    ("system", "stage.succeeded", "stagerun", {"reason": ""}),
    ("system", "run.succeeded", "run", {"reason": ""}),
]


def seed(changes_from: int, changes_to: int, per_change: int) -> int:
    """Append the audit events of changes [changes_from, changes_to) to the chain with COPY,
    hashing as audit.record would. Returns the number of rows added."""
    from django.db import connection, transaction

    from governance.audit import compute_hash, row_payload
    from governance.models import AuditChainHead, AuditEvent

    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    columns = [
        "seq",
        "at",
        "actor_id",
        "actor_name",
        "action",
        "target_type",
        "target_id",
        "target_name",
        "outcome",
        "details",
        "request_id",
        "ip",
        "prev_hash",
        "hash",
    ]
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().get(pk=1)
        seq, prev = head.seq, head.hash
        added = 0
        with connection.cursor() as cursor:
            raw = cursor.cursor
            sql = f"COPY governance_auditevent ({', '.join(columns)}) FROM STDIN"
            with raw.copy(sql) as copy:
                for n in range(changes_from, changes_to):
                    for i in range(per_change):
                        actor, action, kind, details = CHANGE_EVENTS[i % len(CHANGE_EVENTS)]
                        details = json.loads(json.dumps(details).replace("{n}", str(n)))
                        seq += 1
                        event = AuditEvent(
                            seq=seq,
                            at=start + dt.timedelta(seconds=n * 60 + i),
                            actor_id=None,
                            actor_name=actor,
                            action=action,
                            target_type=kind,
                            target_id=str(n),
                            target_name=f"payments-api #{n}",
                            outcome="success",
                            details=details,
                            request_id="",
                            ip=None,
                            prev_hash=prev,
                        )
                        event.hash = compute_hash(prev, row_payload(event))
                        prev = event.hash
                        copy.write_row(
                            [
                                event.seq,
                                event.at,
                                None,
                                actor,
                                action,
                                kind,
                                event.target_id,
                                event.target_name,
                                "success",
                                json.dumps(details, ensure_ascii=False),
                                "",
                                None,
                                event.prev_hash,
                                event.hash,
                            ]
                        )
                        added += 1
        head.seq, head.hash = seq, prev
        head.save(update_fields=["seq", "hash"])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE governance_auditevent")
    return added


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(self, url: str):
        self.port = harness.free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "DEBUG": "False",
            "SECRET_KEY": "bench-" + "x" * 50,
            "SECURE_SSL_REDIRECT": "False",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen(
            harness.uvicorn_command(self.port, "orchestrator.asgi:application", "--no-access-log"),
            cwd=ROOT,
            env=env,
        )
        deadline = time.time() + 60
        import httpx

        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def export(server: Server, query: str) -> dict:
    import httpx

    url = f"http://127.0.0.1:{server.port}/api/v1/reports/audit?{query}"
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_kib(server.proc.pid, "VmRSS"))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sha = hashlib.sha256()
    lines = 0
    first_byte = first_row = data_done = None
    pending = b""  # the last bytes, not hashed yet: the trailer line must be left out
    t0 = time.perf_counter()
    with httpx.stream(
        "GET", url, headers={"Authorization": f"Token {TOKEN}"}, timeout=600
    ) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_raw():  # as received: no client-side buffering
            now = time.perf_counter()
            if first_byte is None:
                first_byte = now - t0
            lines += chunk.count(b"\n")
            if first_row is None and lines > 20:
                first_row = now - t0
            if data_done is None and b"#,rows_written" in pending[-64:] + chunk:
                data_done = now - t0
            pending += chunk
            if len(pending) > 8192:
                sha.update(pending[:-8192])
                pending = pending[-8192:]
    total = time.perf_counter() - t0
    stop.set()
    sampler.join()
    cut = pending.rstrip(b"\n").rfind(b"\n") + 1
    sha.update(pending[:cut])
    last = pending[cut:].decode().strip()
    tail_text = pending.decode("utf-8", errors="ignore").split("\n", 1)[1]
    meta = {r[1]: r[2] for r in csv.reader(io.StringIO(tail_text)) if len(r) >= 3 and r[0] == "#"}
    verification = json.loads(meta["chain_verification"])
    rows = json.loads(meta["rows_written"])["events"]
    return {
        "rows": rows,
        "ttfb_s": round(first_byte, 3),
        "first_data_row_s": round(first_row or 0, 3),
        "data_s": round(data_done or total, 3),
        "total_s_incl_verification": round(total, 3),
        "rows_per_s": round(rows / (data_done or total)),
        "rows_per_s_incl_verification": round(rows / total),
        "chain_verified": verification["ok"],
        "sha256_trailer_matches": last == f"#,sha256,{sha.hexdigest()}",
        "peak_rss_mib_vmhwm": round(rss_kib(server.proc.pid, "VmHWM") / 1024, 1),
        "peak_rss_mib_sampled": round(max(samples or [0]) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--events-per-change", type=int, default=10)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--keep", action="store_true", help="do not drop the database first")
    parser.add_argument("--no-write", action="store_true", help="do not update EXPORT_RESULTS.md")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    prepare_database(args.database_url, args.keep)
    setup_django(args.database_url)
    ensure_user()
    from django.db import connection

    from governance.models import AuditChainHead

    results = []
    seeded = 0
    for size in sizes:
        t = time.perf_counter()
        seed(seeded, size, args.events_per_change)
        seed_s = time.perf_counter() - t
        seeded = size
        connection.close()
        server = Server(args.database_url)
        try:
            # Warm up (imports, first connection) with a tiny export, then measure.
            export(server, "format=csv&action=nothing.here")
            baseline = rss_kib(server.proc.pid, "VmRSS") / 1024
            measured = export(server, "format=csv")
        finally:
            server.stop()
        head = AuditChainHead.objects.get(pk=1)
        results.append(
            {
                "changes": size,
                "events": head.seq,
                "seed_s": round(seed_s, 1),
                "rss_after_warmup_mib": round(baseline, 1),
                **measured,
            }
        )
    small, large = results[0], results[-1]
    ratio = large["peak_rss_mib_vmhwm"] / small["peak_rss_mib_vmhwm"]
    report = {
        "benchmark": "audit log CSV export over HTTP (uvicorn, PostgreSQL)",
        "date": dt.date.today().isoformat(),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        },
        "results": results,
        "goals": {
            "peak_rss_ratio_large_vs_small": round(ratio, 3),
            "rss_ok (<= 1.2)": ratio <= 1.2,
            "ttfb_ok (<= 1 s)": all(r["ttfb_s"] <= 1 for r in results),
            "rows_per_s_ok (>= 20000)": all(r["rows_per_s"] >= 20000 for r in results),
        },
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if not args.no_write:
        write_results(report)


def write_results(report: dict) -> None:
    rows = "\n".join(
        f"| {r['changes']:,} | {r['events']:,} | {r['ttfb_s']} | {r['first_data_row_s']} | "
        f"{r['rows_per_s']:,} | {r['data_s']} | {r['total_s_incl_verification']} | "
        f"{r['rss_after_warmup_mib']} | {r['peak_rss_mib_vmhwm']} | {r['peak_rss_mib_sampled']} |"
        for r in report["results"]
    )
    goals = report["goals"]
    text = f"""## Export (benchmarks/export.py)

Streamed audit log export, `GET /api/v1/reports/audit?format=csv`, through a real
`uvicorn orchestrator.asgi:application` process on PostgreSQL (DEBUG off, token auth). The
audit chain is bulk-inserted (COPY) with valid hashes; each size is a fresh server process.
Run: `.venv/bin/python benchmarks/export.py` (drops and re-creates the `clearway_bench_export`
database; `--database-url` to change it).

Measured {report["date"]} (Python {report["machine"]["python"]}, {report["machine"]["cpus"]} CPUs):

| changes | audit events | TTFB (s) | first data row (s) | rows/s (data) | data done (s) | total incl. chain verification (s) | RSS after warm-up (MiB) | peak RSS VmHWM (MiB) | peak RSS sampled (MiB) |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Goals: peak RSS of the largest / smallest = **{goals["peak_rss_ratio_large_vs_small"]}** (goal <= 1.2:
{"met" if goals["rss_ok (<= 1.2)"] else "NOT met"}); TTFB <= 1 s: {"met" if goals["ttfb_ok (<= 1 s)"] else "NOT met"};
rows/s >= 20,000: {"met" if goals["rows_per_s_ok (>= 20000)"] else "NOT met"}.

- TTFB is the evidence header (counts, the export's own audit event, the chain head); the
  rows follow, read by keyset on seq 2,000 at a time.
- "rows/s (data)" is measured up to the end of the data rows. The trailer then runs
  `audit.verify()` up to the head in the header, which re-hashes the whole chain; the total
  column includes it.
"""
    (ROOT / "benchmarks" / "EXPORT_RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()

"""Benchmark the audit evidence paths at millions of events: the export's first byte and peak
RSS with a signed checkpoint, and incremental verification costing O(rows since it).

    .venv/bin/python benchmarks/audit_evidence.py [--sizes 1000000,10000000]
        [--new-rows 1000,10000] [--full-verify-at 1000000] [--no-export]
        [--database-url postgres://postgres@127.0.0.1:5432/clearway_bench_evidence] [--keep]

For each size (in audit events, appended to one chain, smallest first):

1. the chain is grown to that size by COPY, the hashes computed in bulk in Python exactly as
   governance.audit.compute_hash would (the secondary indexes are dropped during the COPY and
   rebuilt after it); the first rows are re-checked with audit.verify;
2. the head is signed (governance.checkpoints.sign, written to a checkpoint directory and the
   AuditCheckpoint index) — as beat would have done every 5 minutes;
3. for each of --new-rows, that many events are appended after the checkpoint and
   `checkpoints.verify()` is timed: it must check exactly those rows, at any size;
4. (with --full-verify-at SIZE) the full `audit.verify()` is timed once, for contrast;
5. a fresh checkpoint is signed and a fresh `uvicorn` process serves
   `GET /api/v1/reports/audit?format=csv` (the whole log): time to first byte, rows/s, and the
   serving process's peak RSS (benchmarks/export.py's client).

Prints one JSON document and appends the figures, with `uptime`, to
benchmarks/EVIDENCE_RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import export as exp
import harness

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/clearway_bench_evidence"
ACTIONS = [
    ("alice", "run.trigger", "run"),
    ("system", "gate.waiting", "gate"),
    ("bob", "gate.approve", "gate"),
    ("system", "gate.open", "gate"),
    ("system", "stage.queued", "stagerun"),
    ("system", "step.start", "steprun"),
    ("system", "step.succeeded", "steprun"),
    ("system", "run.succeeded", "run"),
]
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def grow_chain(to_seq: int, *, bulk: bool = True) -> dict:
    """Append events up to seq `to_seq` with COPY; returns timings."""
    from django.db import connection, transaction

    from governance import audit
    from governance.models import AuditChainHead

    t0 = time.perf_counter()
    dropped = []
    with connection.cursor() as cursor:
        if bulk:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                "'governance_auditevent' AND indexdef NOT LIKE 'CREATE UNIQUE%%'"
            )
            dropped = cursor.fetchall()
            for name, _ in dropped:
                cursor.execute(f'DROP INDEX "{name}"')
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().get(pk=1)
        seq, prev = head.seq, head.hash
        sha256 = hashlib.sha256
        with connection.cursor() as cursor:
            sql = (
                "COPY governance_auditevent (seq, at, actor_id, actor_name, action, target_type, "
                "target_id, target_name, outcome, details, request_id, ip, prev_hash, hash) "
                "FROM STDIN"
            )
            with cursor.cursor.copy(sql) as copy:
                lines = []
                while seq < to_seq:
                    seq += 1
                    actor, action, kind = ACTIONS[seq % len(ACTIONS)]
                    at = (START + dt.timedelta(seconds=seq)).isoformat(timespec="microseconds")
                    target = seq // 8
                    # Keys in sorted order, no spaces: audit.canonical_json of row_payload().
                    payload = (
                        f'{{"action":"{action}","actor_id":null,"actor_name":"{actor}",'
                        f'"at":"{at}","details":{{"n":{seq}}},"ip":null,"outcome":"success",'
                        f'"request_id":"","seq":{seq},"target_id":"{target}",'
                        f'"target_name":"payments-api #{target}","target_type":"{kind}"}}'
                    )
                    digest = sha256((prev + payload).encode()).hexdigest()
                    lines.append(
                        f"{seq}\t{at}\t\\N\t{actor}\t{action}\t{kind}\t{target}\t"
                        f'payments-api #{target}\tsuccess\t{{"n":{seq}}}\t\t\\N\t{prev}\t{digest}\n'
                    )
                    prev = digest
                    if len(lines) >= 20000:
                        copy.write("".join(lines))
                        lines = []
                if lines:
                    copy.write("".join(lines))
        head.seq, head.hash = seq, prev
        head.save(update_fields=["seq", "hash"])
    copied = time.perf_counter() - t0
    with connection.cursor() as cursor:
        for _, definition in dropped:
            cursor.execute(definition)
        cursor.execute("ANALYZE governance_auditevent")
    total = time.perf_counter() - t0
    check = audit.verify(up_to_seq=2000)
    assert check.ok, check.as_dict()  # the bulk hashes are the real ones
    return {"copy_s": round(copied, 1), "with_indexes_s": round(total, 1)}


def sign_head(sink_dir: Path) -> int:
    from governance import audit, checkpoints
    from governance.models import AuditCheckpoint

    seq, hash_ = audit.chain_head()
    cp = checkpoints.sign(seq, hash_)
    AuditCheckpoint.objects.get_or_create(
        seq=cp.seq,
        defaults={"hash": cp.hash, "at": cp.at, "key_id": cp.key_id, "signature": cp.signature},
    )
    checkpoints.DirectorySink(str(sink_dir)).write(cp)
    return seq


def time_verify(fn) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--new-rows", default="1000,10000")
    parser.add_argument("--full-verify-at", type=int, default=1000000)
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    new_rows = [int(s) for s in args.new_rows.split(",")]

    work = Path(tempfile.mkdtemp(prefix="clearway-bench-evidence-"))
    key_path = work / "audit-signing-key.pem"
    os.environ["CLEARWAY_AUDIT_SIGNING_KEY"] = str(key_path)  # the server process reads it too
    os.environ["CLEARWAY_VAR_DIR"] = str(work / "var")
    exp.prepare_database(args.database_url, args.keep)
    exp.setup_django(args.database_url)
    from governance import audit, checkpoints

    checkpoints.generate_key(key_path)
    exp.ensure_user()
    results = []
    for size in sizes:
        entry: dict = {"events": size, "uptime_before": uptime()}
        entry["seed"] = grow_chain(size)
        checkpoint_seq = sign_head(work / "checkpoints")
        entry["checkpoint_seq"] = checkpoint_seq
        incremental = []
        for n in new_rows:
            head, _ = audit.chain_head()
            grow_chain(head + n, bulk=False)
            seconds, result = time_verify(checkpoints.verify)
            assert result.ok and result.since_seq == checkpoint_seq, result.as_dict()
            incremental.append(
                {
                    "rows_since_checkpoint": result.checked,
                    "seconds": round(seconds, 3),
                    "rows_per_s": round(result.checked / seconds),
                }
            )
        entry["incremental_verify"] = incremental
        if args.full_verify_at == size:
            seconds, result = time_verify(audit.verify)
            assert result.ok
            entry["full_verify"] = {"rows": result.checked, "seconds": round(seconds, 1)}
        if not args.no_export:
            sign_head(work / "checkpoints")
            from django.db import connection

            connection.close()
            server = exp.Server(args.database_url)
            try:
                exp.export(server, "format=csv&action=nothing.here")  # warm-up
                entry["rss_after_warmup_mib"] = round(
                    exp.rss_kib(server.proc.pid, "VmRSS") / 1024, 1
                )
                entry["export"] = exp.export(server, "format=csv")
            finally:
                server.stop()
        entry["uptime_after"] = uptime()
        results.append(entry)
        print(json.dumps(entry), flush=True)
    report = {
        "benchmark": "audit evidence: export with a checkpoint, incremental verification",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if not args.no_write:
        write_results(report)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_results(report: dict) -> None:
    lines = [f"\n## Run of {report['date']} ({report['machine']['cpus']} CPUs)\n"]
    for r in report["results"]:
        lines.append(f"### {r['events']:,} events (+ the rows appended after the checkpoint)\n")
        lines.append(f"- load before: `{r['uptime_before']}`; after: `{r['uptime_after']}`")
        lines.append(
            f"- seeding: COPY {r['seed']['copy_s']} s, with indexes rebuilt "
            f"{r['seed']['with_indexes_s']} s"
        )
        for inc in r["incremental_verify"]:
            lines.append(
                f"- incremental verification from the checkpoint at #{r['checkpoint_seq']:,}: "
                f"{inc['rows_since_checkpoint']:,} rows in {inc['seconds']} s "
                f"({inc['rows_per_s']:,} rows/s)"
            )
        if "full_verify" in r:
            f = r["full_verify"]
            lines.append(
                f"- full verification (for contrast): {f['rows']:,} rows in {f['seconds']} s"
            )
        if "export" in r:
            e = r["export"]
            lines.append(
                f"- export (whole log, CSV): TTFB **{e['ttfb_s']} s**, first data row "
                f"{e['first_data_row_s']} s, {e['rows_per_s']:,} rows/s, total "
                f"{e['total_s_incl_verification']} s; peak RSS **{e['peak_rss_mib_vmhwm']} MiB** "
                f"(VmHWM; after warm-up {r['rss_after_warmup_mib']} MiB); chain verified "
                f"{e['chain_verified']}; trailer matches {e['sha256_trailer_matches']}"
            )
        lines.append("")
    harness.append_results(
        ROOT / "benchmarks" / "EVIDENCE_RESULTS.md",
        "Audit evidence results (benchmarks/audit_evidence.py)",
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()

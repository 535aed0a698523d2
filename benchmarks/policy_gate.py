"""Benchmark one policy-gate decision through the isolated evaluator pool.

    .venv/bin/python benchmarks/policy_gate.py [--iterations 300] [--threads 4]

Measures, with the shipped demo policies (governance/demo_policies), evaluated by OPA's own
evaluator (opa-golib-python-bindings) in the evaluator pool, sandboxed under bubblewrap
unless CLEARWAY_SANDBOX=off:

* cold start: the first decision of a fresh pool (bwrap + process start + loading OPA +
  compile of every policy), and a full pool's start (``warm_up``);
* gate: one ``evaluate_many`` call with all demo policies (one round trip), median and p95,
  for an input where everything passes and one where most policies deny;
* per policy: one ``evaluate`` call each (wall time in the caller) and the time spent inside
  the evaluator (``Decision.duration_ms``);
* concurrent: gate decisions from several threads sharing the pool (throughput).

Goals (issue 13): gate median <= 1 ms and p95 <= 2 ms, one round trip to the pool; pool
cold start <= 1 s. Prints one JSON document, with the machine's load average.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stats(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(p95, 3),
        "min_ms": round(ordered[0], 3),
        "max_ms": round(ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from governance import rego

    demo = rego.demo_policies()
    policies = [(p["name"], p["source"]) for p in demo]
    passing = next(p for p in demo if p["name"] == "freeze")["tests"][0]["input"]
    denying = copy.deepcopy(passing)
    denying["now"] = "2026-12-22T10:00:00+00:00"
    denying["environment"].update(in_freeze=True, in_change_window=False)
    denying["approvals"] = []
    denying["previous_stages"][1]["status"] = "failed"
    denying["run"]["parameters"]["branch"] = "hotfix"

    rego.shutdown_pool()
    started = time.perf_counter()
    first = rego.evaluate_many(policies, passing)
    cold_ms = (time.perf_counter() - started) * 1000.0
    assert all(d.result == "pass" for d in first), first
    rego.shutdown_pool()
    started = time.perf_counter()
    rego.warm_up()
    warm_up_ms = (time.perf_counter() - started) * 1000.0

    def gate(doc) -> tuple[dict, list]:
        for _ in range(20):  # warm every evaluator's compile cache
            rego.evaluate_many(policies, doc)
        samples = []
        decisions = []
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            decisions = rego.evaluate_many(policies, doc)
            samples.append((time.perf_counter() - t0) * 1000.0)
        return _stats(samples), decisions

    gate_pass, _ = gate(passing)
    gate_deny, deny_decisions = gate(denying)
    assert [d.result for d in deny_decisions] == ["deny", "deny", "warn", "deny", "deny"], [
        d.result for d in deny_decisions
    ]

    per_policy = {}
    for name, source in policies:
        wall, inside = [], []
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            decision = rego.evaluate(source, denying, name=name)
            wall.append((time.perf_counter() - t0) * 1000.0)
            inside.append(decision.duration_ms)
        per_policy[name] = {
            "result": decision.result,
            "wall": _stats(wall),
            "in_evaluator": _stats(inside),
        }

    done = []
    lock = threading.Lock()

    def hammer():
        local = []
        for _ in range(max(1, args.iterations // args.threads)):
            t0 = time.perf_counter()
            rego.evaluate_many(policies, passing)
            local.append((time.perf_counter() - t0) * 1000.0)
        with lock:
            done.extend(local)

    # Every evaluator compiles (and caches) each policy on first use: warm them all.
    warmers = [
        threading.Thread(target=lambda: [rego.evaluate_many(policies, passing) for _ in range(10)])
        for _ in range(args.threads)
    ]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join()

    threads = [threading.Thread(target=hammer) for _ in range(args.threads)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    concurrent = {
        "threads": args.threads,
        "pool_size": rego.DEFAULT_POOL_SIZE,
        "decisions_per_s": round(len(done) / elapsed, 1),
        **_stats(done),
    }
    rego.shutdown_pool()

    print(
        json.dumps(
            {
                "benchmark": "policy_gate",
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "sandbox": rego.sandbox_mode(),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "policies": [name for name, _ in policies],
                "iterations": args.iterations,
                "cold_start_ms": round(cold_ms, 1),
                "pool_warm_up_ms": round(warm_up_ms, 1),
                "gate_all_pass": gate_pass,
                "gate_mostly_deny": gate_deny,
                "per_policy": per_policy,
                "concurrent_gate": concurrent,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

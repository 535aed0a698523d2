"""Page speed with a realistic amount of history: the overview (/) and a run page (/runs/<id>/).

Also two run pages whose one step logged 3,000 and 100,000 lines (`run_log_3000`,
`run_log_100000`): the same p95 goal, and their `body_kib` must be flat.

    .venv/bin/python benchmarks/pages.py [--runs 10000] [--days 60] [--requests 100]
        [--warmup 10] [--database-url postgres://postgres@127.0.0.1:5432/clearway_bench_pages]
        [--redis-url redis://127.0.0.1:6379/10] [--reseed] [--reuse] [--orm-runs 10000]
        [--jit-off] [--no-write]

Needs PostgreSQL and Redis on 127.0.0.1. The database is created if missing and migrated,
then seeded once (kept for the next run; --reseed drops and re-creates it): users, teams,
environments (production protected: 2 approvals from sre AND 1 from security), two
published policies and eight pipelines created through orchestrator.actions.create_pipeline,
then --runs runs over the last --days days bulk-created with their stage runs, step runs,
gates (every production stage that reached its gate), approvals, policy decisions and, for
the last three days, log chunks — realistic statuses (mostly succeeded; failed with the
downstream skipped, canceled, blocked at the gate; a few running, queued and waiting now) and
timestamps. ANALYZE runs after the seed, as autovacuum would. Beyond --orm-runs (10,000)
the history is grown in SQL (`multiply`: the finished runs copied with all their rows by
INSERT ... SELECT over generate_series), so 1,000,000 runs take minutes. --reuse takes the
database as it is (a seeded 1M database is kept between runs).

A real `uvicorn orchestrator.asgi:application` (one process, DEBUG off, SECRET_KEY set,
collectstatic first, SECURE_SSL_REDIRECT/SESSION_COOKIE_SECURE off for plain HTTP on
loopback) serves the pages to a developer (member of two of the three teams) logged in with
a session cookie made here. For each page: --warmup requests, then --requests sequential
requests timed by the client (httpx, loopback, full body read); p50/p95/max. Goal: p95 <=
300 ms. Then, in this process, each page once more under django.test.Client with the SQL
captured: number of queries, SQL time, the slowest queries (and EXPLAIN ANALYZE of the
slowest), to see where the time goes.

--jit-off is a what-if: the server (and the profiling) run with PGOPTIONS="-c jit=off", i.e.
PostgreSQL's JIT compiler off for their sessions; nothing in the repository changes.

Prints one JSON document and appends the figures, with the date, to
benchmarks/PAGES_RESULTS.md (unless --no-write). Not part of the test run. The server is
stopped by its pid at the end. On a shared machine run it as `nice -n -10 ...` (root); the
results record the niceness and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import random
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
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/clearway_bench_pages"
DEFAULT_REDIS = "redis://127.0.0.1:6379/10"
RESULTS = HERE / "PAGES_RESULTS.md"
DEVELOPER = "dana"
GOAL_P95_MS = 300

# --- pipeline definitions -----------------------------------------------------------------


def _stage(name, steps, needs=(), env=None):
    lines = [f"  - name: {name}"]
    if needs:
        lines.append(f"    needs: [{', '.join(needs)}]")
    if env:
        lines.append(f"    environment: {env}")
    lines.append("    steps:")
    for step in steps:
        lines += [f"      - name: {step}", f'        run: echo "{name} {step}"']
    return lines


def definition(title: str, stages: list) -> str:
    lines = [
        f"name: {title}",
        "parameters:",
        "  - name: version",
        '    default: "1.0.0"',
        "  - name: commit",
        '    default: "0000000"',
        "  - name: author",
        '    default: ""',
        "stages:",
    ]
    for st in stages:
        lines += _stage(*st)
    return "\n".join(lines) + "\n"


SERVICE = [
    ("build", ["compile", "image"]),
    ("unit-tests", ["pytest"], ["build"]),
    ("lint", ["ruff"], ["build"]),
    ("deploy-staging", ["rollout", "smoke-test"], ["unit-tests", "lint"], "staging"),
    ("deploy-production", ["rollout"], ["deploy-staging"], "production"),
]
SMALL_SERVICE = [
    ("build", ["compile"]),
    ("test", ["pytest"], ["build"]),
    ("deploy-staging", ["rollout"], ["test"], "staging"),
    ("deploy-production", ["rollout"], ["deploy-staging"], "production"),
]
INFRA = [
    ("plan", ["terraform-plan"]),
    ("apply-staging", ["terraform-apply"], ["plan"], "staging"),
    ("apply-production", ["terraform-apply"], ["apply-staging"], "production"),
]
DNS = [
    ("plan", ["terraform-plan"]),
    ("apply-production", ["terraform-apply"], ["plan"], "production"),
]
DATA = [
    ("extract", ["pull"]),
    ("transform", ["dbt-run", "dbt-test"], ["extract"]),
    ("load", ["copy"], ["transform"], "development"),
]
# slug, title, team, stages, share of the runs
PIPELINES = [
    ("payments-api", "Payments API", "payments", SERVICE, 0.22),
    ("claims-service", "Claims Service", "payments", SMALL_SERVICE, 0.14),
    ("checkout-web", "Checkout Web", "payments", SERVICE, 0.14),
    ("infra-network", "Infra Network", "platform", INFRA, 0.10),
    ("platform-dns", "Platform DNS", "platform", DNS, 0.06),
    ("k8s-cluster", "Kubernetes Cluster", "platform", INFRA, 0.08),
    ("data-etl", "Data ETL", "data", DATA, 0.16),
    ("ml-training", "ML Training", "data", DATA, 0.10),
]
TEAMS = [("payments", "Payments"), ("platform", "Platform"), ("data", "Data")]


# --- helpers ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1], 1)


# --- seed ---------------------------------------------------------------------------------


def seed(n_runs: int, days: int, rng: random.Random) -> dict:  # noqa: C901, PLR0915
    from django.contrib.auth.models import Group, User
    from django.db import connection, transaction
    from django.utils import timezone
    from guardian.shortcuts import assign_perm

    from governance.models import (
        Approval,
        ApprovalDecision,
        ApprovalRule,
        Enforcement,
        Environment,
        Gate,
        GateStatus,
        Policy,
        PolicyDecision,
        PolicyVersion,
        Tier,
    )
    from orchestrator import actions
    from orchestrator.models import (
        LogChunk,
        Pipeline,
        Run,
        RunStatus,
        StageRun,
        StageStatus,
        StepRun,
        StepStatus,
        Team,
        Trigger,
    )

    t0 = time.time()
    now = timezone.now()
    start = now - dt.timedelta(days=days)
    groups = {n: Group.objects.get_or_create(name=n)[0] for n in ("sre", "security")}
    teams = {}
    for slug, name in TEAMS:
        g, _ = Group.objects.get_or_create(name=f"team-{slug}")
        teams[slug], _ = Team.objects.get_or_create(slug=slug, defaults={"name": name, "group": g})

    def user(name, *group_names, **extra):
        u, _ = User.objects.get_or_create(
            username=name, defaults={"email": f"{name}@x.test", **extra}
        )
        u.groups.add(*[Group.objects.get(name=g) for g in group_names])
        return u

    users = {
        "dana": user("dana", "developer", "team-payments", "team-platform"),
        "omar": user("omar", "developer", "team-data", "team-platform"),
        "sam": user("sam", "approver", "sre"),
        "sara": user("sara", "approver", "sre"),
        "sofia": user("sofia", "approver", "security"),
        "admin": user("admin", is_superuser=True, is_staff=True),
    }
    envs = {}
    for name, tier, protected in (
        ("development", Tier.DEVELOPMENT, False),
        ("staging", Tier.STAGING, False),
        ("production", Tier.PRODUCTION, True),
    ):
        envs[name], _ = Environment.objects.get_or_create(
            name=name, defaults={"tier": tier, "protected": protected}
        )
    prod = envs["production"]
    ApprovalRule.objects.get_or_create(
        environment=prod, group=groups["sre"], defaults={"required_count": 2}
    )
    ApprovalRule.objects.get_or_create(
        environment=prod, group=groups["security"], defaults={"required_count": 1}
    )
    for g in groups.values():
        assign_perm("governance.approve_environment", g, prod)
    assign_perm("governance.override_environment", groups["sre"], prod)

    policies = []
    for name, enforcement in (
        ("change-ticket-required", Enforcement.SOFT_MANDATORY),
        ("no-deploy-in-freeze", Enforcement.HARD_MANDATORY),
    ):
        source = (
            f"package clearway.{name.replace('-', '_')}\n\n"
            'deny contains msg if {\n  input.run.parameters.change == ""\n'
            '  msg := "a change ticket is required"\n}\n'
        )
        policy, created = Policy.objects.get_or_create(
            name=name,
            defaults={
                "source": source,
                "enforcement": enforcement,
                "tiers": [Tier.PRODUCTION],
                "updated_by": users["admin"],
                "created_at": start,
                "updated_at": start,
            },
        )
        if created:
            version = PolicyVersion.objects.create(
                policy=policy,
                number=1,
                source=source,
                enforcement=enforcement,
                sha256=hashlib.sha256(source.encode()).hexdigest(),
                author=users["admin"],
                created_at=start,
            )
            policy.current_version = version
            policy.save(update_fields=["current_version"])
        policies.append(policy.current_version)

    pipes = {}
    for slug, title, team, stages, _share in PIPELINES:
        p = Pipeline.objects.filter(slug=slug).first()
        if p is None:
            p = actions.create_pipeline(
                actor=users["admin"],
                slug=slug,
                team=teams[team],
                definition=definition(title, stages),
                now=start - dt.timedelta(days=1),
            )
        pipes[slug] = p

    # Runs, in time order; the newest few are still going.
    shares = [s for *_, s in PIPELINES]
    slugs = [p[0] for p in PIPELINES]
    plan = sorted(
        (
            start + dt.timedelta(seconds=rng.uniform(0, days * 86400 - 3600)),
            rng.choices(slugs, shares)[0],
        )
        for _ in range(n_runs)
    )
    active = {
        len(plan) - 1 - i: kind
        for i, kind in enumerate(["running"] * 5 + ["waiting"] * 3 + ["queued"] * 2)
    }
    numbers = {s: 0 for s in slugs}
    triggerers = [users["dana"], users["omar"], users["admin"]]
    runs, run_meta = [], []
    for i, (created, slug) in enumerate(plan):
        numbers[slug] += 1
        kind = active.get(i)
        if kind:
            created = now - dt.timedelta(minutes=rng.uniform(1, 20))
        else:
            kind = rng.choices(
                ["succeeded", "failed", "canceled", "blocked"], [0.85, 0.09, 0.03, 0.03]
            )[0]
        actor = rng.choice(triggerers)
        p = pipes[slug]
        runs.append(
            Run(
                pipeline=p,
                version_id=p.current_version_id,
                number=numbers[slug],
                trigger=rng.choice([Trigger.MANUAL, Trigger.API, Trigger.WEBHOOK]),
                triggered_by=actor,
                status=RunStatus.QUEUED,
                created_at=created,
                parameters={
                    "version": f"2.{rng.randint(0, 40)}.{rng.randint(0, 9)}",
                    "commit": secrets.token_hex(4)[:7],
                    "author": actor.username,
                },
            )
        )
        run_meta.append(kind)

    with transaction.atomic():
        Run.objects.bulk_create(runs, batch_size=2000)
        for slug in slugs:
            Pipeline.objects.filter(pk=pipes[slug].pk).update(next_run_number=numbers[slug] + 1)

        stage_rows, step_rows, gate_rows, approvals, decisions = [], [], [], [], []
        specs = {slug: pipes[slug].current_version.spec for slug in slugs}
        for run, kind in zip(runs, run_meta, strict=True):
            spec = specs[run.pipeline.slug]
            t = run.created_at + dt.timedelta(seconds=rng.uniform(1, 20))
            run.started_at = None if kind == "queued" else t
            finish: dict[str, dt.datetime] = {}
            order = spec["stages"]
            if not any(st.get("environment") == "production" for st in order):
                # nothing gated in this pipeline: it can neither wait nor be blocked
                kind = {"blocked": "succeeded", "waiting": "running"}.get(kind, kind)
            fail_at = rng.randrange(len(order)) if kind == "failed" else None
            cancel_at = rng.randrange(len(order)) if kind == "canceled" else None
            broken = False
            for pos, st in enumerate(order):
                env = envs.get(st.get("environment") or "")
                needs = st.get("needs") or []
                ready = max([finish[n] for n in needs if n in finish], default=t)
                stage = StageRun(
                    run=run, name=st["name"], position=pos, needs=needs, environment=env
                )
                gated = env is not None and env.protected
                step_status = StepStatus.SUCCEEDED
                if kind == "queued":
                    stage.status = StageStatus.QUEUED if pos == 0 else StageStatus.PENDING
                    step_status = StepStatus.QUEUED if pos == 0 else StepStatus.PENDING
                elif broken or any(n not in finish for n in needs):
                    stage.status, step_status = StageStatus.SKIPPED, StepStatus.SKIPPED
                    if kind in ("running", "waiting"):
                        stage.status, step_status = StageStatus.PENDING, StepStatus.PENDING
                else:
                    gate_wait = rng.uniform(300, 4 * 3600) if gated else 0
                    begin = ready + dt.timedelta(seconds=gate_wait + rng.uniform(0.5, 3))
                    end = begin + dt.timedelta(seconds=rng.uniform(8, 180))
                    last = pos == len(order) - 1
                    if gated:
                        gate = Gate(
                            stage_run=stage,
                            environment=env,
                            created_at=ready,
                            input_hash=secrets.token_hex(32),
                            status=GateStatus.OPEN,
                            decided_at=ready + dt.timedelta(seconds=gate_wait),
                        )
                        gate.seen_hash = gate.input_hash
                        gate_rows.append(gate)
                        blocked = kind == "blocked"
                        waiting = kind == "waiting"
                        for pv in policies:
                            deny = blocked and pv.enforcement == Enforcement.HARD_MANDATORY
                            decisions.append(
                                PolicyDecision(
                                    gate=gate,
                                    policy_version=pv,
                                    enforcement=pv.enforcement,
                                    input_hash=gate.input_hash,
                                    result="deny" if deny else "pass",
                                    deny=["deploys are frozen"] if deny else [],
                                    duration_ms=rng.uniform(0.5, 2),
                                    created_at=ready,
                                )
                            )
                        if waiting:
                            gate.status, gate.decided_at = GateStatus.WAITING, None
                            stage.status, step_status = StageStatus.WAITING, StepStatus.PENDING
                            broken = True
                            approvals.append(
                                Approval(
                                    gate=gate,
                                    user=users["sam"],
                                    decision=ApprovalDecision.APPROVE,
                                    groups=["approver", "sre"],
                                    attributed_group="sre",
                                    seen_hash=gate.input_hash,
                                    created_at=ready,
                                    comment="looks good",
                                )
                            )
                            stage_rows.append(stage)
                            step_rows += _steps(st, stage, step_status, None, None, rng)
                            continue
                        if blocked:
                            gate.status = rng.choice([GateStatus.BLOCKED, GateStatus.REJECTED])
                            gate.reason = "a mandatory policy denied the deploy"
                            stage.status, step_status = StageStatus.BLOCKED, StepStatus.SKIPPED
                            stage.finished_at = gate.decided_at
                            if gate.status == GateStatus.REJECTED:
                                approvals.append(
                                    Approval(
                                        gate=gate,
                                        user=users["sofia"],
                                        decision=ApprovalDecision.REJECT,
                                        groups=["approver", "security"],
                                        seen_hash=gate.input_hash,
                                        created_at=gate.decided_at,
                                        comment="not during the freeze",
                                    )
                                )
                            broken = True
                            stage_rows.append(stage)
                            step_rows += _steps(st, stage, step_status, None, None, rng)
                            run.finished_at = gate.decided_at
                            continue
                        if rng.random() < 0.01:
                            gate.status = GateStatus.OVERRIDDEN
                        for name, grp in (("sam", "sre"), ("sara", "sre"), ("sofia", "security")):
                            approvals.append(
                                Approval(
                                    gate=gate,
                                    user=users[name],
                                    decision=ApprovalDecision.APPROVE,
                                    groups=["approver", grp],
                                    attributed_group=grp,
                                    seen_hash=gate.input_hash,
                                    created_at=ready
                                    + dt.timedelta(seconds=gate_wait * rng.uniform(0.2, 1)),
                                    comment=rng.choice(["", "ok", "checked the diff", "go"]),
                                )
                            )
                    stage.started_at = begin
                    if kind == "running" and (last or rng.random() < 0.3):
                        stage.status, step_status = StageStatus.RUNNING, StepStatus.RUNNING
                        broken = True
                    elif pos == fail_at:
                        stage.status, step_status = StageStatus.FAILED, StepStatus.FAILED
                        stage.finished_at = end
                        broken = True
                    elif pos == cancel_at:
                        stage.status, step_status = StageStatus.CANCELED, StepStatus.CANCELED
                        stage.finished_at = end
                        broken = True
                    else:
                        stage.status, stage.finished_at = StageStatus.SUCCEEDED, end
                        finish[st["name"]] = end
                stage_rows.append(stage)
                step_rows += _steps(
                    st, stage, step_status, stage.started_at, stage.finished_at, rng
                )
            ends = [s.finished_at for s in stage_rows[-len(order) :] if s.finished_at]
            if kind in ("succeeded", "failed", "canceled", "blocked"):
                run.status = kind
                run.finished_at = max(ends) if ends else t
            elif kind in ("running", "waiting"):
                run.status = kind
            run.event_seq = 1 + 4 * len(order)
        StageRun.objects.bulk_create(stage_rows, batch_size=5000)
        StepRun.objects.bulk_create(step_rows, batch_size=5000)
        Gate.objects.bulk_create(gate_rows, batch_size=5000)
        Approval.objects.bulk_create(approvals, batch_size=5000)
        PolicyDecision.objects.bulk_create(decisions, batch_size=5000)
        Run.objects.bulk_update(
            runs, ["status", "started_at", "finished_at", "event_seq"], batch_size=2000
        )

        # Logs for the last three days' steps that ran.
        recent = now - dt.timedelta(days=3)
        chunks = []
        for step in step_rows:
            if step.started_at and step.started_at >= recent:
                n_lines = rng.choice([12, 40, 120, 260])
                offset = 0
                while offset < n_lines:
                    count = min(50, n_lines - offset)
                    stamp = step.started_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
                    text = "\n".join(
                        f"{stamp} {step.name}: line {offset + k} ... ok" for k in range(count)
                    )
                    chunks.append(
                        LogChunk(
                            step=step,
                            offset=offset,
                            line_count=count,
                            text=text,
                            created_at=step.started_at,
                        )
                    )
                    offset += count
                step.log_lines = n_lines
        LogChunk.objects.bulk_create(chunks, batch_size=5000)
        StepRun.objects.bulk_update(
            [s for s in step_rows if s.log_lines], ["log_lines"], batch_size=5000
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {
        "seconds": round(time.time() - t0, 1),
        "runs": len(runs),
        "stage_runs": len(stage_rows),
        "step_runs": len(step_rows),
        "gates": len(gate_rows),
        "approvals": len(approvals),
        "decisions": len(decisions),
        "log_chunks": len(chunks),
    }


def multiply(target: int) -> dict:  # noqa: C901
    """Grow the history to about `target` runs in SQL: the finished runs seeded so far are
    copied, with their stage runs, step runs, gates, approvals and policy decisions, by one
    `INSERT ... SELECT ... CROSS JOIN generate_series(1, k)` per table (ids, run numbers and
    foreign keys shifted by a multiple of the table's largest id; every timestamp moved k x 7 s
    earlier, so each copy stays inside the period). Log chunks are not copied. Minutes for
    1,000,000 runs, where the ORM seed would take hours."""
    from django.db import connection, models, transaction

    from governance.models import Approval, Gate, PolicyDecision
    from orchestrator.models import Pipeline, Run, RunStatus, StageRun, StepRun

    t0 = time.time()
    terminal = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.BLOCKED]
    base = Run.objects.filter(status__in=terminal)
    n_base, have = base.count(), Run.objects.count()
    copies = max(0, math.ceil((target - have) / n_base)) if n_base else 0
    if not copies:
        return {"copies": 0}
    counts = {}
    with transaction.atomic(), connection.cursor() as cursor:

        def top(model, column="id"):
            cursor.execute(f"SELECT COALESCE(MAX({column}), 0) FROM {model._meta.db_table}")
            return cursor.fetchone()[0]

        tops = {m: top(m) for m in (Run, StageRun, StepRun, Gate, Approval, PolicyDecision)}
        numbers = top(Run, "number")
        cursor.execute(
            "CREATE TEMP TABLE bench_base_runs ON COMMIT DROP AS SELECT id FROM "
            f"{Run._meta.db_table} WHERE status = ANY(%s)",
            [terminal],
        )
        # (model, foreign key column -> parent model, the rows of the base to copy)
        st, sr = StageRun._meta.db_table, StepRun._meta.db_table
        gt = Gate._meta.db_table
        plan = [
            (Run, {}, "t.id IN (SELECT id FROM bench_base_runs)"),
            (StageRun, {"run_id": Run}, "t.run_id IN (SELECT id FROM bench_base_runs)"),
            (
                StepRun,
                {"stage_id": StageRun},
                f"t.stage_id IN (SELECT id FROM {st} WHERE id <= {tops[StageRun]} AND run_id IN "
                "(SELECT id FROM bench_base_runs))",
            ),
            (
                Gate,
                {"stage_run_id": StageRun},
                f"t.stage_run_id IN (SELECT id FROM {st} WHERE id <= {tops[StageRun]} AND run_id "
                "IN (SELECT id FROM bench_base_runs))",
            ),
        ]
        gates_of_base = (
            f"t.gate_id IN (SELECT id FROM {gt} WHERE id <= {tops[Gate]} AND stage_run_id IN "
            f"(SELECT id FROM {st} WHERE id <= {tops[StageRun]} AND run_id IN "
            "(SELECT id FROM bench_base_runs)))"
        )
        plan += [(Approval, {"gate_id": Gate}, gates_of_base)]
        plan += [(PolicyDecision, {"gate_id": Gate}, gates_of_base)]
        del sr
        for model, parents, where in plan:
            cols, exprs = [], []
            for f in model._meta.concrete_fields:
                col = f.column
                cols.append(col)
                if f.primary_key:
                    exprs.append(f"t.{col} + g * {tops[model]}")
                elif col in parents:
                    exprs.append(f"t.{col} + g * {tops[parents[col]]}")
                elif model is Run and col == "number":
                    exprs.append(f"t.{col} + g * {numbers}")
                elif model is Run and col == "retry_of_id":
                    exprs.append("NULL")
                elif isinstance(f, models.DateTimeField):
                    exprs.append(f"t.{col} - g * interval '7 seconds'")
                else:
                    exprs.append(f"t.{col}")
            table = model._meta.db_table
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(exprs)} "
                f"FROM {table} t CROSS JOIN generate_series(1, {copies}) AS g "
                f"WHERE t.id <= {tops[model]} AND {where}"
            )
            counts[table] = cursor.rowcount
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT MAX(id) FROM {table}))"
            )
        for p in Pipeline.objects.all():
            last = Run.objects.filter(pipeline=p).aggregate(n=models.Max("number"))["n"] or 0
            Pipeline.objects.filter(pk=p.pk).update(next_run_number=last + 1)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"copies": copies, "rows": counts, "seconds": round(time.time() - t0, 1)}


def _steps(st, stage, status, started, finished, rng) -> list:
    from orchestrator.models import StepRun, StepStatus

    out = []
    for pos, sp in enumerate(st["steps"]):
        step = StepRun(
            stage=stage,
            name=sp["name"],
            position=pos,
            kind=sp["type"],
            config=sp,
            status=status,
            started_at=started,
            finished_at=finished,
            attempt=1 if started else 0,
        )
        if status == StepStatus.FAILED and pos < len(st["steps"]) - 1:
            step.status = StepStatus.SUCCEEDED  # the last step is the one that failed
        if step.status in (StepStatus.SUCCEEDED, StepStatus.FAILED):
            step.exit_code = 0 if step.status == StepStatus.SUCCEEDED else rng.choice([1, 2])
        out.append(step)
    return out


def data_summary() -> dict:
    from django.db.models import Count

    from governance.models import Approval, Gate, PolicyDecision
    from orchestrator.models import LogChunk, Pipeline, Run, StageRun, StepRun

    return {
        "pipelines": Pipeline.objects.count(),
        "runs": Run.objects.count(),
        "stage_runs": StageRun.objects.count(),
        "step_runs": StepRun.objects.count(),
        "gates": Gate.objects.count(),
        "approvals": Approval.objects.count(),
        "policy_decisions": PolicyDecision.objects.count(),
        "log_chunks": LogChunk.objects.count(),
        "runs_by_status": dict(
            Run.objects.values_list("status").annotate(n=Count("pk")).order_by()
        ),
    }


def pick_run() -> int:
    """The run page people open most: the newest finished production deploy of payments-api
    (its gate with three approvals and two policy decisions, logs on every step)."""
    from governance.models import Gate, GateStatus
    from orchestrator.models import RunStatus

    gate = (
        Gate.objects.filter(
            stage_run__run__pipeline__slug="payments-api",
            status=GateStatus.OPEN,
            stage_run__run__status=RunStatus.SUCCEEDED,
        )
        .select_related("stage_run")
        .order_by("-stage_run__run__created_at")
        .first()
    )
    return gate.stage_run.run_id


LONG_LOGS = (3_000, 100_000)  # lines in the one step of the long-log runs


def long_log_run(lines: int) -> int:
    """A finished payments-api run whose one step logged `lines` lines (made once, found by
    its parameter `bench_log`): the run page must weigh and cost the same at 3,000 and at
    100,000 lines (issue 18: the page renders each step's last window)."""
    from django.utils import timezone

    from orchestrator.models import LogChunk, Pipeline, Run, StageRun, StepRun

    found = Run.objects.filter(parameters__bench_log=lines).values_list("pk", flat=True).first()
    if found:
        return found
    pipeline = Pipeline.objects.get(slug="payments-api")
    now = timezone.now()
    number = (
        Run.objects.filter(pipeline=pipeline)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
        or 0
    ) + 1  # noqa: E501
    run = Run.objects.create(
        pipeline=pipeline, version=pipeline.current_version, number=number, status="succeeded",
        parameters={"version": "9.9.9", "bench_log": lines}, created_at=now, started_at=now,
        finished_at=now,
    )  # fmt: skip
    stage = StageRun.objects.create(
        run=run, name="build", position=0, status="succeeded", started_at=now, finished_at=now
    )
    step = StepRun.objects.create(
        stage=stage, name="compile", position=0, status="succeeded", exit_code=0,
        log_lines=lines, started_at=now, finished_at=now,
    )  # fmt: skip
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    LogChunk.objects.bulk_create(
        [
            LogChunk(
                step=step,
                offset=i,
                line_count=min(200, lines - i),
                text="\n".join(
                    f"{stamp} compiling module {j} ... ok" for j in range(i, min(i + 200, lines))
                ),
            )  # fmt: skip
            for i in range(0, lines, 200)
        ],
        batch_size=500,
    )
    Pipeline.objects.filter(pk=pipeline.pk).update(next_run_number=number + 1)
    return run.pk


def session_for(username: str) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    u = User.objects.get(username=username)
    s = SessionStore()
    s[SESSION_KEY] = str(u.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = u.get_session_auth_hash()
    s.create()
    return s.session_key


# --- measure ------------------------------------------------------------------------------


def time_page(base: str, session: str, path: str, warmup: int, n: int) -> dict:
    import httpx

    times, sizes, statuses = [], set(), {}
    with httpx.Client(
        base_url=base, cookies={"sessionid": session}, timeout=60, follow_redirects=False
    ) as client:
        for _ in range(warmup):
            client.get(path)
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.get(path)
            body = r.content
            times.append((time.perf_counter() - t0) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            sizes.add(len(body))
    return {
        "path": path,
        "n": n,
        "statuses": statuses,
        "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
        "max_ms": round(max(times), 1),
        "mean_ms": round(sum(times) / len(times), 1),
        "body_kib": round(max(sizes) / 1024, 1),
    }


def profile_page(path: str, username: str) -> dict:
    """The page once in this process with the SQL captured (django.test.Client)."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(User.objects.get(username=username))
    client.get(path)  # warm
    best = None
    for _ in range(3):
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            r = client.get(path)
            total = (time.perf_counter() - t0) * 1000
        if best is None or total < best[0]:
            best = (total, list(ctx.captured_queries), r.status_code)
    total, queries, status = best
    sql_ms = sum(float(q["time"]) * 1000 for q in queries)
    slow = sorted(queries, key=lambda q: -float(q["time"]))[:5]
    out = {
        "status": status,
        "view_ms": round(total, 1),
        "queries": len(queries),
        "sql_ms": round(sql_ms, 1),
        "python_ms": round(total - sql_ms, 1),
        "slowest": [{"ms": round(float(q["time"]) * 1000, 1), "sql": q["sql"][:400]} for q in slow],
    }
    if slow and float(slow[0]["time"]) * 1000 > 20:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slow[0]["sql"])
            out["explain_slowest"] = [row[0] for row in cursor.fetchall()][:40]
    return out


def main(opts) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="clearway-pages-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": opts.database_url,
        "REDIS_URL": opts.redis_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "CLEARWAY_VAR_DIR": str(tmp / "var"),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    if opts.jit_off:
        # what-if: PostgreSQL's JIT off for this server's (and this process's) sessions
        env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c jit=off").strip()
    os.environ.update(env)
    harness.ensure_database(opts.database_url, recreate=opts.reseed)
    subprocess.run(
        [PY, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=600
    )
    subprocess.run(
        [PY, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    import django

    django.setup()
    from orchestrator.models import Run

    seeded = None
    have = Run.objects.count()
    if opts.reuse and have:
        seeded = {"reused": have}
    elif have < opts.runs:
        base = min(opts.runs, opts.orm_runs)
        if have < base:
            seeded = seed(base - have, opts.days, random.Random(20261128))
        if opts.runs > base:
            seeded = {"orm": seeded, "sql": multiply(opts.runs)}
    from django.db import connections

    data = data_summary()
    # The overview reads the metric rollups: a pass as beat makes it (the whole horizon on a
    # new database and once a day, --rollup-full to force it), then an incremental one (as
    # beat does every minute), both timed.
    from orchestrator import rollups

    rollup_passes = {
        "first": rollups.refresh(full=opts.rollup_full),
        "incremental": rollups.refresh(),
    }
    run_id = pick_run()
    long_runs = {n: long_log_run(n) for n in LONG_LOGS}
    session = session_for(DEVELOPER)
    connections.close_all()

    port = harness.free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        harness.uvicorn_command(port, "orchestrator.asgi:application", "--ws", "websockets-sansio"),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pages = {}
    try:
        harness.wait_listening(port, server, "server", (tmp / "server.log").read_text)
        base = f"http://127.0.0.1:{port}"
        load = [round(os.getloadavg()[0], 2)]
        paths = [("overview", "/"), ("run", f"/runs/{run_id}/")]
        paths += [(f"run_log_{n}", f"/runs/{pk}/") for n, pk in long_runs.items()]
        for name, path in paths:
            pages[name] = time_page(base, session, path, opts.warmup, opts.requests)
            load.append(round(os.getloadavg()[0], 2))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
        log.close()
    server_log = (tmp / "server.log").read_text(errors="replace")
    profiles = {name: profile_page(p["path"], DEVELOPER) for name, p in pages.items()}
    result = {
        "benchmark": "pages: overview and run page, DEBUG off, uvicorn, PostgreSQL",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "niceness": os.nice(0),
            "loadavg_1min_before_between_after": load,
        },
        "what_if": {"postgres_jit_off": opts.jit_off},
        "data": data,
        "seeded_now": seeded,
        "rollup_passes": rollup_passes,
        "user": DEVELOPER,
        "run_id": run_id,
        "pages": pages,
        "profile": profiles,
        "server_errors": server_log.count("Traceback"),
        "goals": {
            name: {
                "p95_ms": p["p95_ms"],
                "met (<= 300 ms)": p["p95_ms"] is not None
                and p["p95_ms"] <= GOAL_P95_MS
                and set(p["statuses"]) == {200},
            }
            for name, p in pages.items()
        },
        "logs": str(tmp),
    }
    return result


def write_results(r: dict) -> None:
    d, g = r["data"], r["goals"]
    yes = {True: "met", False: "NOT met"}
    lines = [
        f"\n## Run {r['date']}"
        + (
            " — what-if: PostgreSQL JIT off (PGOPTIONS=-c jit=off)"
            if r["what_if"]["postgres_jit_off"]
            else ""
        )
        + "\n",
        f"Python {r['machine']['python']}, {r['machine']['cpus']} CPUs, loopback, niceness "
        f"{r['machine']['niceness']}; 1-min load "
        f"average before / between / after: {r['machine']['loadavg_1min_before_between_after']}."
        f" Data: {d['runs']} runs ({d['runs_by_status']}), {d['stage_runs']} stage runs, "
        f"{d['step_runs']} step runs, {d['gates']} gates, {d['approvals']} approvals, "
        f"{d['policy_decisions']} policy decisions, {d['log_chunks']} log chunks, "
        f"{d['pipelines']} pipelines. User: {r['user']} (developer, 2 of 3 teams).\n",
        "| page | requests | status | p50 ms | p95 ms | max ms | body KiB | queries | SQL ms | "
        "view ms in-process | goal p95 <= 300 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["pages"].items():
        prof = r["profile"][name]
        lines.append(
            f"| {name} `{p['path']}` | {p['n']} | {p['statuses']} | {p['p50_ms']} | "
            f"{p['p95_ms']} | {p['max_ms']} | {p['body_kib']} | {prof['queries']} | "
            f"{prof['sql_ms']} | {prof['view_ms']} | {yes[g[name]['met (<= 300 ms)']]} |"
        )
    lines.append("")
    for name, prof in r["profile"].items():
        lines.append(
            f"Slowest queries, {name}: "
            + "; ".join(f"{q['ms']} ms `{q['sql'][:140]}…`" for q in prof["slowest"][:3])
            + ".\n"
        )
    rp = r.get("rollup_passes") or {}
    if rp:
        lines.append(
            f"Metric rollups (orchestrator/rollups.py): first pass {rp['first']['seconds']} s "
            f"({rp['first']['days']} days{', full' if rp['first']['rebuild'] else ''}), "
            f"incremental pass {rp['incremental']['seconds']} s "
            f"({rp['incremental']['days']} days).\n"
        )
    lines.append(f"Server log tracebacks: {r['server_errors']}.\n")
    harness.append_results(RESULTS, "Pages (benchmarks/pages.py)", "\n".join(lines))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--database-url", default=os.environ.get("BENCH_PAGES_DATABASE_URL", DEFAULT_DB))
    p.add_argument("--redis-url", default=os.environ.get("BENCH_PAGES_REDIS_URL", DEFAULT_REDIS))
    p.add_argument("--reseed", action="store_true", help="drop and re-create the database")
    p.add_argument(
        "--orm-runs",
        type=int,
        default=10_000,
        help="runs seeded through the ORM; beyond them the history is copied in SQL",
    )
    p.add_argument(
        "--reuse", action="store_true", help="use the database as it is, whatever its runs"
    )
    p.add_argument(
        "--rollup-full", action="store_true", help="make the first rollup pass a full one"
    )
    p.add_argument(
        "--jit-off", action="store_true", help="what-if: run the server with PGOPTIONS='-c jit=off'"
    )
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    options = parse()
    res = main(options)
    if not options.no_write:
        write_results(res)
    print(json.dumps(res, indent=1, default=str))

"""Sixty days of Northwind Health history, made through the product's own actions with a
travelled clock (time-machine), so every audit row is in the chain and verifies.

Steps are not executed: a simulated executor claims each dispatched step, writes log lines
drawn from the step's own `echo` commands and finishes it with the outcome the story needs.
A step that declares `artifacts:` gets the files its `cat > file <<TAG` here-documents write
(with the run's parameters filled in), stored through orchestrator.artifacts like a worker
stores them: the infra pipeline's plan reaches the production gate's plan policies.
Gates, approvals, rejections and the override go through governance.actions like a person's
clicks would."""

from __future__ import annotations

import random
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.utils import timezone

from governance import actions as gate_actions
from governance import policies
from governance.gates import GateError
from governance.models import Gate, GateStatus, Policy
from orchestrator import actions, artifacts
from orchestrator.executors import LogWriter
from orchestrator.models import Run, RunStatus, StepRun

BERLIN = ZoneInfo("Europe/Berlin")
ECHO = re.compile(r'^\s*echo\s+"([^"]*)"')
HEREDOC = re.compile(r"^cat > (\S+) <<'?(\w+)'?\n(.*?)\n\2$", re.M | re.S)
DEFAULT_JUSTIFICATION = (
    "INC-4211: card settlement is failing for all EU merchants; this hotfix must "
    "ship tonight. Rollback plan and incident channel linked in the ticket."
)


@dataclass
class Plan:
    """What happens to one run of the story."""

    pipeline: str
    at: datetime
    actor: str
    params: dict
    fail: dict[str, int] = field(default_factory=dict)  # stage → failing attempts
    gate: str = "approve"  # approve | reject | override | selfapprove | leave
    note: str = ""
    justification: str = DEFAULT_JUSTIFICATION  # of an override


class Clock:
    def __init__(self, traveller, start: datetime):
        self.traveller, self.now = traveller, start
        traveller.move_to(start)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        self.traveller.move_to(self.now)
        return self.now

    def to(self, when: datetime) -> None:
        self.now = max(self.now, when)
        self.traveller.move_to(self.now)


def _log_lines(step: StepRun, params: dict, run: Run, stage_name: str) -> list[str]:
    env = _step_env(step, params)
    lines = []
    for raw in (step.config.get("run") or "").splitlines():
        found = ECHO.match(raw)
        if found:
            text = re.sub(r"\$([A-Z_]+)", lambda m: env.get(m.group(1), ""), found.group(1))
            lines.append(text.replace('\\"', '"'))
    return lines or ["ok"]


def _step_env(step: StepRun, params: dict) -> dict[str, str]:
    env = {f"CLEARWAY_PARAM_{k.upper()}": v for k, v in params.items()}
    env["CLEARWAY_ENVIRONMENT"] = step.stage.environment.name if step.stage.environment_id else ""
    env["CLEARWAY_STAGE"] = step.stage.name
    return env


def _stored_files(step: StepRun, run: Run, now: datetime) -> list:
    """The step's declared artifacts, written from its here-documents and stored (unsaved
    rows for finish_step). Empty when the step declares none."""
    if not step.config.get("artifacts"):
        return []
    env = _step_env(step, run.parameters)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="clearway-demo-") as tmp:
        workspace = Path(tmp)
        for found in HEREDOC.finditer(step.config.get("run") or ""):
            text = re.sub(r"\$\(date [^)]*\)", stamp, found.group(3))
            text = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: env.get(m.group(1), ""), text)
            target = workspace / found.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
        return artifacts.store(step, run, workspace, artifacts.collect(step, workspace))


def _execute(queue: list, plan: Plan, clock: Clock, rng: random.Random) -> None:
    while queue:
        step_id, attempt, countdown = queue.pop(0)
        clock.advance(countdown + rng.uniform(3, 20))
        step = actions.claim_step(step_id, attempt, worker="history@northwind")
        if step is None:
            continue
        run = step.stage.run
        log = LogWriter(step, run.pk)
        for line in _log_lines(step, run.parameters, run, step.stage.name):
            clock.advance(rng.uniform(0.5, 6))
            log.add(line)
        failing = plan.fail.get(step.stage.name, 0) >= attempt
        if failing:
            log.add("Error: step failed (see above)", "err")
        log.flush()
        clock.advance(rng.uniform(5, 40))
        actions.finish_step(
            step_id,
            attempt,
            succeeded=not failing,
            exit_code=1 if failing else 0,
            error="exit code 1" if failing else "",
            now=clock.now,
            artifacts=[] if failing else _stored_files(step, run, clock.now),
        )


def _decide_gate(gate: Gate, plan: Plan, users: dict, clock: Clock, rng: random.Random) -> None:
    def approve(name: str, comment: str) -> None:
        clock.advance(rng.uniform(240, 1500))
        gate.refresh_from_db()
        if gate.status != GateStatus.WAITING:
            return
        try:
            gate_actions.approve_gate(gate, actor=users[name], comment=comment, now=clock.now)
        except GateError:
            pass

    if plan.gate == "leave":
        return
    if plan.gate == "selfapprove":
        clock.advance(rng.uniform(300, 900))
        try:
            gate_actions.approve_gate(gate, actor=users["sara"], comment="LGTM", now=clock.now)
        except GateError:
            pass  # refused: sara wrote the change (separation of duties) — and audited
        return
    if plan.gate == "reject":
        approve("sam", "Rollout plan looks fine.")
        clock.advance(rng.uniform(600, 2400))
        gate_actions.reject_gate(
            gate,
            actor=users["sofia"],
            comment="Rejected: the schema migration has no rollback plan. Add one and re-run.",
            now=clock.now,
        )
        return
    approve("sam", rng.choice(["Canary metrics reviewed.", "Looks good.", "Approved."]))
    approve("sara", rng.choice(["Change reviewed, go ahead.", "OK from SRE.", ""]))
    approve("sofia", rng.choice(["No security concerns.", "Dependency scan clean.", ""]))
    if plan.gate == "override":
        clock.advance(rng.uniform(120, 600))
        gate.refresh_from_db()
        gate_actions.override_gate(
            gate,
            actor=users["sam"],
            now=clock.now,
            justification=plan.justification,
        )


def _play(plan: Plan, users: dict, pipelines: dict, clock: Clock, rng: random.Random) -> Run:
    clock.to(plan.at)
    queue: list = []
    with actions.dispatching_to(lambda s, a, c=0: queue.append((s, a, c or 0))):
        run = actions.trigger_run(
            pipelines[plan.pipeline],
            actor=users[plan.actor],
            parameters=plan.params,
            trigger="manual",
            now=clock.now,
        )
        for _ in range(20):
            _execute(queue, plan, clock, rng)
            run.refresh_from_db()
            if run.status != RunStatus.WAITING:
                break
            gate = Gate.objects.filter(stage_run__run=run, status=GateStatus.WAITING).first()
            if gate is None or plan.gate in ("leave", "selfapprove"):
                break
            _decide_gate(gate, plan, users, clock, rng)
            if not queue:
                break
        if plan.gate == "selfapprove":
            # Sara wrote this change, so her sre approval cannot count: the gate is blocked
            # (two independent sre approvals are impossible) and her attempt is refused.
            gate = Gate.objects.filter(stage_run__run=run).first()
            if gate is not None:
                _decide_gate(gate, plan, users, clock, rng)
    run.refresh_from_db()
    return run


def _work_time(day: datetime, rng: random.Random, hour_range=(8.5, 13.0)) -> datetime:
    hour = rng.uniform(*hour_range)
    local = datetime(day.year, day.month, day.day, int(hour), int(hour % 1 * 60), tzinfo=BERLIN)
    return local.astimezone(UTC)


def build_plans(start: datetime, days: int, rng: random.Random) -> list[Plan]:
    plans: list[Plan] = []
    payments_minor, claims_minor, change_no = 10, 4, 100
    for offset in range(days):
        day = (start + timedelta(days=offset)).astimezone(BERLIN)
        if day.weekday() > 3:  # Fri–Sun: no production changes at Northwind
            continue
        for _ in range(3 if rng.random() < 0.4 else 2):
            payments_minor += 1
            branch = "main" if rng.random() > 0.12 else "release/2.x"
            plans.append(
                Plan(
                    "payments-api",
                    _work_time(day, rng),
                    "dana",
                    {
                        "version": f"2.{payments_minor}.0",
                        "commit": f"{rng.getrandbits(28):07x}",
                        "branch": branch,
                        "author": "dana",
                    },
                    fail={"unit-tests": 1} if rng.random() < 0.04 else {},
                )
            )
        if rng.random() < 0.8:
            claims_minor += 1
            flaky = rng.random()
            fail = {"test": 1} if flaky < 0.25 else ({"test": 2} if flaky < 0.3 else {})
            plans.append(
                Plan(
                    "claims-service",
                    _work_time(day, rng),
                    "dana",
                    {
                        "version": f"1.{claims_minor}.0",
                        "commit": f"{rng.getrandbits(28):07x}",
                        "author": "dana",
                    },
                    fail=fail,
                )
            )
        if offset % 2 == 0:
            change_no += 1
            plans.append(
                Plan(
                    "infra-network",
                    _work_time(day, rng),
                    "omar",
                    {"change": f"CHG-{change_no}: firewall rule update", "author": "omar"},
                )
            )
    plans.sort(key=lambda p: p.at)
    payments = [p for p in plans if p.pipeline == "payments-api"]
    # The story's exceptions, placed through the period.
    n = len(payments)
    failed = payments[n * 3 // 10]
    failed.fail, failed.note = {"deploy-production": 1}, "failed production deploy"
    fix = payments[n * 3 // 10 + 1]
    fix.note = "fix of the failed deploy"
    payments[n * 4 // 10].gate = "reject"
    hotfix = payments[n * 6 // 10]
    day = hotfix.at.astimezone(BERLIN)
    hotfix.at = datetime(day.year, day.month, day.day, 19, 40, tzinfo=BERLIN)
    hotfix.gate, hotfix.note = "override", "break-glass hotfix outside the change window"
    hotfix.params = {**hotfix.params, "branch": "hotfix/settlement"}
    infra = [p for p in plans if p.pipeline == "infra-network"]
    if len(infra) >= 4:
        # Omar opens the partner API to the whole internet: the plan policy blocks it.
        opened = infra[len(infra) // 3]
        opened.params = {
            **opened.params,
            "change": "CHG-2190: partner API reachable from partners' networks",
            "ingress_cidr": "0.0.0.0/0",
        }
        opened.note = "blocked by plan-no-open-ingress"
        # A subnet for the claims migration before its cost center exists: an override.
        untagged = infra[len(infra) * 2 // 3]
        untagged.params = {
            **untagged.params,
            "change": "CHG-2231: subnet for the claims database migration",
            "cost_center": "",
        }
        untagged.gate, untagged.note = "override", "override of plan-required-tags"
        untagged.justification = (
            "CHG-2231: finance creates the claims-migration cost center next week (FIN-881); "
            "the migration window is tonight. Tags are backfilled in CHG-2240."
        )
    claims = [p for p in plans if p.pipeline == "claims-service"]
    selfish = claims[len(claims) * 3 // 4]
    selfish.params = {**selfish.params, "author": "sara"}
    selfish.gate, selfish.fail = "selfapprove", {}
    return plans


def seed_history(users: dict, pipelines: dict, *, days: int = 60, out=None) -> int:
    if Run.objects.exists():
        return 0
    rng = random.Random(20261128)  # noqa: S311 — a demo story, not security
    real_now = timezone.now()
    start = real_now - timedelta(days=days)
    plans = build_plans(start, days, rng)
    policy_edit_at = start + timedelta(days=days // 2)
    edited = False
    import time_machine  # the optional `demo` extra (seed_demo checks for it first)

    with time_machine.travel(start, tick=False) as traveller:
        clock = Clock(traveller, start)
        for index, plan in enumerate(plans):
            if not edited and plan.at > policy_edit_at:
                _edit_policy(users["paula"], clock)
                edited = True
            _play(plan, users, pipelines, clock, rng)
            if out is not None and index % 25 == 0:
                out.write(f"  history: {index + 1}/{len(plans)} runs\n")
        # One release waiting for approval right now, for the inbox.
        pending = Plan(
            "payments-api",
            real_now - timedelta(hours=2),
            "dana",
            {"version": "2.99.0", "commit": "9f3c2ab", "branch": "main", "author": "dana"},
            gate="leave",
        )
        _play(pending, users, pipelines, clock, rng)
    return len(plans) + 1


def _edit_policy(author, clock: Clock) -> None:
    """Halfway through, the policy admin lets hotfix branches through the main-branch
    warning (a real edit, published with its test cases passing)."""
    policy = Policy.objects.filter(name="main-branch").first()
    if policy is None or policy.versions.count() > 1:
        return
    clock.advance(60)
    source = policy.source.replace(
        '\tbranch != "main"\n',
        '\tbranch != "main"\n\tnot startswith(branch, "hotfix/")\n',
    )
    if source == policy.source:
        source = policy.source + "\n# Reviewed by the change advisory board.\n"
    try:
        policies.save_draft(policy, actor=author, source=source, now=clock.now)
        policies.publish_policy(policy, actor=author, now=clock.now)
    except policies.PolicyActionError:
        policies.save_draft(policy, actor=author, source=policy.source, now=clock.now)

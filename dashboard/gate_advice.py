"""What the gate panel tells a person besides the gate's state: why they cannot approve or
override (so a button is offered only when the action can succeed), when approvals expire,
when a held gate moves on by itself, who may override and why an override is possible.

Everything here is read-only and works on what `dashboard.views.gate_panel_context` already
loaded (the gates with "may approve / may override" subqueries, their approvals, decisions
and overrides, the rules with their members): the run page's query count is pinned, so the
answers are decided without a query per question. The rules are those of governance.gates
(`approve_problem` = permission, rule group, separation of duties, state, duplicate;
`state_problem`; `sod_violation`), in the same order and wording; `state_problem` and
`sod_violation` are called as they are. The only query is the list of who may override, and
only when a soft-mandatory denial holds the gate (an override is possible at all).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q

from governance import gates as gate_rules
from governance.models import Enforcement, Environment, Gate, GateStatus
from orchestrator.models import Run

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def recheck_seconds() -> int:
    """How often waiting gates are re-examined (the beat's gate-housekeeping schedule)."""
    entry = getattr(settings, "CELERY_BEAT_SCHEDULE", {}).get("gate-housekeeping", {})
    try:
        return int(float(entry.get("schedule", 30)))
    except (TypeError, ValueError):
        return 30


def approve_refusal(gate: Gate, run: Run, user, rules: list[dict]) -> str:
    """Why `user` cannot approve (or reject) `gate` now; "" when they can. The order and the
    messages of governance.gates.approve_problem, decided without a query."""
    env = gate.environment
    name = user.get_username()
    if not gate.may_approve:
        return (
            f"You may not approve deployments to {env.name}. (The approve permission on the "
            f"environment is missing.)"
        )
    groups = [r["group"] for r in rules]
    if not groups:
        return f"{env.name} has no approval rules, so nobody approves its gates."
    if not any(m["username"] == name for r in rules for m in r["members"]):
        return f"{name} is not in an approval group of {env.name} ({', '.join(groups)})."
    sod = gate_rules.sod_violation(run, user)
    if sod:
        return sod[0].upper() + sod[1:] + "."
    problem = gate_rules.state_problem(gate, run)
    if problem:
        return problem.message[0].upper() + problem.message[1:] + "."
    return ""


def override_refusal(gate: Gate, run: Run) -> str:
    """Why nobody's override would pass `gate` now, or "" (the permission is asked apart)."""
    problem = gate_rules.state_problem(gate, run)
    if problem:
        return problem.message[0].upper() + problem.message[1:] + "."
    if gate.denials_to_pass:
        return ""
    hard = [d for d in gate.denials if d.enforcement == Enforcement.HARD_MANDATORY]
    if hard:
        names = ", ".join(d.policy_version.policy.name for d in hard)
        return (
            f"No override is possible: only hard-mandatory policies deny this gate ({names}), "
            f"and those can never be overridden."
        )
    return ""


def overriders(env: Environment) -> list[str]:
    """Usernames of the active users holding the override permission on `env` (granted to
    them or to one of their groups, for this environment or every one), superusers apart:
    one query."""
    User = get_user_model()
    codename = "override_environment"
    pk = str(env.pk)
    held = (
        Q(
            userobjectpermission__permission__codename=codename,
            userobjectpermission__object_pk=pk,
        )
        | Q(
            groups__groupobjectpermission__permission__codename=codename,
            groups__groupobjectpermission__object_pk=pk,
        )
        | Q(user_permissions__codename=codename)
        | Q(groups__permissions__codename=codename)
    )
    names = (
        User.objects.filter(held, is_active=True, is_superuser=False)
        .values_list("username", flat=True)
        .distinct()
        .order_by("username")
    )
    return list(names)


def _aware(value) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo("UTC"))


def active_freeze(env: Environment, now: datetime) -> dict | None:
    """The freeze window in force at `now` that ends last ({"end": datetime, "reason"})."""
    found = None
    for window in env.freeze_windows or []:
        if not isinstance(window, dict):
            continue
        start, end = _aware(window.get("start")), _aware(window.get("end"))
        if start and end and start <= now < end and (found is None or end > found["end"]):
            found = {"end": end, "reason": str(window.get("reason") or "")}
    return found


def next_change_window(env: Environment, now: datetime) -> datetime | None:
    """When the next change window opens after `now` (None: no windows, or in one now)."""
    windows = [w for w in env.change_windows or [] if isinstance(w, dict)]
    if not windows:
        return None
    try:
        zone = ZoneInfo(env.timezone or "UTC")
    except (KeyError, ValueError):
        return None
    local = now.astimezone(zone)
    best = None
    for window in windows:
        try:
            hour, minute = str(window["start"]).split(":")
            start = time(int(hour), int(minute))
        except (KeyError, TypeError, ValueError):
            continue
        days = window.get("days")
        days = set(range(7)) if days is None else set(days)
        for ahead in range(8):
            day = (local + timedelta(days=ahead)).date()
            if day.weekday() not in days:
                continue
            opens = datetime.combine(day, start, tzinfo=zone)
            if opens > local and (best is None or opens < best):
                best = opens
                break
    return best.astimezone(ZoneInfo("UTC")) if best else None


def resume_note(gate: Gate, now: datetime) -> str:
    """When a held gate moves on by itself, or that a blocked one never does."""
    if gate.status == GateStatus.BLOCKED:
        return (
            "A blocked gate does not resume: fix what blocked it and start the run again "
            "(Retry); the new run gets a gate of its own."
        )
    if gate.status != GateStatus.WAITING:
        return ""
    every = recheck_seconds()
    env = gate.environment
    freeze = active_freeze(env, now)
    if freeze:
        why = f" ({freeze['reason']})" if freeze["reason"] else ""
        return (
            f"Deployments to {env.name} are frozen until {freeze['end']:%Y-%m-%d %H:%M:%S} "
            f"UTC{why}. The gate is re-checked every {every} s and resumes by itself when the "
            f"freeze ends, if its approvals still hold then."
        )
    opens = next_change_window(env, now)
    if opens is not None and not _in_change_window(env, now):
        return (
            f"{env.name} is outside its change windows; the next one opens "
            f"{opens:%Y-%m-%d %H:%M} UTC. The gate is re-checked every {every} s and resumes by "
            f"itself then, if its approvals still hold."
        )
    return f"The gate is re-checked every {every} s and moves on as soon as everything holds."


def _in_change_window(env: Environment, now: datetime) -> bool:
    try:
        return env.in_change_window(now)
    except (KeyError, TypeError, ValueError, LookupError):
        return True


def expiry_note(env: Environment) -> str:
    hours = env.approval_ttl_hours
    if not hours:
        return f"Approvals of deployments to {env.name} do not expire."
    return (
        f"An approval counts for {hours} h ({env.name}'s setting) and becomes void sooner if "
        f"what it approved changes; each approval below says when it expires."
    )


def explain(gate: Gate, run: Run, user, rules: list[dict], now: datetime) -> None:
    """Decorate a gate of the panel (after views._decorate_gate) with the answers above."""
    waiting = gate.status == GateStatus.WAITING
    gate.expiry_note = expiry_note(gate.environment)
    gate.resume_note = resume_note(gate, now)
    gate.approve_refusal = ""
    if waiting and gate.my_decision is None:
        gate.approve_refusal = approve_refusal(gate, run, user, rules)
    gate.acting_for = None
    if waiting and gate.my_decision is None and gate.approve_refusal and gate.standing_in:
        # A delegate: whether they may decide for someone they stand in for needs the
        # delegators' rights, so here (only for them) governance.gates decides with queries.
        principal, problem = gate_rules.approval_principal(gate, run, user, now=now)
        if problem is None:
            gate.approve_refusal, gate.acting_for = "", principal
        elif problem.rule not in ("permission", "eligibility"):
            gate.approve_refusal = problem.message[0].upper() + problem.message[1:] + "."
    gate.can_decide = waiting and gate.my_decision is None and not gate.approve_refusal
    gate.override_refusal = override_refusal(gate, run) if waiting else ""
    possible = waiting and bool(gate.denials_to_pass) and not gate.override_refusal
    gate.override_possible = possible
    gate.overriders = overriders(gate.environment) if possible else []
    gate.can_override = possible and gate.may_override
    # Break-glass is not a way around separation of duties (governance.actions.override_gate
    # refuses the triggerer, the author and the last editor): no button they cannot use.
    gate.override_sod = ""
    if gate.can_override:
        sod = gate_rules.sod_violation(run, user, verb="override")
        if sod:
            gate.can_override = False
            gate.override_sod = sod[0].upper() + sod[1:] + "."


def run_outcome(run: Run, gates: list[Gate]) -> dict:
    """What the run header says besides the status: who rejected it (a rejection is a
    decision, not a failure) and who overrode one of its gates."""
    rejected_by = ""
    if run.status == "blocked":
        for gate in gates:
            if gate.status != GateStatus.REJECTED:
                continue
            rejections = [a for a in gate.all_approvals if a.decision == "reject" and not a.void]
            if rejections:
                rejected_by = rejections[-1].user.get_username()
    overridden_by = sorted({o.user.get_username() for g in gates for o in g.all_overrides})
    return {"rejected_by": rejected_by, "overridden_by": overridden_by}

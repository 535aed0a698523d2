"""Who may decide a gate: approvals attributed to the environment's rules (a maximum
bipartite matching), separation of duties, eligibility and the state a decision needs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from guardian.shortcuts import get_users_with_perms

from orchestrator.models import PipelineVersion, Run, StageRun, StageStatus

from . import identity
from .errors import GateConflict, GateError, GateRefused
from .models import Approval, ApprovalDecision, Environment, Gate, GateStatus
from .permissions import can


def match_approvals(
    rules: Sequence[tuple[str, int]], approvers: Sequence[tuple[Any, Iterable[str]]]
) -> dict[Any, str | None]:
    """Attribute approvers to rule slots by a maximum bipartite matching.

    `rules` are (group, required count); `approvers` are (key, groups), earliest first. Each
    rule becomes `count` slots; an approver may fill one slot of a group it belongs to. The
    augmenting-path algorithm (Kuhn) finds a largest assignment, so a person in two groups
    is used where they are needed and still counts once. Returns key -> group (None when the
    approver fills no slot: everything they could fill is already full)."""
    slots = [group for group, count in rules for _ in range(count)]
    owner: list[int | None] = [None] * len(slots)
    memberships = [set(groups) for _, groups in approvers]

    def assign(i: int, visited: set[int]) -> bool:
        for s, group in enumerate(slots):
            if s in visited or group not in memberships[i]:
                continue
            visited.add(s)
            if owner[s] is None or assign(owner[s], visited):
                owner[s] = i
                return True
        return False

    for i in range(len(approvers)):
        assign(i, set())
    result: dict[Any, str | None] = {key: None for key, _ in approvers}
    for s, i in enumerate(owner):
        if i is not None:
            result[approvers[i][0]] = slots[s]
    return result


@dataclass
class RuleProgress:
    group: str
    required: int
    given: int = 0
    approvers: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """How far the live approvals of a gate go towards its environment's rules."""

    rules: list[RuleProgress]
    attributed: dict[int, str]  # approval pk -> group ("" when it fills no slot)

    @property
    def satisfied(self) -> bool:
        return all(r.given >= r.required for r in self.rules)

    def missing(self) -> str:
        parts = [
            f"{r.required - r.given} more from {r.group}"
            for r in self.rules
            if r.given < r.required
        ]
        return ", ".join(parts)

    def summary(self) -> list[dict]:
        return [{"group": r.group, "count": r.required, "given": r.given} for r in self.rules]


def escalated_groups(gate: Gate) -> dict[str, str]:
    """Rule group -> backup group, for the rules of `gate` whose SLA passed."""
    return dict(gate.escalations.values_list("group__name", "backup_group__name"))


def effective_groups(groups: Iterable[str], escalated: dict[str, str]) -> list[str]:
    """An approver's groups for rule matching: their own, plus every rule group escalated to
    a backup group they are in."""
    own = set(groups)
    return sorted(own | {rule for rule, backup in escalated.items() if backup in own})


def approval_progress(
    environment: Environment,
    approvals: Sequence[Approval],
    escalated: dict[str, str] | None = None,
) -> Progress:
    """Attribute the live "approve" decisions (earliest first) to the environment's rules
    (an escalated rule also takes its backup group's members)."""
    rules = [
        RuleProgress(rule.group.name, rule.required_count)
        for rule in environment.approval_rules.select_related("group").order_by("group__name")
    ]
    approving = [a for a in approvals if a.decision == ApprovalDecision.APPROVE and not a.void]
    matched = match_approvals(
        [(r.group, r.required) for r in rules],
        [(a.pk, effective_groups(a.groups, escalated or {})) for a in approving],
    )
    by_group = {r.group: r for r in rules}
    for approval in approving:
        group = matched.get(approval.pk)
        if group:
            by_group[group].given += 1
            by_group[group].approvers.append(approval.user.get_username())
    return Progress(rules, {a.pk: matched.get(a.pk) or "" for a in approving})


def _last_deployed_version(run: Run, environment: Environment) -> int:
    """The pipeline version number that last reached `environment` before this run (0: none)."""
    number = (
        StageRun.objects.filter(
            run__pipeline_id=run.pipeline_id,
            environment=environment,
            status=StageStatus.SUCCEEDED,
            run__created_at__lt=run.created_at,
        )
        .order_by("-finished_at")
        .values_list("run__version__number", flat=True)
        .first()
    )
    return number or 0


def sod_violation(
    run: Run, user, *, environment: Environment | None = None, verb: str = "approve"
) -> str | None:
    """Why separation of duties forbids `user` to `verb` (approve, override) `run`, or None.

    Excluded: whoever triggered the run or any run it retries (a retry started by someone
    else does not launder the change), the author of the change (run parameter `author`,
    compared with the username, e-mail address and full name after normalization —
    governance.identity: `Name <email>`, case, full-width forms, zero-width characters —
    and everyone who
    edited the pipeline version being deployed since the previous deployment to
    `environment` (without one: the author of the run's version)."""
    name = user.get_username()
    tail = f"and may not {verb} it"
    current, hops = run, 0
    while current is not None and hops < 50:
        if current.triggered_by_id is not None and current.triggered_by_id == user.pk:
            if current is run:
                return f"separation of duties: {name} triggered this run {tail}"
            return (
                f"separation of duties: {name} triggered run #{current.number}, which this "
                f"run retries, {tail}"
            )
        current, hops = current.retry_of, hops + 1
    author = (run.parameters or {}).get("author")
    if isinstance(author, str) and author.strip():
        if identity.names_person(author, user):
            return (
                f"separation of duties: {name} is the author of the change "
                f"(run parameter author) {tail}"
            )
    version = run.version
    if version.author_id is not None and version.author_id == user.pk:
        return (
            f"separation of duties: {name} last edited the pipeline (version "
            f"{version.number}) {tail}"
        )
    if environment is not None:
        since = _last_deployed_version(run, environment)
        edited = (
            PipelineVersion.objects.filter(
                pipeline_id=run.pipeline_id,
                number__gt=since,
                number__lte=version.number,
                author_id=user.pk,
            )
            .order_by("-number")
            .values_list("number", flat=True)
            .first()
        )
        if edited is not None:
            return (
                f"separation of duties: {name} edited the pipeline (version {edited}) since "
                f"its last deployment to {environment.name} {tail}"
            )
    return None


def rule_groups(environment: Environment) -> list[str]:
    return list(
        environment.approval_rules.order_by("group__name").values_list("group__name", flat=True)
    )


def eligibility_problem(gate: Gate, user) -> GateRefused | None:
    """Why `user` may not approve or reject gates like `gate` (permission, rule groups)."""
    name = user.get_username() if user is not None else "anonymous"
    env = gate.environment
    if not can(user, "approve", gate):
        return GateRefused(
            f"{name} may not approve deployments to {env.name}: the approve permission on the "
            f"environment is missing",
            rule="permission",
        )
    groups = rule_groups(env)
    if not groups:
        return GateRefused(
            f"{env.name} has no approval rules, so nobody approves its gates", rule="eligibility"
        )
    groups += sorted(set(escalated_groups(gate).values()) - set(groups))
    if not user.groups.filter(name__in=groups).exists():
        return GateRefused(
            f"{name} is not in an approval group of {env.name} ({', '.join(groups)})",
            rule="eligibility",
        )
    return None


def state_problem(gate: Gate, run: Run) -> GateConflict | None:
    """Why `gate` cannot take a decision now, or None while it is waiting."""
    if gate.status != GateStatus.WAITING:
        what = {
            GateStatus.OPEN: "is already open",
            GateStatus.OVERRIDDEN: "is already open (overridden)",
            GateStatus.REJECTED: "was rejected",
            GateStatus.BLOCKED: "is blocked",
            GateStatus.EXPIRED: "has expired",
        }.get(gate.status, f"is {gate.status}")
        reason = f": {gate.reason}" if gate.reason else ""
        return GateConflict(f"gate {gate.pk} {what}{reason}; it takes no more decisions")
    if run.is_terminal:
        return GateConflict(f"run #{run.number} already ended ({run.status})")
    if gate.stage_run.is_terminal:
        return GateConflict(f"stage {gate.stage_run.name} already ended ({gate.stage_run.status})")
    return None


def approve_problem(gate: Gate, run: Run, user) -> GateError | None:
    """Why `user` may not approve `gate` now (the first rule that refuses), or None."""
    problem = eligibility_problem(gate, user)
    if problem:
        return problem
    sod = sod_violation(run, user, environment=gate.environment)
    if sod:
        return GateRefused(sod, rule="separation-of-duties")
    problem = state_problem(gate, run)
    if problem:
        return problem
    existing = gate.approvals.filter(user=user, void=False).first()
    if existing:
        verb = "approved" if existing.decision == ApprovalDecision.APPROVE else "rejected"
        return GateConflict(
            f"{user.get_username()} already {verb} gate {gate.pk}", rule="duplicate"
        )
    return None


def eligible_approvers(gate: Gate, run: Run | None = None) -> list:
    """Active users who may approve `gate`: in one of its rule groups, holding the approve
    permission, and not excluded by separation of duties."""
    run = run or gate.stage_run.run
    groups = rule_groups(gate.environment)
    if not groups:
        return []
    groups += sorted(set(escalated_groups(gate).values()) - set(groups))
    User = get_user_model()
    candidates = (
        User.objects.filter(is_active=True, groups__name__in=groups).distinct().order_by("username")
    )
    return [
        u
        for u in candidates
        if sod_violation(run, u, environment=gate.environment) is None and can(u, "approve", gate)
    ]


def overriders(gate: Gate) -> list:
    """Active users who may override `gate` (break-glass), for notifications."""
    users = get_users_with_perms(
        gate.environment,
        with_group_users=True,
        only_with_perms_in=["override_environment"],
    )
    return [u for u in users if u.is_active and can(u, "override", gate)]

"""Who may decide a gate: approvals attributed to the environment's rules (a maximum
bipartite matching), separation of duties, eligibility and the state a decision needs.

Delegation (governance.delegation): while a Delegation is in force, its delegate may decide
with the delegator's rights — the delegator's approve permission and approval groups — on
gates the delegate can see. Separation of duties applies to both: the delegate (the person
acting) and the delegator (whose vote it is) must each be allowed to approve the run. One
person still decides once per gate, and the delegator's vote counts once: the delegator
and their delegate cannot both approve the same gate. Delegations do not chain."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from guardian.shortcuts import get_users_with_perms

from orchestrator.models import PipelineVersion, Run, StageRun, StageStatus

from . import identity
from .errors import GateConflict, GateError, GateRefused
from .models import Approval, ApprovalDecision, Delegation, Environment, Gate, GateStatus
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


def delegators_of(user, now=None) -> list:
    """The people `user` stands in for now (delegations in force), by username."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return []
    return [
        d.delegator
        for d in Delegation.objects.active(now)
        .filter(delegate=user)
        .select_related("delegator")
        .order_by("delegator__username")
    ]


def _own_eligibility(gate: Gate, user) -> GateRefused | None:
    """Why `user`'s own rights do not let them decide gates like `gate` (permission, rule
    groups)."""
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


def _delegated_eligibility(gate: Gate, user, delegator) -> GateRefused | None:
    """Why `user` may not decide `gate` with `delegator`'s rights (a delegation in force
    is assumed): the delegator's own eligibility, and the delegate must see the gate."""
    problem = _own_eligibility(gate, delegator)
    if problem:
        return GateRefused(
            f"{user.get_username()} cannot decide for {delegator.get_username()}: "
            f"{problem.message}",
            rule=problem.rule,
        )
    if not can(user, "view", gate):
        return GateRefused(
            f"{user.get_username()} may not see the pipeline of this gate, so cannot decide "
            f"it for {delegator.get_username()}",
            rule="permission",
        )
    return None


def _principals(gate: Gate, user, on_behalf_of, now) -> list | GateRefused:
    """Whose rights `user` may decide `gate` with, in the order they are tried: None (their
    own) first, then each delegator; only `on_behalf_of` when it is given."""
    if user is None or not getattr(user, "is_authenticated", False):
        return [None]
    delegators = delegators_of(user, now)
    if on_behalf_of is None:
        return [None, *delegators]
    if on_behalf_of.pk == user.pk:
        return [None]
    match = [d for d in delegators if d.pk == on_behalf_of.pk]
    if not match:
        return GateRefused(
            f"{user.get_username()} holds no delegation from {on_behalf_of.get_username()} "
            f"in force now, so cannot decide for them",
            rule="delegation",
        )
    return match


def _eligibility(gate: Gate, user, principal) -> GateRefused | None:
    if principal is None:
        return _own_eligibility(gate, user)
    return _delegated_eligibility(gate, user, principal)


def acting_for(gate: Gate, user, *, on_behalf_of=None, now=None) -> tuple[Any, GateRefused | None]:
    """(principal, problem) for deciding `gate` without the separation-of-duties rules
    (rejecting): principal None = on their own rights, a user = for that delegator."""
    principals = _principals(gate, user, on_behalf_of, now)
    if isinstance(principals, GateRefused):
        return None, principals
    first = None
    for principal in principals:
        problem = _eligibility(gate, user, principal)
        if problem is None:
            return principal, None
        first = first or problem
    return None, first


def eligibility_problem(gate: Gate, user, *, on_behalf_of=None, now=None) -> GateRefused | None:
    """Why `user` may not approve or reject gates like `gate` (permission, rule groups) —
    neither on their own rights nor for someone they stand in for."""
    return acting_for(gate, user, on_behalf_of=on_behalf_of, now=now)[1]


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


def _sod_for(run: Run, user, principal, environment) -> str | None:
    sod = sod_violation(run, user, environment=environment)
    if sod or principal is None:
        return sod
    theirs = sod_violation(run, principal, environment=environment)
    if theirs:
        return (
            f"separation of duties: {user.get_username()} would approve for "
            f"{principal.get_username()}, and {theirs.removeprefix('separation of duties: ')} "
            f"(a delegation never passes separation of duties)"
        )
    return None


def _duplicate(gate: Gate, user, principal) -> GateConflict | None:
    live = list(
        gate.approvals.filter(void=False).select_related("user", "on_behalf_of").order_by("pk")
    )

    def verb(a: Approval) -> str:
        return "approved" if a.decision == ApprovalDecision.APPROVE else "rejected"

    for a in live:
        if a.user_id == user.pk:
            return GateConflict(
                f"{user.get_username()} already {verb(a)} gate {gate.pk}"
                + (f" for {a.on_behalf_of.get_username()}" if a.on_behalf_of_id else ""),
                rule="duplicate",
            )
    # The vote of one person counts once, cast by them or by their delegate.
    voter = principal or user
    for a in live:
        if a.on_behalf_of_id == voter.pk or (principal is not None and a.user_id == voter.pk):
            by = a.user.get_username()
            return GateConflict(
                f"{voter.get_username()}'s decision on gate {gate.pk} was already given "
                f"({by} {verb(a)}"
                + (f" for {voter.get_username()})" if a.user_id != voter.pk else ")"),
                rule="duplicate",
            )
    return None


def approval_principal(
    gate: Gate, run: Run, user, *, on_behalf_of=None, now=None
) -> tuple[Any, GateError | None]:
    """(principal, problem) of approving `gate` now: principal None = on `user`'s own
    rights, a user = for that delegator. The first rule that refuses, in this order:
    permission and rule group, separation of duties (of `user`, and of the delegator),
    state, duplicate. When `user` may act both ways, their own rights come first."""
    principals = _principals(gate, user, on_behalf_of, now)
    if isinstance(principals, GateRefused):
        return None, principals
    first: GateError | None = None
    for principal in principals:
        problem: GateError | None = _eligibility(gate, user, principal)
        if problem is None:
            sod = _sod_for(run, user, principal, gate.environment)
            if sod:
                problem = GateRefused(sod, rule="separation-of-duties")
        if problem is None:
            problem = state_problem(gate, run)
        if problem is None:
            problem = _duplicate(gate, user, principal)
        if problem is None:
            return principal, None
        # Prefer the refusal of a way the user was eligible for (it says more).
        if first is None or (
            first.rule in ("permission", "eligibility")
            and problem.rule not in ("permission", "eligibility")
        ):
            first = problem
    return None, first


def approve_problem(gate: Gate, run: Run, user, *, on_behalf_of=None, now=None) -> GateError | None:
    """Why `user` may not approve `gate` now (the first rule that refuses), or None."""
    return approval_principal(gate, run, user, on_behalf_of=on_behalf_of, now=now)[1]


def eligible_approvers(gate: Gate, run: Run | None = None, *, with_delegates: bool = False) -> list:
    """Active users who may approve `gate`: in one of its rule groups, holding the approve
    permission, and not excluded by separation of duties. `with_delegates`: also whoever
    stands in for one of them now (a delegation in force), when separation of duties lets
    them and they can see the gate (notifications)."""
    run = run or gate.stage_run.run
    groups = rule_groups(gate.environment)
    if not groups:
        return []
    groups += sorted(set(escalated_groups(gate).values()) - set(groups))
    User = get_user_model()
    candidates = (
        User.objects.filter(is_active=True, groups__name__in=groups).distinct().order_by("username")
    )
    eligible = [
        u
        for u in candidates
        if sod_violation(run, u, environment=gate.environment) is None and can(u, "approve", gate)
    ]
    if not with_delegates or not eligible:
        return eligible
    seen = {u.pk for u in eligible}
    delegations = (
        Delegation.objects.active()
        .filter(delegator__in=[u.pk for u in eligible])
        .select_related("delegate")
        .order_by("delegate__username")
    )
    for d in delegations:
        delegate = d.delegate
        if delegate.pk in seen:
            continue
        if sod_violation(run, delegate, environment=gate.environment) is None and can(
            delegate, "view", gate
        ):
            seen.add(delegate.pk)
            eligible.append(delegate)
    return eligible


def overriders(gate: Gate) -> list:
    """Active users who may override `gate` (break-glass), for notifications."""
    users = get_users_with_perms(
        gate.environment,
        with_group_users=True,
        only_with_perms_in=["override_environment"],
    )
    return [u for u in users if u.is_active and can(u, "override", gate)]

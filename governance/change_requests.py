"""Four eyes on governance changes: the verbs of change requests.

Publishing a policy (which also changes its enforcement), changing a policy's scope or
enabling / disabling it, and changing an environment's controls (settings, protection,
approval rules, freeze and change windows) are *proposed* here and take effect only when a
second person approves: someone other than the proposer who holds the permission the change
itself needs (policy admins for policies, environment admins for environments). On approval
the existing verbs do the work — governance.policies.publish_policy / save_draft and
governance.actions.update_environment — inside `audit.attached(...)`, so the rows they write
name the change request, its proposer and its approver.

A superuser may apply a pending request alone with a justification of at least
MIN_JUSTIFICATION characters; the request is flagged as an exception (the change report's
exceptions list it).

A request records the target's state when it was proposed (`base`); if the target changed
since, approving it is refused as stale. A new proposal for the same target and kind
supersedes the pending one. Statuses move through CHANGE_REQUEST_MACHINE, written by
orchestrator.lifecycle.change_request. Every verb is audited ("change_request.*"), and so is
every refused attempt (in its own transaction, after the refused one rolled back).

The policy tests and the dry run of a publication run at proposal time, before any
transaction opens (the evaluators are never waited on inside a transaction); approving a
publication runs publish_policy's tests again, after the request is marked approved and
outside a lock — a failure there puts the request back to pending, with the error.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable
from datetime import datetime

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator import lifecycle

from . import actions, audit, notifications, policies, rego
from .models import (
    ChangeRequest,
    ChangeRequestKind,
    ChangeRequestStatus,
    Environment,
    Outcome,
    Policy,
)
from .permissions import can, can_edit_policies, restrict

MIN_JUSTIFICATION = 20
DRY_RUN_DAYS = 30
DRY_RUN_CHANGED_KEPT = 20

__all__ = [
    "MIN_JUSTIFICATION",
    "ChangeRequestConflict",
    "ChangeRequestError",
    "ChangeRequestInvalid",
    "ChangeRequestRefused",
    "apply_alone_as_superuser",
    "approve",
    "pending_for",
    "propose_environment_update",
    "propose_policy_publish",
    "propose_policy_scope",
    "reject",
    "withdraw",
]


class ChangeRequestError(Exception):
    """A refused change-request verb, with a message for the person who asked and the rule
    that refused it (permission, own-request, state, stale, justification, …)."""

    def __init__(self, message: str, *, rule: str = ""):
        super().__init__(message)
        self.message = message
        self.rule = rule


class ChangeRequestRefused(ChangeRequestError):
    """Not allowed for this person (403)."""


class ChangeRequestConflict(ChangeRequestError):
    """Not possible in the request's or the target's current state (409)."""


class ChangeRequestInvalid(ChangeRequestError):
    """Bad input (400)."""


# --- helpers ----------------------------------------------------------------------------


def _name(user) -> str:
    return user.get_username() if user is not None else ""


def _hash(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _may_change(user, request: ChangeRequest) -> bool:
    """The permission the change itself needs (the same as the direct change had)."""
    if request.policy_id:
        return can_edit_policies(user)
    return can(user, "change", request.environment)


def _target_of(request: ChangeRequest):
    return request.policy if request.policy_id else request.environment


def _refused(actor, action: str, target, exc: ChangeRequestError, now: datetime, **details):
    """Audit a refused attempt in its own transaction (the attempt's rolled back)."""
    with transaction.atomic():
        audit.record(
            actor,
            action,
            target,
            outcome=Outcome.DENIED,
            at=now,
            rule=exc.rule,
            message=exc.message,
            **details,
        )


def _supersede(kind: str, *, policy=None, environment=None, by: ChangeRequest, now) -> list[int]:
    older = ChangeRequest.objects.select_for_update().filter(
        kind=kind, status=ChangeRequestStatus.PENDING, policy=policy, environment=environment
    )
    ids = []
    for old in older.exclude(pk=by.pk):
        old.error = f"superseded by change request {by.pk}"
        lifecycle.change_request(old, ChangeRequestStatus.SUPERSEDED, now=now, fields=("error",))
        ids.append(old.pk)
    return ids


def _create(kind, *, actor, now, policy=None, environment=None, **fields) -> ChangeRequest:
    """Create a pending request (in the caller's transaction), supersede older ones, audit
    and tell the reviewers."""
    request = ChangeRequest.objects.create(
        kind=kind,
        policy=policy,
        environment=environment,
        proposed_by=actor,
        proposed_at=now,
        **fields,
    )
    superseded = _supersede(kind, policy=policy, environment=environment, by=request, now=now)
    audit.record(
        actor,
        "change_request.propose",
        request,
        at=now,
        kind=kind,
        subject=request.target_name,
        summary=request.summary,
        diff=request.diff.get("fields", []),
        checks=_checks_summary(request.checks),
        superseded=superseded,
    )
    notifications.schedule_change_request(request)
    return request


def _checks_summary(checks: dict) -> dict:
    if not checks:
        return {}
    tests = checks.get("tests") or {}
    dry = checks.get("dry_run") or {}
    return {
        "tests": {"passed": tests.get("passed"), "total": tests.get("total")},
        "coverage": (checks.get("coverage") or {}).get("percent"),
        "dry_run": dry.get("summary"),
    }


def _require_proposer(actor, target, kind: str, now) -> None:
    may = can_edit_policies(actor) if isinstance(target, Policy) else can(actor, "change", target)
    if not may:
        what = "policies" if isinstance(target, Policy) else f"environment {target.name}"
        exc = ChangeRequestRefused(
            f"{_name(actor)} may not propose changes to {what}: the permission to change "
            "it is missing",
            rule="permission",
        )
        _refused(actor, "change_request.propose", target, exc, now, kind=kind)
        raise exc


# --- proposing: policies ----------------------------------------------------------------


def _policy_base(policy: Policy) -> dict:
    """What a policy publication or scope change is judged stale against."""
    return {
        "current_version": policy.current_version.number if policy.current_version else None,
        "source_sha256": policies.source_sha256(policy.source),
        "enforcement": policy.enforcement,
        "test_cases_sha256": _hash(policy.test_cases),
        "environments": sorted(policy.environments.values_list("name", flat=True)),
        "tiers": sorted(policy.tiers or []),
        "enabled": policy.enabled,
    }


def propose_policy_publish(
    policy: Policy, *, actor, now: datetime | None = None, days: int = DRY_RUN_DAYS
) -> ChangeRequest:
    """Propose publishing the policy's draft (source and enforcement) as a new version.
    Compiles it, runs its test cases with coverage and dry-runs it over the last `days`
    days first (outside any transaction): a compile error raises PolicyCompileError, a
    failing test case PolicyTestFailure and test cases without a denying and a passing one
    PolicyTestsMissing (both audited as a refused proposal), a draft identical
    to the current version PolicyUnchanged."""
    now = now or timezone.now()
    kind = ChangeRequestKind.POLICY_PUBLISH
    _require_proposer(actor, policy, kind, now)
    snapshot = Policy.objects.select_related("current_version").get(pk=policy.pk)
    previous = snapshot.current_version
    source, enforcement, cases = snapshot.source, snapshot.enforcement, snapshot.test_cases
    if previous is not None and (previous.source, previous.enforcement) == (source, enforcement):
        raise policies.PolicyUnchanged(
            f"nothing to publish: the draft of {snapshot.name} is the same as "
            f"version {previous.number}"
        )
    missing = policies.missing_test_kinds(source, cases)
    if missing:
        with transaction.atomic():
            audit.record(
                actor,
                "change_request.propose",
                snapshot,
                outcome=Outcome.FAILURE,
                at=now,
                kind=kind,
                reason="test cases missing",
                missing=missing,
            )
        raise policies.PolicyTestsMissing(snapshot.name, missing)
    rego.compile_policy(source)
    suite = rego.run_test_suite(source, cases) if cases else {"results": [], "coverage": None}
    results = suite["results"]
    failed = [r for r in results if not r["passed"]]
    if failed:
        with transaction.atomic():
            audit.record(
                actor,
                "change_request.propose",
                snapshot,
                outcome=Outcome.FAILURE,
                at=now,
                kind=kind,
                reason="test cases failed",
                failed=[r["name"] for r in failed],
            )
        raise policies.PolicyTestFailure(results)
    dry = policies.dry_run(source, days=days, enforcement=enforcement, policy=snapshot, actor=actor)
    old_source = previous.source if previous else ""
    label = f"v{previous.number}" if previous else "empty"
    fields = []
    if previous is None or previous.enforcement != enforcement:
        fields.append(
            {
                "field": "enforcement",
                "from": previous.enforcement if previous else None,
                "to": enforcement,
            }
        )
    lines = list(
        difflib.unified_diff(
            old_source.splitlines(), source.splitlines(), label, "draft", lineterm=""
        )
    )
    change = policies._diff_summary(old_source, source)
    fields.append(
        {"field": "source", "from": label, "to": f"+{change['added']}/-{change['removed']}"}
    )
    version_text = f"v{previous.number + 1}" if previous else "v1"
    checks = {
        "tests": {"passed": len(results), "total": len(results), "results": results},
        "coverage": suite["coverage"] or {},
        "dry_run": {
            **{k: dry[k] for k in ("summary", "days", "gates", "would_block", "would_warn")},
            "errors": dry["errors"],
            "changed_count": dry["changed_count"],
            "changed": dry["changed"][:DRY_RUN_CHANGED_KEPT],
        },
    }
    with transaction.atomic():
        locked = Policy.objects.select_for_update().get(pk=policy.pk)
        base = _policy_base(locked)
        if (base["source_sha256"], base["enforcement"]) != (
            policies.source_sha256(source),
            enforcement,
        ) or base["test_cases_sha256"] != _hash(cases):
            raise ChangeRequestConflict(
                f"{locked.name} was changed while its tests ran; propose again", rule="stale"
            )
        return _create(
            kind,
            actor=actor,
            now=now,
            policy=locked,
            payload={
                "source_sha256": base["source_sha256"],
                "enforcement": enforcement,
                "version": version_text,
            },
            base=base,
            diff={"fields": fields, "source_lines": lines},
            checks=checks,
            summary=f"publish {locked.name} as {version_text} ({enforcement}); {dry['summary']}",
        )


def propose_policy_scope(
    policy: Policy,
    *,
    actor,
    environments: Iterable | None = None,
    tiers: Iterable | None = None,
    enabled: bool | None = None,
    now: datetime | None = None,
) -> ChangeRequest | None:
    """Propose changing where a policy applies (environments, tiers) or whether it applies at
    all (enabled). What is None stays. None when nothing would change."""
    now = now or timezone.now()
    kind = ChangeRequestKind.POLICY_SCOPE
    _require_proposer(actor, policy, kind, now)
    wanted: dict = {}
    if environments is not None:
        names = [e.name if isinstance(e, Environment) else str(e) for e in environments]
        known = set(Environment.objects.filter(name__in=names).values_list("name", flat=True))
        missing = sorted(set(names) - known)
        if missing:
            raise policies.PolicyInvalid(
                "environments", f"unknown environment(s): {', '.join(missing)}"
            )
        wanted["environments"] = sorted(set(names))
    if tiers is not None:
        wanted["tiers"] = sorted(policies._check_tiers(tiers))
    if enabled is not None:
        wanted["enabled"] = bool(enabled)
    with transaction.atomic():
        locked = Policy.objects.select_for_update().get(pk=policy.pk)
        base = _policy_base(locked)
        fields = [
            {"field": key, "from": base[key], "to": value}
            for key, value in wanted.items()
            if base[key] != value
        ]
        if not fields:
            return None
        payload = {row["field"]: row["to"] for row in fields}
        if set(payload) == {"enabled"}:
            summary = f"{'enable' if payload['enabled'] else 'disable'} {locked.name}"
        else:
            summary = f"change the scope of {locked.name}: " + "; ".join(
                f"{r['field']} {r['from']} → {r['to']}" for r in fields
            )
        return _create(
            kind,
            actor=actor,
            now=now,
            policy=locked,
            payload=payload,
            base={k: base[k] for k in ("environments", "tiers", "enabled")},
            diff={"fields": fields},
            summary=summary[:300],
        )


# --- proposing: environments ------------------------------------------------------------


def _rules_state(env: Environment) -> dict:
    return {
        r.group.name: {
            "required_count": r.required_count,
            "sla_minutes": r.sla_minutes,
            "backup_group": r.backup_group.name if r.backup_group_id else None,
        }
        for r in env.approval_rules.select_related("group", "backup_group")
    }


def _rules_wanted(env_rules: dict, rules: dict) -> dict:
    """{group or name: count or terms} as {name: terms} (a count alone keeps the rule's SLA
    and backup, as actions._rule_terms does)."""
    out = {}
    for group, value in rules.items():
        name = group.name if isinstance(group, Group) else str(group)
        if isinstance(value, int):
            terms = dict(env_rules.get(name) or {"sla_minutes": 0, "backup_group": None})
            terms["required_count"] = value
        else:
            backup = value.get("backup_group")
            terms = {
                "required_count": int(value.get("required_count") or 1),
                "sla_minutes": int(value.get("sla_minutes") or 0),
                "backup_group": backup.name if isinstance(backup, Group) else backup,
            }
        out[name] = terms
    return dict(sorted(out.items()))


def _env_state(env: Environment) -> dict:
    state = {name: getattr(env, name) for name in Environment.SETTINGS}
    state["freeze_windows"] = env.freeze_windows or []
    state["change_windows"] = env.change_windows or []
    return state


def propose_environment_update(
    environment: Environment,
    *,
    actor,
    settings: dict | None = None,
    freeze_windows: list | None = None,
    change_windows: list | None = None,
    rules: dict | None = None,
    loaded: str | None = None,
    now: datetime | None = None,
) -> ChangeRequest | None:
    """Propose changing an environment (the arguments of actions.update_environment). With
    `loaded`, a proposal made over a newer state than the editor showed is refused
    (actions.EnvironmentChanged). None when nothing would change."""
    now = now or timezone.now()
    kind = ChangeRequestKind.ENVIRONMENT_UPDATE
    _require_proposer(actor, environment, kind, now)
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(pk=environment.pk)
        fingerprint = env.fingerprint()
        if loaded and loaded != fingerprint:
            raise actions.EnvironmentChanged(
                f"{env.name} was changed by someone else after you opened this page; "
                "nothing was proposed. Reload the page to see the current settings."
            )
        current = _env_state(env)
        current_rules = _rules_state(env)
        payload: dict = {}
        fields = []
        for name, new in (settings or {}).items():
            if name not in Environment.SETTINGS:
                raise ChangeRequestInvalid(f"{name} is not an environment setting", rule="input")
            if current[name] != new:
                payload.setdefault("settings", {})[name] = new
                shown = ("(changed)", "(changed)") if name == "notify_webhook_url" else None
                old_v, new_v = shown or (current[name], new)
                fields.append({"field": name, "from": old_v, "to": new_v})
        for name, new in (("freeze_windows", freeze_windows), ("change_windows", change_windows)):
            if new is not None and current[name] != new:
                payload[name] = new
                fields.append({"field": name, "from": current[name], "to": new})
        if rules is not None:
            wanted = _rules_wanted(current_rules, rules)
            if wanted != dict(sorted(current_rules.items())):
                payload["rules"] = wanted
                for name in sorted(set(wanted) | set(current_rules)):
                    if wanted.get(name) != current_rules.get(name):
                        fields.append(
                            {
                                "field": f"approval rule {name}",
                                "from": current_rules.get(name),
                                "to": wanted.get(name),
                            }
                        )
        if not payload:
            return None
        summary = f"change {env.name}: " + ", ".join(r["field"] for r in fields)
        return _create(
            kind,
            actor=actor,
            now=now,
            environment=env,
            payload=payload,
            base={"fingerprint": fingerprint},
            diff={"fields": fields},
            summary=summary[:300],
        )


# --- deciding -----------------------------------------------------------------------------


def _lock(request: ChangeRequest) -> ChangeRequest:
    return (
        ChangeRequest.objects.select_for_update(of=("self",))
        .select_related("policy__current_version", "environment", "proposed_by")
        .get(pk=request.pk)
    )


def _stale_problem(request: ChangeRequest) -> str | None:
    """Why the target no longer is what the request was proposed against (None: it is)."""
    if request.kind == ChangeRequestKind.ENVIRONMENT_UPDATE:
        env = request.environment
        if env.fingerprint() != request.base.get("fingerprint"):
            return (
                f"{env.name} was changed after this request was proposed; it would undo that "
                "change. Reject or withdraw it and propose again from the current settings."
            )
        return None
    policy = Policy.objects.select_related("current_version").get(pk=request.policy_id)
    now_base = _policy_base(policy)
    keys = (
        ("environments", "tiers", "enabled")
        if request.kind == ChangeRequestKind.POLICY_SCOPE
        else ("current_version", "source_sha256", "enforcement", "test_cases_sha256")
    )
    changed = [k for k in keys if now_base[k] != request.base.get(k)]
    if changed:
        return (
            f"{policy.name} changed after this request was proposed ({', '.join(changed)}); "
            "the reviewed change is no longer what would be applied. Propose it again."
        )
    return None


def _decision_problem(request: ChangeRequest, actor, *, alone: bool) -> ChangeRequestError | None:
    if alone:
        if not (actor and actor.is_active and actor.is_superuser):
            return ChangeRequestRefused(
                f"{_name(actor)} may not apply a change alone: only a superuser may",
                rule="permission",
            )
    elif not _may_change(actor, request):
        return ChangeRequestRefused(
            f"{_name(actor)} may not decide on change request {request.pk}: the permission "
            f"to change {request.target_name} is missing",
            rule="permission",
        )
    if request.status != ChangeRequestStatus.PENDING:
        return ChangeRequestConflict(
            f"change request {request.pk} is {request.status}, not pending", rule="state"
        )
    if not alone and request.proposed_by_id == actor.pk:
        return ChangeRequestRefused(
            f"{_name(actor)} proposed change request {request.pk} and cannot approve it: "
            "a second person must (four eyes)",
            rule="own-request",
        )
    stale = _stale_problem(request)
    if stale:
        return ChangeRequestConflict(stale, rule="stale")
    return None


def _groups(names: dict) -> dict:
    """Payload rules as actions.update_environment wants them: {Group: terms}."""
    wanted = set(names) | {t.get("backup_group") for t in names.values() if t.get("backup_group")}
    found = {g.name: g for g in Group.objects.filter(name__in=wanted)}
    missing = sorted(wanted - set(found))
    if missing:
        raise ChangeRequestConflict(
            f"group(s) {', '.join(missing)} no longer exist; propose the change again",
            rule="stale",
        )
    return {
        found[name]: {
            "required_count": terms["required_count"],
            "sla_minutes": terms["sla_minutes"],
            "backup_group": found.get(terms.get("backup_group") or ""),
        }
        for name, terms in names.items()
    }


def _apply(request: ChangeRequest, actor, now: datetime):
    """Make the change with the existing verbs; returns a short result for the audit row."""
    if request.kind == ChangeRequestKind.POLICY_PUBLISH:
        version = policies.publish_policy(request.policy, actor=actor, now=now)
        if version.sha256 != request.payload.get("source_sha256"):
            raise ChangeRequestConflict(
                "the published source is not the reviewed one", rule="stale"
            )
        return {"version": version.number}
    if request.kind == ChangeRequestKind.POLICY_SCOPE:
        p = request.payload
        policies.save_draft(
            request.policy,
            actor=actor,
            environments=p.get("environments"),
            tiers=p.get("tiers"),
            enabled=p.get("enabled"),
            now=now,
        )
        return {"changed": sorted(p)}
    p = request.payload
    try:
        changes = actions.update_environment(
            request.environment,
            actor=actor,
            settings=p.get("settings"),
            freeze_windows=p.get("freeze_windows"),
            change_windows=p.get("change_windows"),
            rules=_groups(p["rules"]) if "rules" in p else None,
            loaded=request.base.get("fingerprint"),
        )
    except actions.EnvironmentChanged as exc:
        raise ChangeRequestConflict(str(exc), rule="stale")
    return {"changed": sorted(changes)}


_APPLY_ERRORS = (
    ChangeRequestError,
    policies.PolicyActionError,
    rego.PolicyCompileError,
)


class _ApplyFailed(Exception):
    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause
        self.message = getattr(cause, "message", None) or str(cause)


def _approve_step(request, actor, now, *, action, comment, justification):
    """Lock, check and mark approved (in the caller's transaction); audited."""
    alone = bool(justification)
    locked = _lock(request)
    problem = _decision_problem(locked, actor, alone=alone)
    if problem:
        raise problem
    locked.decided_by, locked.comment = actor, comment
    locked.justification, locked.exception, locked.error = justification, alone, ""
    lifecycle.change_request(
        locked,
        ChangeRequestStatus.APPROVED,
        now=now,
        fields=("decided_by", "comment", "justification", "exception", "error"),
    )
    audit.record(
        actor,
        action,
        locked,
        at=now,
        kind=locked.kind,
        subject=locked.target_name,
        proposed_by=_name(locked.proposed_by),
        comment=comment,
        justification=justification,
        exception=alone,
    )
    return locked


def _apply_step(locked, actor, now):
    who = {
        "change_request": locked.pk,
        "proposed_by": _name(locked.proposed_by),
        "approved_by": _name(actor),
        "exception": locked.exception,
    }
    try:
        with audit.attached(**who):
            return _apply(locked, actor, now)
    except _APPLY_ERRORS as exc:
        raise _ApplyFailed(exc) from exc


def _applied_step(locked, actor, now, result) -> None:
    locked.applied_at = now
    lifecycle.change_request(locked, ChangeRequestStatus.APPLIED, now=now, fields=("applied_at",))
    audit.record(
        actor,
        "change_request.apply",
        locked,
        at=now,
        kind=locked.kind,
        subject=locked.target_name,
        proposed_by=_name(locked.proposed_by),
        approved_by=_name(actor),
        exception=locked.exception,
        justification=locked.justification,
        result=result,
    )


def _decide(request, *, actor, now, comment: str = "", justification: str = ""):
    """Approve (or, with a justification, apply alone) and apply. A publication's tests run
    outside any transaction: the request is first marked approved (committed), then
    applied, then marked applied — a failure puts it back to pending. For the other kinds
    the three steps are one transaction, and a failure rolls all of it back."""
    action = "change_request.apply_alone" if justification else "change_request.approve"
    try:
        if request.kind == ChangeRequestKind.POLICY_PUBLISH:
            with transaction.atomic():
                locked = _approve_step(
                    request, actor, now, action=action, comment=comment, justification=justification
                )
            try:
                result = _apply_step(locked, actor, now)
            except _ApplyFailed:
                with transaction.atomic():
                    row = _lock(locked)
                    row.decided_by, row.decided_at = None, None
                    row.exception, row.justification = False, ""
                    lifecycle.change_request(
                        row,
                        ChangeRequestStatus.PENDING,
                        now=now,
                        fields=("decided_by", "decided_at", "exception", "justification"),
                    )
                raise
            with transaction.atomic():
                _applied_step(_lock(locked), actor, now, result)
        else:
            with transaction.atomic():
                locked = _approve_step(
                    request, actor, now, action=action, comment=comment, justification=justification
                )
                result = _apply_step(locked, actor, now)
                _applied_step(locked, actor, now, result)
    except ChangeRequestError as exc:
        _refused(actor, action, request, exc, now, kind=request.kind, subject=request.target_name)
        raise
    except _ApplyFailed as failed:
        with transaction.atomic():
            ChangeRequest.objects.filter(pk=request.pk).update(error=failed.message[:2000])
            audit.record(
                actor,
                "change_request.apply",
                request,
                outcome=Outcome.FAILURE,
                at=now,
                kind=request.kind,
                subject=request.target_name,
                message=failed.message,
            )
        if isinstance(failed.cause, ChangeRequestError):
            raise failed.cause from None
        raise ChangeRequestConflict(
            f"change request {request.pk} could not be applied: {failed.message}", rule="apply"
        ) from failed.cause
    return ChangeRequest.objects.get(pk=request.pk)


def approve(
    request: ChangeRequest, *, actor, comment: str = "", now: datetime | None = None
) -> ChangeRequest:
    """Approve a pending request and apply it. Refused (and audited) for the proposer
    (own-request), without the permission the change needs, when not pending, and when the
    target changed since the proposal (stale). Raises ChangeRequestRefused /
    ChangeRequestConflict."""
    now = now or timezone.now()
    return _decide(request, actor=actor, now=now, comment=(comment or "").strip())


def apply_alone_as_superuser(
    request: ChangeRequest, *, actor, justification: str, now: datetime | None = None
) -> ChangeRequest:
    """A superuser applies a pending request without a second person (their own included),
    with a justification of at least MIN_JUSTIFICATION characters. Flagged as an exception
    (ChangeRequest.exception; the change report's exceptions list it)."""
    now = now or timezone.now()
    justification = (justification or "").strip()
    if len(justification) < MIN_JUSTIFICATION:
        exc = ChangeRequestInvalid(
            f"applying a change alone needs a justification of at least {MIN_JUSTIFICATION} "
            f"characters (got {len(justification)})",
            rule="justification",
        )
        _refused(actor, "change_request.apply_alone", request, exc, now, kind=request.kind)
        raise exc
    return _decide(request, actor=actor, now=now, justification=justification)


def _close(request, *, actor, now, status, action, comment="", rule_check=None) -> ChangeRequest:
    try:
        with transaction.atomic():
            locked = _lock(request)
            problem = rule_check(locked) if rule_check else None
            if problem is None and locked.status != ChangeRequestStatus.PENDING:
                problem = ChangeRequestConflict(
                    f"change request {locked.pk} is {locked.status}, not pending", rule="state"
                )
            if problem:
                raise problem
            locked.decided_by, locked.comment = actor, comment
            lifecycle.change_request(locked, status, now=now, fields=("decided_by", "comment"))
            audit.record(
                actor,
                action,
                locked,
                at=now,
                kind=locked.kind,
                subject=locked.target_name,
                proposed_by=_name(locked.proposed_by),
                comment=comment,
            )
    except ChangeRequestError as exc:
        _refused(actor, action, request, exc, now, kind=request.kind)
        raise
    return locked


def reject(
    request: ChangeRequest, *, actor, comment: str, now: datetime | None = None
) -> ChangeRequest:
    """Reject a pending request with a comment that says why. Needs the permission the
    change needs; the proposer withdraws instead."""
    now = now or timezone.now()
    comment = (comment or "").strip()

    def check(locked):
        if not _may_change(actor, locked):
            return ChangeRequestRefused(
                f"{_name(actor)} may not decide on change request {locked.pk}", rule="permission"
            )
        if locked.proposed_by_id == actor.pk:
            return ChangeRequestRefused(
                "you proposed this change: withdraw it instead", rule="own-request"
            )
        if not comment and locked.status == ChangeRequestStatus.PENDING:
            return ChangeRequestInvalid("a rejection needs a comment that says why", rule="comment")
        return None

    return _close(
        request,
        actor=actor,
        now=now,
        status=ChangeRequestStatus.REJECTED,
        action="change_request.reject",
        comment=comment,
        rule_check=check,
    )


def withdraw(request: ChangeRequest, *, actor, now: datetime | None = None) -> ChangeRequest:
    """The proposer takes back their pending request."""
    now = now or timezone.now()

    def check(locked):
        if locked.proposed_by_id != actor.pk:
            return ChangeRequestRefused(
                f"only {_name(locked.proposed_by)}, who proposed it, may withdraw change "
                f"request {locked.pk}",
                rule="not-proposer",
            )
        return None

    return _close(
        request,
        actor=actor,
        now=now,
        status=ChangeRequestStatus.WITHDRAWN,
        action="change_request.withdraw",
        rule_check=check,
    )


# --- reading ------------------------------------------------------------------------------


def pending_for(user) -> QuerySet:
    """Pending requests `user` may decide on (not their own)."""
    qs = restrict(ChangeRequest.objects.all(), user, "decide")
    return qs.filter(status=ChangeRequestStatus.PENDING).exclude(proposed_by=user)

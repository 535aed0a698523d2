"""Verbs for policies as code: create, save a draft, publish, disable, and dry-run a draft.

Each verb that changes state runs in one transaction with one `audit.record(...)` and takes a
keyword-only `actor`. Compiling and running test cases talk to the evaluator processes
(governance.rego), so they happen *before* the transaction opens: a database transaction is
never held open while waiting on an evaluator.

Drafts versus versions: `Policy.source` and `Policy.enforcement` are the draft. Gates only
evaluate `Policy.current_version`, an immutable PolicyVersion created by `publish_policy`, so
saving a draft never changes a gate decision. Scope (environments, tiers) and `enabled` say
*where* the published version applies and take effect as soon as they are saved.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from . import audit, rego
from .models import (
    Enforcement,
    Environment,
    Gate,
    Outcome,
    Policy,
    PolicyDecision,
    PolicyVersion,
    Tier,
)
from .permissions import restrict
from .rego import PolicyCompileError

__all__ = [
    "PolicyActionError",
    "PolicyCompileError",
    "PolicyInvalid",
    "PolicyTestFailure",
    "PolicyTestsMissing",
    "PolicyUnchanged",
    "create_policy",
    "disable_policy",
    "dry_run",
    "in_scope",
    "missing_test_kinds",
    "publish_policy",
    "revert_to_version",
    "save_draft",
    "source_sha256",
    "validate_test_cases",
]

DRY_RUN_BATCH = 200
DRY_RUN_MAX_DAYS = 366
DRY_RUN_MAX_CHANGED = 500
BLOCKING_RESULTS = ("deny", "error")


class PolicyActionError(Exception):
    """A refused policy action, with a message for the person who asked."""


class PolicyInvalid(PolicyActionError):
    """A field of the request is not acceptable. `field` names it (e.g. "environments")."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class PolicyUnchanged(PolicyActionError):
    """Publishing was asked for but the draft is identical to the current version."""


class PolicyTestFailure(PolicyActionError):
    """Publishing was refused because test cases failed. `results` holds every case's result
    (as returned by rego.run_test_cases), `failed` only the failing ones."""

    def __init__(self, results: list[dict]):
        self.results = list(results)
        self.failed = [r for r in self.results if not r.get("passed")]
        listing = "; ".join(f"{r['name']}: {r['message']}" for r in self.failed)
        super().__init__(
            f"{len(self.failed)} of {len(self.results)} test case(s) failed, "
            f"so the policy was not published: {listing}"
        )


class PolicyTestsMissing(PolicyActionError):
    """Publishing was refused because the test cases do not include a case that denies and
    a case that passes. `missing` lists what is missing: "deny" (or "warn", for a policy
    that only warns) and/or "pass"."""

    def __init__(self, name: str, missing: list[str]):
        self.missing = list(missing)
        wanted = {
            "deny": "case that denies (expect.deny: the messages, or a count above 0, "
            'e.g. "expect": {"deny": 1})',
            "warn": "case that warns (this policy defines no deny rule, so a case with "
            'expect.warn: the messages or a count above 0, e.g. "expect": {"warn": 1})',
            "pass": "case that passes (expect.deny: [] or 0, no expected warning or error, "
            'e.g. "expect": {"deny": []})',
        }
        listing = " and no ".join(wanted[m] for m in self.missing)
        super().__init__(
            f"{name} was not published: it needs at least one test case that denies and one "
            f"that passes, and it has no {listing}. Add the missing case under Test cases "
            '("Start from a real gate\'s input" fills one in from a past gate), then '
            "publish again."
        )


# --- helpers ----------------------------------------------------------------------------


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _diff_summary(old: str, new: str) -> dict:
    added = removed = 0
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith(("+++", "---", "@@")):
            continue
        if line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
    return {"added": added, "removed": removed}


def _check_enforcement(value: str) -> str:
    if value not in Enforcement.values:
        raise PolicyInvalid(
            "enforcement", f'unknown enforcement "{value}"; use one of {", ".join(Enforcement)}'
        )
    return value


def _check_name(name: str) -> str:
    try:
        validate_slug(name or "")
    except DjangoValidationError:
        raise PolicyInvalid(
            "name", f'"{name}" is not a valid policy name: use letters, digits, "-" and "_"'
        )
    if len(name) > Policy._meta.get_field("name").max_length:
        raise PolicyInvalid("name", "the policy name is longer than 100 characters")
    return name


def _resolve_environments(environments: Iterable) -> list[Environment]:
    envs, names = [], []
    for item in environments or ():
        if isinstance(item, Environment):
            envs.append(item)
        else:
            names.append(str(item))
    if names:
        found = {e.name: e for e in Environment.objects.filter(name__in=names)}
        missing = sorted(set(names) - set(found))
        if missing:
            raise PolicyInvalid("environments", f"unknown environment(s): {', '.join(missing)}")
        envs.extend(found[n] for n in dict.fromkeys(names))
    return envs


def _check_tiers(tiers: Iterable) -> list[str]:
    tiers = list(dict.fromkeys(str(t) for t in (tiers or ())))
    bad = [t for t in tiers if t not in Tier.values]
    if bad:
        raise PolicyInvalid(
            "tiers", f"unknown tier(s) {', '.join(bad)}; use {', '.join(Tier.values)}"
        )
    return tiers


def validate_test_cases(cases) -> list[dict]:
    """Check the shape of test cases: [{"name", "input": {...}, "expect": {"deny", "warn",
    "error"}}]. Returns them as a list of plain dicts; raises PolicyInvalid."""
    if cases is None:
        return []
    if isinstance(cases, dict | str) or not isinstance(cases, Iterable):
        raise PolicyInvalid("test_cases", "test cases must be a list")
    result = []
    for number, case in enumerate(cases, start=1):
        where = f"test case {number}"
        if not isinstance(case, dict):
            raise PolicyInvalid("test_cases", f"{where} must be an object")
        if "name" in case and not isinstance(case["name"], str):
            raise PolicyInvalid("test_cases", f"{where}: name must be text")
        where = f'test case {number} ("{case.get("name") or "unnamed"}")'
        if not isinstance(case.get("input"), dict):
            raise PolicyInvalid("test_cases", f"{where} needs an input object")
        expect = case.get("expect", {})
        if not isinstance(expect, dict):
            raise PolicyInvalid("test_cases", f"{where}: expect must be an object")
        unknown = set(expect) - {"deny", "warn", "error"}
        if unknown:
            raise PolicyInvalid(
                "test_cases",
                f"{where}: unknown expect key(s) {sorted(unknown)}; use deny, warn or error",
            )
        if "error" in expect and not isinstance(expect["error"], bool | str):
            raise PolicyInvalid("test_cases", f"{where}: expect.error must be true or text")
        for key in ("deny", "warn"):
            value = expect.get(key)
            if value is None:
                continue
            is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            is_list = isinstance(value, list) and all(isinstance(m, str) for m in value)
            if not (is_count or is_list):
                raise PolicyInvalid(
                    "test_cases", f"{where}: expect.{key} must be a list of messages or a count"
                )
        result.append(dict(case))
    return result


def _expects_messages(expect: dict, key: str) -> bool:
    value = expect.get(key)
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value > 0) or (isinstance(value, list) and bool(value))


def _expects_nothing(expect: dict, key: str) -> bool:
    value = expect.get(key)
    return value == [] or (isinstance(value, int) and not isinstance(value, bool) and value == 0)


def missing_test_kinds(source: str, cases: list[dict]) -> list[str]:
    """What publishing still needs (docs/policy-authoring.md, "Testing a policy"): "deny"
    when no case expects a deny ("warn" instead when the policy has no deny rule and no case
    expects a warning), "pass" when no case expects nothing denied, nothing warned, no error.
    An empty list: the test cases have both kinds."""
    flag = "deny" if rego.defines_deny(source) else "warn"
    flags = passes = False
    for case in cases:
        expect = case.get("expect") or {}
        if expect.get("error"):
            continue
        flags = flags or _expects_messages(expect, flag)
        passes = passes or (
            _expects_nothing(expect, "deny") and not _expects_messages(expect, "warn")
        )
    return [kind for kind, present in ((flag, flags), ("pass", passes)) if not present]


def _require_deny_and_pass_cases(snapshot: Policy, *, actor, now: datetime) -> None:
    """Refuse (audited) to publish a policy whose test cases lack a denying or a passing case."""
    missing = missing_test_kinds(snapshot.source, snapshot.test_cases)
    if not missing:
        return
    with transaction.atomic():
        audit.record(
            actor,
            "policy.publish",
            snapshot,
            outcome=Outcome.FAILURE,
            at=now,
            reason="test cases missing",
            missing=missing,
            tests={"total": len(snapshot.test_cases)},
        )
    raise PolicyTestsMissing(snapshot.name, missing)


def in_scope(environment: Environment) -> QuerySet:
    """The policies whose scope covers `environment` (listed by name or by tier)."""
    # A JSON "contains" lookup is not available on SQLite; the policy table is small.
    by_tier = [
        pk
        for pk, tiers in Policy.objects.values_list("pk", "tiers")
        if environment.tier in (tiers or [])
    ]
    return Policy.objects.filter(Q(environments=environment) | Q(pk__in=by_tier)).distinct()


def _scope_filter(policy: Policy) -> Q:
    """Gates whose environment is in the policy's scope."""
    q = Q(environment__in=policy.environments.all())
    if policy.tiers:
        q |= Q(environment__tier__in=list(policy.tiers))
    return q


def _scope_details(policy: Policy) -> dict:
    return {
        "environments": sorted(policy.environments.values_list("name", flat=True)),
        "tiers": list(policy.tiers),
    }


# --- verbs ------------------------------------------------------------------------------


def create_policy(
    *,
    actor,
    name: str,
    source: str,
    enforcement: str,
    description: str = "",
    environments: Iterable = (),
    tiers: Iterable = (),
    test_cases: Iterable = (),
    enabled: bool = True,
    now: datetime | None = None,
) -> Policy:
    """Create a policy with its draft. Compiles first: a compile error raises
    PolicyCompileError (errors with line and column) and nothing is saved. The policy has no
    version until it is published."""
    _check_name(name)
    _check_enforcement(enforcement)
    tiers = _check_tiers(tiers)
    cases = validate_test_cases(test_cases)
    envs = _resolve_environments(environments)
    rego.compile_policy(source)
    now = now or timezone.now()
    try:
        with transaction.atomic():
            if Policy.objects.filter(name=name).exists():
                raise PolicyInvalid("name", f'a policy named "{name}" already exists')
            policy = Policy.objects.create(
                name=name,
                description=description or "",
                source=source,
                enforcement=enforcement,
                tiers=tiers,
                enabled=enabled,
                test_cases=cases,
                updated_by=actor if getattr(actor, "pk", None) else None,
                created_at=now,
                updated_at=now,
            )
            policy.environments.set(envs)
            audit.record(
                actor,
                "policy.create",
                policy,
                at=now,
                enforcement=enforcement,
                enabled=enabled,
                sha256=source_sha256(source),
                lines=len(source.splitlines()),
                test_cases=len(cases),
                **_scope_details(policy),
            )
    except IntegrityError:
        # Two creates with the same name raced past the exists() check.
        raise PolicyInvalid("name", f'a policy named "{name}" already exists')
    return policy


def save_draft(
    policy: Policy,
    *,
    actor,
    source: str | None = None,
    enforcement: str | None = None,
    description: str | None = None,
    environments: Iterable | None = None,
    tiers: Iterable | None = None,
    test_cases: Iterable | None = None,
    enabled: bool | None = None,
    now: datetime | None = None,
) -> Policy:
    """Change the draft (None leaves a field as it is). A new source is compiled first; a
    compile error raises PolicyCompileError and nothing is saved. Gates keep evaluating the
    published version until the draft is published."""
    if enforcement is not None:
        _check_enforcement(enforcement)
    if tiers is not None:
        tiers = _check_tiers(tiers)
    if test_cases is not None:
        test_cases = validate_test_cases(test_cases)
    envs = _resolve_environments(environments) if environments is not None else None
    if source is not None:
        stored = Policy.objects.filter(pk=policy.pk).values_list("source", flat=True).first()
        if source != stored:  # compare with the database: `policy` may be a stale copy
            rego.compile_policy(source)
    now = now or timezone.now()
    with transaction.atomic():
        locked = Policy.objects.select_for_update().get(pk=policy.pk)
        changes: dict = {}
        fields: list[str] = []
        if source is not None and source != locked.source:
            changes["source"] = {
                "sha256": source_sha256(source),
                **_diff_summary(locked.source, source),
            }
            locked.source = source
            fields.append("source")
        for field, value in (
            ("enforcement", enforcement),
            ("enabled", enabled),
            ("tiers", tiers),
        ):
            if value is not None and value != getattr(locked, field):
                changes[field] = {"from": getattr(locked, field), "to": value}
                setattr(locked, field, value)
                fields.append(field)
        if description is not None and description != locked.description:
            changes["description"] = True
            locked.description = description
            fields.append("description")
        if test_cases is not None and test_cases != locked.test_cases:
            changes["test_cases"] = {"from": len(locked.test_cases), "to": len(test_cases)}
            locked.test_cases = test_cases
            fields.append("test_cases")
        if envs is not None:
            before = sorted(locked.environments.values_list("name", flat=True))
            after = sorted(e.name for e in envs)
            if before != after:
                changes["environments"] = {"from": before, "to": after}
                locked.environments.set(envs)
        if changes:
            locked.updated_at = now
            locked.updated_by = actor if getattr(actor, "pk", None) else None
            locked.save(update_fields=[*fields, "updated_at", "updated_by"])
            if set(changes) == {"enabled"}:
                action = "policy.enable" if locked.enabled else "policy.disable"
            else:
                action = "policy.update"
            audit.record(actor, action, locked, at=now, changes=changes)
    policy.refresh_from_db()
    return policy


def disable_policy(policy: Policy, *, actor, now: datetime | None = None) -> Policy:
    """Take a policy out of every gate without deleting it or its history."""
    return save_draft(policy, actor=actor, enabled=False, now=now)


def publish_policy(policy: Policy, *, actor, now: datetime | None = None) -> PolicyVersion:
    """Freeze the draft into a new immutable PolicyVersion and make it current.

    The test cases must include one that denies and one that passes (else
    PolicyTestsMissing); the draft is compiled and its test cases run first; any failing case
    raises PolicyTestFailure. Both refusals are audited, and nothing is published."""
    snapshot = Policy.objects.select_related("current_version").get(pk=policy.pk)
    source, enforcement, cases = snapshot.source, snapshot.enforcement, snapshot.test_cases
    previous = snapshot.current_version
    if previous is not None and previous.source == source and previous.enforcement == enforcement:
        raise PolicyUnchanged(
            f"nothing to publish: the draft of {snapshot.name} is the same as "
            f"version {previous.number}"
        )
    now = now or timezone.now()
    _require_deny_and_pass_cases(snapshot, actor=actor, now=now)
    rego.compile_policy(source)
    suite = rego.run_test_suite(source, cases)
    results = suite["results"]
    failed = [r for r in results if not r["passed"]]
    if failed:
        with transaction.atomic():
            audit.record(
                actor,
                "policy.publish",
                snapshot,
                outcome=Outcome.FAILURE,
                at=now,
                reason="test cases failed",
                failed=[r["name"] for r in failed],
                tests={"passed": len(results) - len(failed), "total": len(results)},
            )
        raise PolicyTestFailure(results)
    with transaction.atomic():
        locked = Policy.objects.select_for_update().get(pk=policy.pk)
        # The tests ran outside the transaction: make sure they ran on what we publish.
        if (locked.source, locked.enforcement, locked.test_cases) != (source, enforcement, cases):
            raise PolicyActionError(f"{locked.name} was changed while its tests ran; publish again")
        current = locked.current_version
        if current is not None and (current.source, current.enforcement) == (source, enforcement):
            # A concurrent publish of the same draft got there first.
            raise PolicyUnchanged(
                f"nothing to publish: the draft of {locked.name} is the same as "
                f"version {current.number}"
            )
        last = locked.versions.aggregate(n=Max("number"))["n"] or 0
        version = PolicyVersion.objects.create(
            policy=locked,
            number=last + 1,
            source=source,
            sha256=source_sha256(source),
            enforcement=enforcement,
            test_results=results,
            coverage=suite["coverage"] or {},
            author=actor if getattr(actor, "pk", None) else None,
            created_at=now,
        )
        locked.current_version = version
        locked.save(update_fields=["current_version"])
        audit.record(
            actor,
            "policy.publish",
            locked,
            at=now,
            version=version.number,
            sha256=version.sha256,
            enforcement=enforcement,
            previous_version=previous.number if previous else None,
            previous_enforcement=previous.enforcement if previous else None,
            diff=_diff_summary(previous.source if previous else "", source),
            tests={"passed": len(results), "total": len(results)},
        )
    policy.refresh_from_db()
    return version


def revert_to_version(policy: Policy, number: int, *, actor, now: datetime | None = None) -> Policy:
    """Make the draft equal to published version `number`: its source and its enforcement
    (test cases are not versioned and stay as they are). Publishing the reverted draft is
    the normal publish_policy, tests and all. Audited as "policy.revert"; a refusal (no such
    version, or the draft already equals it) is audited too and raises PolicyActionError."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = Policy.objects.select_for_update().get(pk=policy.pk)
        version = locked.versions.filter(number=number).first()
        refusal = None
        if version is None:
            refusal = PolicyInvalid(
                "version",
                f"{locked.name} has no version {number}; pick one from its version history",
            )
        elif (locked.source, locked.enforcement) == (version.source, version.enforcement):
            refusal = PolicyUnchanged(
                f"nothing to revert: the draft of {locked.name} is already the same as "
                f"version {number}"
            )
        if refusal is not None:
            audit.record(
                actor,
                "policy.revert",
                locked,
                outcome=Outcome.FAILURE,
                at=now,
                version=number,
                reason=str(refusal),
            )
    if refusal is not None:
        raise refusal
    with transaction.atomic():
        locked = Policy.objects.select_for_update().get(pk=policy.pk)
        before_source, before_enforcement = locked.source, locked.enforcement
        locked.source = version.source
        locked.enforcement = version.enforcement
        locked.updated_at = now
        locked.updated_by = actor if getattr(actor, "pk", None) else None
        locked.save(update_fields=["source", "enforcement", "updated_at", "updated_by"])
        audit.record(
            actor,
            "policy.revert",
            locked,
            at=now,
            version=version.number,
            sha256=version.sha256,
            enforcement={"from": before_enforcement, "to": version.enforcement},
            diff=_diff_summary(before_source, version.source),
            current_version=locked.current_version.number if locked.current_version else None,
        )
    policy.refresh_from_db()
    return policy


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def dry_run(
    source: str,
    *,
    days: int = 30,
    enforcement: str = Enforcement.HARD_MANDATORY,
    policy: Policy | None = None,
    now: datetime | None = None,
    actor=None,
) -> dict:
    """Replay a draft against the recorded inputs of the gates created in the last `days`
    days and compare with the decision that policy's published version gave at the time.

    With `policy`, only gates whose environment is in the policy's scope are replayed. With a
    user as `actor`, only gates that user may view (nothing leaks through the counts). Nothing
    is written except one "policy.dry_run" audit event."""
    _check_enforcement(enforcement)
    try:
        days = int(days)
    except (TypeError, ValueError):
        raise PolicyInvalid("days", "days must be a whole number")
    if not 1 <= days <= DRY_RUN_MAX_DAYS:
        raise PolicyInvalid("days", f"days must be between 1 and {DRY_RUN_MAX_DAYS}")
    rego.compile_policy(source)
    now = now or timezone.now()
    since = now - timedelta(days=days)
    gates = Gate.objects.filter(created_at__gte=since, created_at__lte=now)
    if policy is not None:
        gates = gates.filter(_scope_filter(policy))
    if getattr(actor, "pk", None) is not None:
        gates = restrict(gates, actor, "view")
    gates = gates.select_related("environment", "stage_run__run__pipeline").order_by(
        "created_at", "pk"
    )
    label = policy.name if policy is not None else "draft"
    advisory = enforcement == Enforcement.ADVISORY
    total = would_block = would_warn = errors = 0
    changed: list[dict] = []
    changed_total = 0
    batch: list[Gate] = []

    def replay(chunk: list[Gate]) -> None:
        nonlocal total, would_block, would_warn, errors, changed_total
        before: dict[int, str] = {}
        if policy is not None:
            recorded = PolicyDecision.objects.filter(
                gate__in=[g.pk for g in chunk], policy_version__policy=policy
            ).order_by("gate_id", "-current", "-created_at", "-pk")
            for gate_id, result in recorded.values_list("gate_id", "result"):
                before.setdefault(gate_id, result)  # the current (else latest) decision
        for gate in chunk:
            decision = rego.evaluate_many([(label, source)], gate.input)[0]
            after = decision.result
            total += 1
            errors += after == "error"
            if after in BLOCKING_RESULTS and not advisory:
                would_block += 1
            elif after == "warn" or after in BLOCKING_RESULTS:
                would_warn += 1
            was = before.get(gate.pk)
            if after != (was or "pass"):
                changed_total += 1
                if len(changed) < DRY_RUN_MAX_CHANGED:
                    run = gate.stage_run.run
                    changed.append(
                        {
                            "gate": gate.pk,
                            "run": run.pk,
                            "run_number": run.number,
                            "pipeline": run.pipeline.slug,
                            "stage": gate.stage_run.name,
                            "environment": gate.environment.name,
                            "at": gate.created_at.isoformat(),
                            "before": was,
                            "after": after,
                            "messages": decision.deny + decision.warn,
                        }
                    )

    for gate in gates.iterator(chunk_size=DRY_RUN_BATCH):
        if not gate.input:  # never evaluated: nothing to replay
            continue
        batch.append(gate)
        if len(batch) >= DRY_RUN_BATCH:
            replay(batch)
            batch = []
    if batch:
        replay(batch)

    summary = (
        f"would have blocked {would_block} of {_plural(total, 'release')} in {_plural(days, 'day')}"
    )
    if would_warn:
        summary += f" and warned on {would_warn}"
    result = {
        "policy": policy.name if policy is not None else None,
        "enforcement": enforcement,
        "days": days,
        "since": since.isoformat(),
        "until": now.isoformat(),
        "gates": total,
        "would_block": would_block,
        "would_warn": would_warn,
        "errors": errors,
        "changed_count": changed_total,
        "changed": changed,
        "summary": summary,
    }
    target = policy if policy is not None else ("policy", "", "draft")
    with transaction.atomic():
        audit.record(
            actor,
            "policy.dry_run",
            target,
            sha256=source_sha256(source),
            enforcement=enforcement,
            days=days,
            gates=total,
            would_block=would_block,
            would_warn=would_warn,
            changed=changed_total,
        )
    return result

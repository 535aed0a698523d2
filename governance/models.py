"""Governance domain: environments and their approval rules, policies as code with immutable
versions, gates with their policy decisions, approvals and overrides, the hash-chained audit
log and report jobs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from datetime import timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone

from orchestrator.kernel.restrict import RestrictedManager, RestrictedQuerySet
from orchestrator.kernel.states import StateMachine

from . import identity


def _aware(value) -> dt.datetime:
    """An ISO string (``Z`` or any offset) or a datetime, as an aware datetime (naive = UTC).
    Raises ValueError/TypeError for anything else (a malformed window)."""
    if isinstance(value, str):
        text = value.strip()
        value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"not a date-time: {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _hhmm(text: str) -> dt.time:
    hours, minutes = text.split(":")
    if hours == "24" and minutes == "00":
        return dt.time.max
    return dt.time(int(hours), int(minutes))


class FreezeMode(models.TextChoices):
    PAUSE = "pause", "pause waiting gates until the freeze ends"
    BLOCK = "block", "let the policies decide (a freeze policy blocks)"


class Tier(models.TextChoices):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


class Environment(models.Model):
    """A deployment target. A protected environment stops every stage that targets it at a
    gate until its policies pass and its approval rules hold.

    freeze_windows: [{"start": ISO datetime, "end": ISO datetime, "reason": str}]
    change_windows: [{"days": [0..6, Monday=0], "start": "HH:MM", "end": "HH:MM"}] in
    `timezone`; an empty list means "any time"."""

    name = models.SlugField(max_length=50, unique=True)
    tier = models.CharField(max_length=20, choices=Tier.choices, default=Tier.DEVELOPMENT)
    protected = models.BooleanField(default=False)
    timezone = models.CharField(max_length=64, default="UTC")
    freeze_windows = models.JSONField(default=list, blank=True)
    change_windows = models.JSONField(default=list, blank=True)
    approval_ttl_hours = models.PositiveIntegerField(default=24)
    reminder_minutes = models.PositiveIntegerField(default=60)
    notify_webhook_url = models.URLField(blank=True)
    # A gate waiting longer than this is rejected by the system (0: never).
    max_wait_days = models.PositiveIntegerField(default=30)
    freeze_mode = models.CharField(
        max_length=10, choices=FreezeMode.choices, default=FreezeMode.PAUSE
    )
    # The step sandbox (orchestrator/sandbox.py): "none" cuts the network of every step of
    # the stages that target this environment; step_limits overrides the installation's
    # default limits ({"memory_mb", "processes", "cpu_seconds"}, each optional).
    network = models.CharField(
        max_length=10, choices=[("default", "default"), ("none", "none")], default="default"
    )
    step_limits = models.JSONField(default=dict, blank=True)

    objects = RestrictedManager()

    class Meta:
        ordering = ["name"]
        permissions = [
            ("approve_environment", "Can approve deployments to the environment"),
            ("override_environment", "Can override soft-mandatory denials (break-glass)"),
            ("manage_secrets", "Can create, replace, rotate and delete the environment's secrets"),
        ]

    # The settings a person edits (environment page, admin); governance.actions writes them.
    SETTINGS = (
        "tier",
        "protected",
        "timezone",
        "approval_ttl_hours",
        "reminder_minutes",
        "notify_webhook_url",
        "max_wait_days",
        "freeze_mode",
    )

    def __str__(self) -> str:
        return self.name

    @property
    def approval_ttl(self) -> timedelta:
        return timedelta(hours=self.approval_ttl_hours)

    def freeze_at(self, now: dt.datetime) -> dict | None:
        """The freeze window ``start <= now < end`` (None: not frozen). Raises ValueError,
        KeyError or TypeError for a malformed window."""
        now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
        for window in self.freeze_windows or []:
            if _aware(window["start"]) <= now < _aware(window["end"]):
                return window
        return None

    def in_change_window(self, now: dt.datetime) -> bool:
        """Does `now`, in the environment's time zone, fall on one of a change window's
        ``days`` (Monday=0) with ``start <= time < end`` (``"HH:MM"``)? A window whose end is
        not after its start runs past midnight into the next day. No change windows at all
        means no restriction (True)."""
        if not self.change_windows:
            return True
        now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
        local = now.astimezone(ZoneInfo(self.timezone or "UTC"))
        moment = local.time().replace(tzinfo=None)
        for window in self.change_windows:
            start, end = _hhmm(window["start"]), _hhmm(window["end"])
            days = set(range(7) if window.get("days") is None else window["days"])
            if start < end:
                hit = local.weekday() in days and start <= moment < end
            else:  # overnight: from start on a listed day until end on the next day
                yesterday = (local.weekday() - 1) % 7
                hit = (local.weekday() in days and moment >= start) or (
                    yesterday in days and moment < end
                )
            if hit:
                return True
        return False

    def fingerprint(self) -> str:
        """A hash of everything the environment editor shows. The editor posts the whole
        desired state (a rule left out is deleted), so saving over a newer state would
        silently undo someone else's change: the form carries this hash and a mismatch
        refuses the save (governance.actions.update_environment)."""
        state = {name: getattr(self, name) for name in self.SETTINGS}
        state["freeze_windows"] = self.freeze_windows or []
        state["change_windows"] = self.change_windows or []
        state["rules"] = sorted(
            (r.group.name, r.required_count) for r in self.approval_rules.select_related("group")
        )
        text = json.dumps(state, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


class ApprovalRule(models.Model):
    """`required_count` approvals from members of `group`. All rules of an environment must
    hold at once; one approval is attributed to at most one rule (see governance/gates.py)."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="approval_rules"
    )
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="+")
    required_count = models.PositiveIntegerField(default=1)
    # Escalation: when the rule is still short of approvals `sla_minutes` after the gate
    # started waiting, members of `backup_group` become eligible for it too (0: no SLA).
    sla_minutes = models.PositiveIntegerField(default=0)
    backup_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["environment", "group__name"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "group"], name="unique_rule_group"),
            models.CheckConstraint(condition=Q(required_count__gte=1), name="rule_count_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.environment}: {self.required_count} from {self.group.name}"


class Enforcement(models.TextChoices):
    ADVISORY = "advisory"
    SOFT_MANDATORY = "soft-mandatory"
    HARD_MANDATORY = "hard-mandatory"


class Policy(models.Model):
    """A policy as code (Rego v1). `source` is the draft being edited; gates only ever use
    `current_version`, an immutable PolicyVersion created by publishing.

    Scope: the environments listed, plus every environment whose tier is in `tiers`.
    test_cases: [{"name", "input": {...}, "expect": {"deny": [..] | int, "warn": [..] | int}}]"""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    source = models.TextField()
    enforcement = models.CharField(
        max_length=20, choices=Enforcement.choices, default=Enforcement.ADVISORY
    )
    environments = models.ManyToManyField(Environment, blank=True, related_name="policies")
    tiers = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    test_cases = models.JSONField(default=list, blank=True)
    current_version = models.ForeignKey(
        "PolicyVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = RestrictedManager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return self.name

    @property
    def has_unpublished_changes(self) -> bool:
        v = self.current_version
        return v is None or v.source != self.source or v.enforcement != self.enforcement


class PolicyVersion(models.Model):
    """An immutable published revision of a policy."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    source = models.TextField()
    sha256 = models.CharField(max_length=64)
    enforcement = models.CharField(max_length=20, choices=Enforcement.choices)
    test_results = models.JSONField(default=list, blank=True)
    # OPA's coverage of the source by the test cases run at publish:
    # {"covered": [line, ...], "not_covered": [...], "percent": float}; {} without test cases.
    coverage = models.JSONField(default=dict, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = RestrictedManager()

    class Meta:
        ordering = ["policy", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "number"], name="unique_policy_version")
        ]

    def __str__(self) -> str:
        return f"{self.policy.name} v{self.number}"


class GateStatus(models.TextChoices):
    WAITING = "waiting"
    OPEN = "open"
    REJECTED = "rejected"
    BLOCKED = "blocked"
    OVERRIDDEN = "overridden"
    EXPIRED = "expired"


GATE_FINAL = frozenset(
    {GateStatus.OPEN, GateStatus.REJECTED, GateStatus.BLOCKED, GateStatus.OVERRIDDEN}
)
GATE_MACHINE = StateMachine(
    "gate",
    GateStatus.values,
    {
        GateStatus.WAITING: {
            GateStatus.OPEN,
            GateStatus.OVERRIDDEN,
            GateStatus.BLOCKED,
            GateStatus.REJECTED,
            GateStatus.EXPIRED,
        },
        # Open is final for people, not for the engine: until the stage is dispatched every
        # check re-evaluates, and a freeze that started (or a voided approval) takes it back.
        GateStatus.OPEN: {GateStatus.WAITING, GateStatus.OVERRIDDEN, GateStatus.BLOCKED},
        GateStatus.OVERRIDDEN: {GateStatus.WAITING, GateStatus.OPEN, GateStatus.BLOCKED},
    },
)
BLOCKING_RESULTS = ("deny", "error")


class GateQuerySet(RestrictedQuerySet):
    """The read rules of gates, each written once (pages, API, badge and notifications)."""

    def _waiting_parts(self, user, now=None) -> list[tuple]:
        """(principal, queryset) pairs whose union is waiting_for(user): principal None for
        the user's own rights, then one per delegator they stand in for now (a delegation in
        force: the delegator's permission and groups, gates the delegate can see, neither
        of them triggered, last edited or decided it)."""
        own = self._waiting_as(user, user, [user])
        if not (user and user.is_authenticated and user.is_active):
            return [(None, own)]
        parts = [(None, own)]
        delegations = (
            Delegation.objects.active(now).filter(delegate=user).select_related("delegator")
        )
        for d in delegations.order_by("delegator__username"):
            qs = self._waiting_as(d.delegator, user, [user, d.delegator]).filter(
                pk__in=self.model.objects.restrict(user, "view").values("pk")
            )
            parts.append((d.delegator, qs))
        return parts

    def _waiting_as(self, holder, user, people) -> models.QuerySet:
        """Waiting gates `holder`'s rights decide, none of `people` triggered, last edited or
        decided (or had decided for them)."""
        groups = holder.groups.all() if holder is not None and holder.is_authenticated else []
        ruled = ApprovalRule.objects.filter(group__in=groups).values("environment_id")
        escalated = GateEscalation.objects.filter(backup_group__in=groups).values("gate_id")
        ids = [p.pk for p in people if p is not None and p.pk is not None]
        decided = Approval.objects.filter(void=False).filter(
            models.Q(user__in=ids) | models.Q(on_behalf_of__in=ids)
        )
        return (
            self.restrict(holder, "approve")
            .filter(status=GateStatus.WAITING)
            .filter(models.Q(environment_id__in=ruled) | models.Q(pk__in=escalated))
            .exclude(stage_run__run__triggered_by__in=ids)
            .exclude(stage_run__run__version__author__in=ids)
            .exclude(pk__in=decided.values("gate_id"))
        )

    def waiting_for(self, user) -> models.QuerySet:
        """Waiting gates `user` can still act on — the approvals inbox and its badge: of
        environments they may approve, in pipelines they may view, with a rule of one of
        their groups (or escalated to one of them), not triggered or last edited by them,
        and not decided by them yet — plus the same for each approver they stand in for
        (Delegation). Subqueries, not joins: one row per gate."""
        parts = self._waiting_parts(user)
        if len(parts) == 1:
            return parts[0][1]
        match = models.Q()
        for _, qs in parts:
            match |= models.Q(pk__in=qs.values("pk"))
        return self.filter(match)

    def decidable_by(self, user) -> models.QuerySet:
        """waiting_for(user), less the gates whose `author` parameter names `user` (or, for a
        gate they would decide for a delegator, the delegator): separation of duties; the
        rules that need more than a query — earlier editors, the triggerers of a retried run
        — are applied when they approve."""
        ids: set[int] = set()
        for principal, qs in self._waiting_parts(user):
            people = [user] if principal is None else [user, principal]
            # The author parameter is free text: compare in Python on the (small) waiting set.
            ids.update(
                pk
                for pk, author in qs.values_list(
                    "pk", "stage_run__run__parameters__author"
                ).distinct()
                if not (
                    isinstance(author, str)
                    and any(identity.names_person(author, p) for p in people)
                )
            )
        return self.filter(pk__in=ids)


class Gate(models.Model):
    """The checkpoint in front of one stage run that targets a protected environment.

    `input` is the last policy input document evaluated and `input_hash` its hash; approvals
    record the `seen_hash` they were given against, and become void when it changes."""

    stage_run = models.OneToOneField(
        "orchestrator.StageRun", on_delete=models.CASCADE, related_name="gate"
    )
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="gates")
    status = models.CharField(max_length=20, choices=GateStatus.choices, default=GateStatus.WAITING)
    reason = models.TextField(blank=True)
    input = models.JSONField(default=dict, blank=True)
    input_hash = models.CharField(max_length=64, blank=True)
    seen_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    reminded_at = models.DateTimeField(null=True, blank=True)

    objects = models.Manager.from_queryset(GateQuerySet)()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"gate {self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in GATE_FINAL

    def overridden_policies(self, overrides=None) -> set[tuple[str, int]]:
        """(policy name, version) pairs an override of this gate passed."""
        if overrides is None:
            overrides = self.overrides.all()
        return {(p.get("policy"), p.get("version")) for o in overrides for p in o.policies}

    def open_soft_denials(self, decisions=None, overrides=None) -> list:
        """The current soft-mandatory denials that no override of this gate covers yet (what
        an override would pass). `decisions` (current ones, with policy_version__policy) and
        `overrides` may be given when the caller has them loaded."""
        if decisions is None:
            decisions = self.decisions.filter(current=True).select_related("policy_version__policy")
        covered = self.overridden_policies(overrides)
        return [
            d
            for d in decisions
            if d.enforcement == Enforcement.SOFT_MANDATORY
            and d.result in BLOCKING_RESULTS
            and (d.policy_version.policy.name, d.policy_version.number) not in covered
        ]


class GateEscalation(models.Model):
    """An approval rule of a gate whose SLA passed without enough approvals: members of the
    rule's backup group became eligible for it (and were notified)."""

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="escalations")
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="+")
    backup_group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField()

    class Meta:
        ordering = ["gate", "at"]
        constraints = [
            models.UniqueConstraint(fields=["gate", "group"], name="one_escalation_per_rule")
        ]

    def __str__(self) -> str:
        return f"gate {self.gate_id}: {self.group_id} → {self.backup_group_id}"


class PolicyDecision(models.Model):
    """The decision log: one evaluation of one policy version against one input."""

    gate = models.ForeignKey(
        Gate, null=True, blank=True, on_delete=models.CASCADE, related_name="decisions"
    )
    policy_version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, related_name="decisions"
    )
    enforcement = models.CharField(max_length=20, choices=Enforcement.choices)
    input_hash = models.CharField(max_length=64)
    result = models.CharField(max_length=10)  # pass | warn | deny | error
    deny = models.JSONField(default=list, blank=True)
    warn = models.JSONField(default=list, blank=True)
    duration_ms = models.FloatField(default=0)
    current = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = RestrictedManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["gate", "current"])]

    def __str__(self) -> str:
        return f"{self.policy_version} → {self.result}"

    @property
    def messages(self) -> list[str]:
        return list(self.deny) + list(self.warn)


class ApprovalDecision(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"


class Approval(models.Model):
    """One person's decision on a gate. Only one live (not void) decision per user per gate;
    a void approval (expired, or the gate input changed) stays for the record."""

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # A decision a delegate (`user`, the person acting) made for an approver who is away
    # (a Delegation): it counts with the delegator's groups and shows as "sara for sam".
    on_behalf_of = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decision = models.CharField(max_length=10, choices=ApprovalDecision.choices)
    comment = models.TextField(blank=True)
    groups = models.JSONField(default=list, blank=True)
    attributed_group = models.CharField(max_length=150, blank=True)
    seen_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    void = models.BooleanField(default=False)
    void_reason = models.CharField(max_length=200, blank=True)
    # The API token the decision was made with (None: the browser session). Tokens are
    # never deleted, only revoked, so the evidence stays.
    token = models.ForeignKey(
        "ApiToken", null=True, blank=True, on_delete=models.PROTECT, related_name="approvals"
    )

    objects = RestrictedManager()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["gate", "user"], condition=Q(void=False), name="one_live_decision_per_user"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.decision} gate {self.gate_id}"


class DelegationQuerySet(models.QuerySet):
    def active(self, now=None) -> models.QuerySet:
        """Delegations in force at `now`: started, not ended, not revoked, between active
        users."""
        now = now or timezone.now()
        return self.filter(
            revoked_at__isnull=True,
            starts_at__lte=now,
            ends_at__gt=now,
            delegator__is_active=True,
            delegate__is_active=True,
        )


class Delegation(models.Model):
    """An approver away (out of office) lets a named colleague decide gates in their place
    from `starts_at` to `ends_at`: while it is in force the delegate may approve or reject
    what the delegator may, and each such decision records `on_behalf_of`. Separation of
    duties still applies to both people (governance.approvers). Written only by the verbs of
    governance.delegation; a revoked delegation stays for the record."""

    delegator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="delegations_given"
    )
    delegate = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="delegations_held"
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    objects = models.Manager.from_queryset(DelegationQuerySet)()

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [models.Index(fields=["delegate", "ends_at"])]
        constraints = [
            models.CheckConstraint(
                condition=~Q(delegator=models.F("delegate")), name="delegation_not_to_self"
            ),
            models.CheckConstraint(
                condition=Q(ends_at__gt=models.F("starts_at")), name="delegation_ends_after_start"
            ),
        ]

    def __str__(self) -> str:
        period = f"{self.starts_at:%Y-%m-%d}–{self.ends_at:%Y-%m-%d}"
        return f"{self.delegator} → {self.delegate} ({period})"

    def in_force(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and self.starts_at <= now < self.ends_at


class Override(models.Model):
    """A break-glass pass of soft-mandatory denials, with a justification. Flagged in every
    report."""

    gate = models.ForeignKey(Gate, on_delete=models.CASCADE, related_name="overrides")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    justification = models.TextField()
    policies = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"override of gate {self.gate_id} by {self.user}"


class Outcome(models.TextChoices):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


class AuditEvent(models.Model):
    """Append-only, hash-chained record of everything that happened. Written only by
    governance.audit.record, in the transaction of the change it records. The actor is kept
    as id + name (no foreign key) so deleting a user never rewrites history. On PostgreSQL a
    trigger refuses UPDATE, DELETE and TRUNCATE."""

    seq = models.PositiveBigIntegerField(unique=True)
    at = models.DateTimeField(db_index=True)
    actor_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_name = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    details = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = RestrictedManager()

    class Meta:
        ordering = ["seq"]
        indexes = [models.Index(fields=["target_type", "target_id"])]
        permissions = [("export_reports", "Can export compliance reports and the audit log")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action}"


class AuditChainHead(models.Model):
    """A single row (pk=1) holding the chain head; appends lock it, which serializes them so
    the chain has no gaps or forks under concurrency."""

    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"head #{self.seq}"


class ReportJob(models.Model):
    """A PDF report generated in the background."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    MACHINE = StateMachine(
        "report job",
        Status.values,
        {
            Status.QUEUED: {Status.RUNNING, Status.FAILED},
            Status.RUNNING: {Status.DONE, Status.FAILED},
        },
    )

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    kind = models.CharField(max_length=30, default="changes")
    filters = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    file = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RestrictedManager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"report {self.pk} ({self.status})"


class AuditCheckpoint(models.Model):
    """A signed statement "the audit chain's row `seq` has hash `hash`", made at `at` with the
    Ed25519 key `key_id` (governance.checkpoints). The copies that matter are the ones in the
    sinks outside the database; this row is an index for incremental verification, trusted
    only when its signature verifies with the public key (the database owner cannot forge
    one). Not audited itself: a checkpoint that wrote an audit row would move the head it
    signs."""

    seq = models.PositiveBigIntegerField(unique=True)
    hash = models.CharField(max_length=64)
    at = models.CharField(max_length=40)  # exactly the signed text (ISO 8601, UTC)
    key_id = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)  # base64 of the 64-byte Ed25519 signature
    timestamp = models.TextField(blank=True)  # RFC 3161 token over the signature, base64 DER
    created_at = models.DateTimeField(auto_now_add=True)
    # sink name -> "ok" or the last error, so a sink that was down can be written later.
    sinks = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"checkpoint #{self.seq}"


class AuditStreamCursor(models.Model):
    """How far one configured SIEM destination (settings CLEARWAY["AUDIT_STREAMS"], by name)
    has acknowledged the audit log. Delivery (governance.siem) sends the rows after
    `acked_seq` in seq order and moves it only on the receiver's acknowledgement, so after an
    outage it resumes with no gap. `leased_until` lets one worker at a time deliver to a
    destination (claimed with a conditional UPDATE, never a lock held across the network)."""

    name = models.CharField(max_length=64, unique=True)
    acked_seq = models.PositiveBigIntegerField(default=0)
    acked_at = models.DateTimeField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    failures = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} at #{self.acked_seq}"


class NotificationChannel(models.Model):
    """Where gate notifications of an environment go (or of every environment, when
    `environment` is empty), addressed by an apprise URL: slack://… or
    https://hooks.slack.com/services/…, workflows://… (Microsoft Teams through Power Automate),
    mailto://…, json:// or jsons:// (a generic JSON webhook). The URL holds the channel's
    credentials: it is never shown in full outside the admin form, nor audited."""

    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.CASCADE, related_name="channels"
    )
    name = models.CharField(max_length=100)
    url = models.TextField(help_text="an apprise URL, e.g. slack://T000/B000/XXXX")
    events = models.JSONField(
        default=list, blank=True, help_text="notification kinds to send; empty: all"
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["environment__name", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.environment or 'all environments'})"


class NotificationPreference(models.Model):
    """One user's choices: which notification kinds they want at all, whether by e-mail, and
    an optional personal apprise URL (e.g. their own Slack or Teams webhook)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_pref"
    )
    email = models.BooleanField(default=True)
    url = models.TextField(blank=True)
    events = models.JSONField(default=list, blank=True, help_text="kinds wanted; empty: all")

    def __str__(self) -> str:
        return f"notification preferences of {self.user}"

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events


class NotificationDelivery(models.Model):
    """One notification to one channel or personal URL: retried with backoff by the
    clearway.deliver_notification task; a failure after the last retry stays here (shown to
    admins) and is audited. Never blocks a gate: it is sent after the gate's commit."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    kind = models.CharField(max_length=32)
    gate = models.ForeignKey(Gate, null=True, blank=True, on_delete=models.SET_NULL)
    # A delivery is about a gate, or about a governance change request waiting for review.
    change_request = models.ForeignKey(
        "ChangeRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    channel = models.ForeignKey(
        NotificationChannel, null=True, blank=True, on_delete=models.SET_NULL
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    target = models.CharField(max_length=255, help_text="the URL with its secrets masked")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} to {self.target}: {self.status}"


class Secret(models.Model):
    """A managed secret (governance/secrets.py): a name and a scope — one environment (its
    stages receive it; a protected environment's only once the gate is open) or one team
    (every stage of the team's pipelines). The value lives in SecretVersion rows, encrypted;
    `version` is the current one. Values are write-only: nothing ever reads one back out
    except the release to a step."""

    name = models.CharField(max_length=128)
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.CASCADE, related_name="secrets"
    )
    team = models.ForeignKey(
        "orchestrator.Team", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(environment__isnull=False, team__isnull=True)
                | Q(environment__isnull=True, team__isnull=False),
                name="secret_has_one_scope",
            ),
            models.UniqueConstraint(
                fields=["name", "environment"],
                condition=Q(environment__isnull=False),
                name="unique_secret_per_environment",
            ),
            models.UniqueConstraint(
                fields=["name", "team"],
                condition=Q(team__isnull=False),
                name="unique_secret_per_team",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.scope_label})"

    @property
    def scope_label(self) -> str:
        if self.environment_id:
            return f"environment {self.environment.name}"
        return f"team {self.team.slug}"


class SecretVersion(models.Model):
    """One value of a secret, encrypted (Fernet: AES-128-CBC + HMAC-SHA256) with one of the
    keys of CLEARWAY_SECRET_KEYS — `key_id` names which (a fingerprint, never the key)."""

    secret = models.ForeignKey(Secret, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    ciphertext = models.TextField()
    key_id = models.CharField(max_length=16)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["secret", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["secret", "number"], name="unique_secret_version")
        ]

    def __str__(self) -> str:
        return f"{self.secret.name} v{self.number}"


class ChangeRequestKind(models.TextChoices):
    POLICY_PUBLISH = "policy.publish", "publish a policy's draft"
    POLICY_SCOPE = "policy.scope", "change a policy's scope or enable / disable it"
    ENVIRONMENT_UPDATE = "environment.update", "change an environment's controls"


class ChangeRequestStatus(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"  # approved and being applied (the policy tests run outside a lock)
    REJECTED = "rejected"
    APPLIED = "applied"
    WITHDRAWN = "withdrawn"
    SUPERSEDED = "superseded"


CHANGE_REQUEST_MACHINE = StateMachine(
    "change request",
    ChangeRequestStatus.values,
    {
        ChangeRequestStatus.PENDING: {
            ChangeRequestStatus.APPROVED,
            ChangeRequestStatus.REJECTED,
            ChangeRequestStatus.WITHDRAWN,
            ChangeRequestStatus.SUPERSEDED,
        },
        # Applying failed (its tests failed, the target changed underneath): back to pending.
        ChangeRequestStatus.APPROVED: {ChangeRequestStatus.APPLIED, ChangeRequestStatus.PENDING},
    },
)


class ChangeRequest(models.Model):
    """Four eyes on a governance change (governance/change_requests.py): publishing or
    (re)scoping a policy, or changing an environment's controls, is proposed by one person and
    takes effect only when another person with the permission the change needs approves it
    (or a superuser applies it alone with a justification: an exception in the reports).

    `payload` is what to apply, `base` the target's state when it was proposed (a request
    whose target changed since is stale and refused), `diff` what a reviewer reads (rows of
    {"field", "from", "to"} plus unified diff lines for a policy's source) and `checks` the
    test results, coverage and dry run of a policy publication, run at proposal time."""

    kind = models.CharField(max_length=32, choices=ChangeRequestKind.choices)
    policy = models.ForeignKey(
        Policy, null=True, blank=True, on_delete=models.CASCADE, related_name="change_requests"
    )
    environment = models.ForeignKey(
        Environment,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="change_requests",
    )
    payload = models.JSONField(default=dict, blank=True)
    base = models.JSONField(default=dict, blank=True)
    diff = models.JSONField(default=dict, blank=True)
    checks = models.JSONField(default=dict, blank=True)
    summary = models.CharField(max_length=300, blank=True)
    status = models.CharField(
        max_length=12, choices=ChangeRequestStatus.choices, default=ChangeRequestStatus.PENDING
    )
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    proposed_at = models.DateTimeField(default=timezone.now, db_index=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    justification = models.TextField(blank=True)
    exception = models.BooleanField(default=False)
    applied_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    objects = RestrictedManager()

    class Meta:
        ordering = ["-proposed_at", "-id"]
        indexes = [models.Index(fields=["status", "kind"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(policy__isnull=False, environment__isnull=True)
                | Q(policy__isnull=True, environment__isnull=False),
                name="change_request_has_one_target",
            )
        ]

    def __str__(self) -> str:
        return f"change request {self.pk} ({self.kind} {self.target_name}, {self.status})"

    @property
    def target(self):
        return self.policy if self.policy_id else self.environment

    @property
    def target_name(self) -> str:
        target = self.target
        return target.name if target is not None else ""


# --- API tokens, step-up, sessions (docs/security.md "API tokens" and "Sessions") ---------


class TokenScope(models.TextChoices):
    READ = "read", "read: every GET of the API, and the live events websocket"
    TRIGGER = "trigger", "trigger: start, cancel and retry runs"
    APPROVE = "approve", "approve: approve, reject and override gates (at most 24 h)"
    POLICY = "policy", "policy: create, change, publish and test policies"
    ADMIN = "admin", "admin: pipelines, environments, secrets, reports"


class ApiToken(models.Model):
    """A named API token. Only a SHA-256 digest of the token is stored: the token itself
    (`cw_<prefix>_<secret>`, 256 random bits) is shown once, when it is created. `prefix` is
    the short public part used to find the row (and shown to tell tokens apart)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} (cw_{self.prefix}…)"

    def state(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "active"


class StepUp(models.Model):
    """A user proved again who they are (today: re-entered their password; the MFA issue adds
    TOTP and WebAuthn as further `method`s). governance.stepup.recent_step_up reads it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    method = models.CharField(max_length=20, default="password")
    session_key = models.CharField(max_length=40, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["user", "-at"], name="stepup_user_at")]

    def __str__(self) -> str:
        return f"{self.user} {self.method} {self.at:%Y-%m-%d %H:%M}"


class UserSession(models.Model):
    """A signed-in browser session, recorded at sign-in, so that "sign out everywhere" can end
    every session of a user whatever the session engine. `ip` is governance.client_ip's
    answer at sign-in, shown to the user; the session is bound to nothing (see
    docs/security.md)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.user} session from {self.created_at:%Y-%m-%d %H:%M}"

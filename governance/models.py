"""Governance domain: environments and their approval rules, policies as code with immutable
versions, gates with their policy decisions, approvals and overrides, the hash-chained audit
log and report jobs."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone


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
    # The step sandbox (orchestrator/sandbox.py): "none" cuts the network of every step of
    # the stages that target this environment; step_limits overrides the installation's
    # default limits ({"memory_mb", "processes", "cpu_seconds"}, each optional).
    network = models.CharField(
        max_length=10, choices=[("default", "default"), ("none", "none")], default="default"
    )
    step_limits = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("approve_environment", "Can approve deployments to the environment"),
            ("override_environment", "Can override soft-mandatory denials (break-glass)"),
            ("manage_secrets", "Can create, replace, rotate and delete the environment's secrets"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def approval_ttl(self) -> timedelta:
        return timedelta(hours=self.approval_ttl_hours)


class ApprovalRule(models.Model):
    """`required_count` approvals from members of `group`. All rules of an environment must
    hold at once; one approval is attributed to at most one rule (see governance/gates.py)."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="approval_rules"
    )
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="+")
    required_count = models.PositiveIntegerField(default=1)

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
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

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

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"gate {self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in GATE_FINAL


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
    decision = models.CharField(max_length=10, choices=ApprovalDecision.choices)
    comment = models.TextField(blank=True)
    groups = models.JSONField(default=list, blank=True)
    attributed_group = models.CharField(max_length=150, blank=True)
    seen_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    void = models.BooleanField(default=False)
    void_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["gate", "user"], condition=Q(void=False), name="one_live_decision_per_user"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.decision} gate {self.gate_id}"


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

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"report {self.pk} ({self.status})"


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

"""Orchestration domain: teams, pipelines (as versioned YAML), runs, stage runs, step runs
and their logs.

Status fields are TextChoices with a set of terminal states. Transitions are methods that
check the current state and raise IllegalTransition on an illegal move; they save with
update_fields. Racing transitions lock the row first (see actions.py and engine.py).
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone


class IllegalTransition(Exception):
    """Raised when a status change is not allowed from the current state."""


class Team(models.Model):
    """A team owns pipelines. Its members are the users of `group`; object permissions on the
    team's pipelines are granted to that group."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="team")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


class Pipeline(models.Model):
    """A pipeline defined as code. Its definition lives in immutable PipelineVersion rows;
    `current_version` points at the newest."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="pipelines")
    current_version = models.ForeignKey(
        "PipelineVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    webhook_secret = models.CharField(max_length=100, default=_new_secret)
    next_run_number = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        permissions = [("run_pipeline", "Can trigger runs of the pipeline")]

    def __str__(self) -> str:
        return self.name


class WebhookDelivery(models.Model):
    """A timestamped webhook request that was accepted (see actions.webhook_refusal): its
    signature may not be used again while its timestamp is within the allowed window, so a
    captured request cannot be replayed. Rows older than twice the window are deleted."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="+")
    signature = models.CharField(max_length=64)  # the HMAC hex digest
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "signature"], name="unique_delivery")
        ]

    def __str__(self) -> str:
        return f"{self.pipeline_id}:{self.signature[:12]}"


class PipelineVersion(models.Model):
    """One immutable revision of a pipeline's YAML, with the parsed spec. A run points at the
    version it ran."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.TextField()
    spec = models.JSONField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pipeline", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "number"], name="unique_version_number")
        ]

    def __str__(self) -> str:
        return f"{self.pipeline.slug} v{self.number}"


class Trigger(models.TextChoices):
    MANUAL = "manual"
    API = "api"
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    BLOCKED = "blocked"


RUN_TERMINAL = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.BLOCKED}
)


class StageStatus(models.TextChoices):
    PENDING = "pending"
    WAITING = "waiting"  # at a gate
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"
    BLOCKED = "blocked"  # a gate refused


STAGE_TERMINAL = frozenset(
    {
        StageStatus.SUCCEEDED,
        StageStatus.FAILED,
        StageStatus.SKIPPED,
        StageStatus.CANCELED,
        StageStatus.BLOCKED,
    }
)


class StepStatus(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"


STEP_TERMINAL = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELED}
)


class Run(models.Model):
    """One execution of a pipeline version. `event_seq` is the run's monotonically increasing
    sequence number carried by every live event, so a client can detect a gap."""

    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="runs")
    version = models.ForeignKey(PipelineVersion, on_delete=models.PROTECT, related_name="runs")
    number = models.PositiveIntegerField()
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.MANUAL)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    parameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    reason = models.TextField(blank=True)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    event_seq = models.PositiveBigIntegerField(default=0)
    # False once a step of the run ran with CLEARWAY_SANDBOX=off (pages and reports say so).
    sandboxed = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["pipeline", "number"], name="unique_run_number")
        ]
        indexes = [
            models.Index(fields=["pipeline", "-created_at"]),
            models.Index(fields=["status", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.pipeline.slug} #{self.number}"

    @property
    def is_terminal(self) -> bool:
        return self.status in RUN_TERMINAL

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    def set_status(self, status: str, *, reason: str = "", now=None, save: bool = True) -> list:
        """Move to `status`; terminal runs never move again. Returns the changed fields
        (saved unless `save` is false: the caller writes them)."""
        if self.status == status:
            return []
        if self.is_terminal:
            raise IllegalTransition(f"run {self.pk} is {self.status}; cannot become {status}")
        now = now or timezone.now()
        self.status = status
        fields = ["status"]
        if status == RunStatus.RUNNING and self.started_at is None:
            self.started_at = now
            fields.append("started_at")
        if status in RUN_TERMINAL:
            self.finished_at = now
            fields.append("finished_at")
            if self.started_at is None:
                self.started_at = now
                fields.append("started_at")
        if reason or status in (RunStatus.RUNNING, RunStatus.SUCCEEDED):
            self.reason = reason  # a stale "waits at its gate" must not outlive the wait
            fields.append("reason")
        if save:
            self.save(update_fields=fields)
        return fields


class StageRun(models.Model):
    """A stage of a run. `needs` are names of stages of the same run."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="stages")
    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField()
    needs = models.JSONField(default=list, blank=True)
    environment = models.ForeignKey(
        "governance.Environment",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="stage_runs",
    )
    status = models.CharField(
        max_length=20, choices=StageStatus.choices, default=StageStatus.PENDING
    )
    reason = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name"], name="unique_stage_name_per_run")
        ]

    def __str__(self) -> str:
        return f"{self.run} / {self.name}"

    @property
    def is_terminal(self) -> bool:
        return self.status in STAGE_TERMINAL

    def set_status(self, status: str, *, reason: str = "", now=None, save: bool = True) -> list:
        """As Run.set_status."""
        if self.status == status:
            return []
        if self.is_terminal:
            raise IllegalTransition(f"stage {self.pk} is {self.status}; cannot become {status}")
        now = now or timezone.now()
        self.status = status
        fields = ["status"]
        if status == StageStatus.RUNNING and self.started_at is None:
            self.started_at = now
            fields.append("started_at")
        if status in STAGE_TERMINAL:
            self.finished_at = now
            fields.append("finished_at")
        if reason or status in (StageStatus.QUEUED, StageStatus.RUNNING, StageStatus.SUCCEEDED):
            self.reason = reason
            fields.append("reason")
        if save:
            self.save(update_fields=fields)
        return fields


class StepRun(models.Model):
    """A step of a stage run. A worker claims it with a conditional UPDATE on
    (status=queued, attempt=n), so a redelivered task message never runs it twice."""

    stage = models.ForeignKey(StageRun, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, default="run")
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    log_lines = models.PositiveIntegerField(default=0)
    log_bytes = models.PositiveBigIntegerField(default=0)
    log_truncated = models.BooleanField(default=False)
    # The secrets released to the step's last attempt: [{"name", "version", "scope"}] —
    # names and versions only, never a value.
    secrets = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["stage", "position"]

    def __str__(self) -> str:
        return f"{self.stage} / {self.name}"

    @property
    def is_terminal(self) -> bool:
        return self.status in STEP_TERMINAL

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class LogChunk(models.Model):
    """A batch of log lines of a step. `offset` is the index of its first line; lines are
    stored joined by newlines. Offsets are dense: chunk n+1 starts where chunk n ends."""

    step = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="log_chunks")
    offset = models.PositiveIntegerField()
    line_count = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["step", "offset"]
        constraints = [
            models.UniqueConstraint(fields=["step", "offset"], name="unique_chunk_offset")
        ]

    def __str__(self) -> str:
        return f"{self.step_id}@{self.offset}+{self.line_count}"


def read_log(step: StepRun, offset: int = 0, limit: int = 5000) -> tuple[list[str], int]:
    """Lines of `step` from line `offset` on (at most about `limit`), and the next offset."""
    offset = max(0, offset)
    chunks = (
        LogChunk.objects.filter(step=step, offset__lt=offset + limit)
        .filter(offset__gte=offset - 10_000)  # bounds the scan; chunks hold <= batch lines
        .order_by("offset")
        .values_list("offset", "line_count", "text")
    )
    lines: list[str] = []
    for chunk_offset, count, text in chunks:
        if chunk_offset + count <= offset:
            continue
        chunk_lines = text.split("\n")
        lines.extend(chunk_lines[max(0, offset - chunk_offset) :])
        if len(lines) >= limit:
            break
    lines = lines[:limit]
    return lines, offset + len(lines)

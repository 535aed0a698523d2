"""Orchestration domain: teams, pipelines (as versioned YAML), runs, stage runs, step runs
and their logs.

Status fields are TextChoices with their allowed moves in a table next to them (a
kernel.states.StateMachine). The models' `move` methods check the table and change the
fields in memory; orchestrator.lifecycle is the only code that writes status columns (it
calls `move`, writes, audits and announces). Racing transitions lock the run row first (see
docs/architecture.md).
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone

from .kernel.restrict import RestrictedManager
from .kernel.states import IllegalTransition, StateMachine

__all__ = ["IllegalTransition"]  # re-exported: callers catch it from here


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

    objects = RestrictedManager()

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

    objects = RestrictedManager()

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


_RUN_ENDS = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.BLOCKED}
RUN_MACHINE = StateMachine(
    "run",
    RunStatus.values,
    {
        # Queued straight to an end: a first stage blocked at its gate, or with no steps.
        RunStatus.QUEUED: {RunStatus.RUNNING, RunStatus.WAITING, *_RUN_ENDS},
        RunStatus.RUNNING: {RunStatus.WAITING, *_RUN_ENDS},
        RunStatus.WAITING: {RunStatus.RUNNING, *_RUN_ENDS},
    },
)
RUN_TERMINAL = RUN_MACHINE.terminal


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


STAGE_MACHINE = StateMachine(
    "stage",
    StageStatus.values,
    {
        StageStatus.PENDING: {
            StageStatus.WAITING,
            StageStatus.QUEUED,
            StageStatus.SKIPPED,
            StageStatus.CANCELED,
            StageStatus.BLOCKED,
        },
        StageStatus.WAITING: {
            StageStatus.QUEUED,
            StageStatus.SKIPPED,
            StageStatus.CANCELED,
            StageStatus.BLOCKED,
        },
        # Queued to succeeded: every step skipped; to failed: a step failed before its
        # stage was seen running (reaped).
        StageStatus.QUEUED: {
            StageStatus.RUNNING,
            StageStatus.SUCCEEDED,
            StageStatus.FAILED,
            StageStatus.CANCELED,
        },
        StageStatus.RUNNING: {StageStatus.SUCCEEDED, StageStatus.FAILED, StageStatus.CANCELED},
    },
)
STAGE_TERMINAL = STAGE_MACHINE.terminal


class StepStatus(models.TextChoices):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"


STEP_MACHINE = StateMachine(
    "step",
    StepStatus.values,
    {
        # Pending to running: claimed inline by the worker that finished the step before.
        StepStatus.PENDING: {
            StepStatus.QUEUED,
            StepStatus.RUNNING,
            StepStatus.SKIPPED,
            StepStatus.CANCELED,
        },
        StepStatus.QUEUED: {StepStatus.RUNNING, StepStatus.CANCELED},
        # Running back to pending: a failed attempt with attempts left, re-queued at once.
        StepStatus.RUNNING: {
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.PENDING,
            StepStatus.CANCELED,
        },
    },
)
STEP_TERMINAL = STEP_MACHINE.terminal


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

    objects = RestrictedManager()

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

    def move(self, status: str, *, reason: str = "", now=None) -> list[str]:
        """Check the move against RUN_MACHINE and make it in memory; returns the changed
        fields (orchestrator.lifecycle writes them). Raises IllegalTransition."""
        if self.status == status:
            return []
        RUN_MACHINE.check(f"run {self.pk}", self.status, status)
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

    objects = RestrictedManager()

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

    def move(self, status: str, *, reason: str = "", now=None) -> list[str]:
        """As Run.move, against STAGE_MACHINE."""
        if self.status == status:
            return []
        STAGE_MACHINE.check(f"stage {self.pk}", self.status, status)
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

    objects = RestrictedManager()

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

    def move(self, status: str, *, now=None) -> list[str]:
        """Check the move against STEP_MACHINE and make it in memory with the fields that go
        with it; returns the changed fields. Queued starts a new attempt; running clears the
        previous attempt's outcome; an end (or a retry's way back to pending) stops the
        heartbeat."""
        if self.status == status:
            return []
        STEP_MACHINE.check(f"step {self.pk}", self.status, status)
        now = now or timezone.now()
        self.status = status
        fields = ["status"]
        if status == StepStatus.QUEUED:
            self.attempt += 1
            self.queued_at, self.heartbeat_at = now, None
            fields += ["attempt", "queued_at", "heartbeat_at"]
        elif status == StepStatus.RUNNING:
            self.started_at, self.heartbeat_at, self.finished_at = now, now, None
            self.exit_code, self.error = None, ""
            fields += ["started_at", "heartbeat_at", "finished_at", "exit_code", "error"]
        elif status != StepStatus.SKIPPED:
            self.finished_at, self.heartbeat_at = now, None
            fields += ["finished_at", "heartbeat_at"]
        return fields


class LogChunk(models.Model):
    """A batch of log lines of a step. `offset` is the index of its first line; lines are
    stored joined by newlines. Offsets are dense: chunk n+1 starts where chunk n ends."""

    step = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="log_chunks")
    offset = models.PositiveIntegerField()
    line_count = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    objects = RestrictedManager()

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


class Artifact(models.Model):
    """One file a step stored when it succeeded (its `artifacts:` in the pipeline), kept in
    the "artifacts" storage (settings.STORAGES) under `storage_key`. `name` is the name the
    pipeline gave it (a glob may store several files under one name, each with its `path`
    relative to the workspace); `sha256` is the digest of the stored bytes, checked again
    when a later stage receives the file. After `expires_at` the purge task deletes the
    stored file and sets `purged_at` (the row stays: reports and the audit log name it)."""

    stage_run = models.ForeignKey(StageRun, on_delete=models.CASCADE, related_name="artifacts")
    step_run = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=100)
    path = models.CharField(max_length=1024)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=200)
    storage_key = models.CharField(max_length=1024, unique=True)
    policy_input = models.BooleanField(default=False)
    optional = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    purged_at = models.DateTimeField(null=True, blank=True)

    objects = RestrictedManager()

    class Meta:
        ordering = ["stage_run", "name", "path"]
        constraints = [
            models.UniqueConstraint(
                fields=["step_run", "name", "path"], name="unique_artifact_file_per_step"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name}:{self.path}"

    @property
    def purged(self) -> bool:
        return self.purged_at is not None


class LogArchive(models.Model):
    """A finished step's log, moved from its LogChunk rows to the "artifacts" storage as a
    gzip file of independent members of `index_every` lines each: `offsets[k]` is the byte
    offset of member k (lines k*index_every …), so a window of lines is read with one
    ranged read and no decompression of the rest. `sha256` is the digest of the whole
    uncompressed text (lines joined and ended by newlines), checked before the chunks were
    deleted. Purged like artifacts, after `expires_at`."""

    step = models.OneToOneField(StepRun, on_delete=models.CASCADE, related_name="log_archive")
    storage_key = models.CharField(max_length=1024, unique=True)
    line_count = models.PositiveIntegerField()
    size = models.PositiveBigIntegerField()  # uncompressed bytes
    compressed_size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    index_every = models.PositiveIntegerField()
    offsets = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    purged_at = models.DateTimeField(null=True, blank=True)

    objects = RestrictedManager()

    def __str__(self) -> str:
        return f"log of step {self.step_id}"

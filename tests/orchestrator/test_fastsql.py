"""orchestrator.kernel.fastsql: the engine's plain-SQL reads and writes give the same rows and
instances as the ORM calls they replace (JSON, datetimes, NULLs, booleans included)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from orchestrator.kernel import fastsql
from orchestrator.models import LogChunk, Run, StageRun, StepRun, StepStatus

pytestmark = pytest.mark.django_db

FIELDS = [f.attname for f in StepRun._meta.concrete_fields]


def as_orm_reads(obj) -> dict:
    return {name: getattr(obj, name) for name in FIELDS}


@pytest.fixture
def step(make_run):
    run = make_run()
    return StepRun.objects.filter(stage__run=run).order_by("pk").first()


def test_select_builds_the_instances_the_orm_would(step):
    StepRun.objects.filter(pk=step.pk).update(
        config={"run": "echo ü", "env": {"A": "1"}, "retries": 2},
        heartbeat_at=timezone.now(),
        exit_code=None,
        log_truncated=True,
    )
    [fast] = fastsql.select(StepRun, "id = %s", [step.pk])
    orm = StepRun.objects.get(pk=step.pk)
    assert as_orm_reads(fast) == as_orm_reads(orm)
    assert fast.config["env"] == {"A": "1"} and fast.log_truncated is True
    assert fast.heartbeat_at.tzinfo is not None
    assert not fast._state.adding and fast._state.db == connection.alias


def test_select_orders_and_locks(step):
    run = step.stage.run
    with transaction.atomic():
        [locked] = fastsql.select(Run, "id = %s", [run.pk], lock=True)
        assert locked.pk == run.pk
    stages = fastsql.select(StageRun, "run_id = %s", [run.pk], order_by="position DESC")
    assert [s.pk for s in stages] == list(
        StageRun.objects.filter(run=run).order_by("-position").values_list("pk", flat=True)
    )
    assert fastsql.select(StageRun, "run_id = %s", [-1]) == []


def test_update_writes_exactly_the_named_fields(step):
    now = timezone.now()
    step.status, step.finished_at, step.exit_code = StepStatus.FAILED, now, 3
    step.error = "bad – ünïcode"
    step.config = {"changed": "in memory only"}
    assert fastsql.update(step, ["status", "finished_at", "exit_code", "error"]) == 1
    fresh = StepRun.objects.get(pk=step.pk)
    assert (fresh.status, fresh.finished_at, fresh.exit_code, fresh.error) == (
        StepStatus.FAILED,
        now,
        3,
        "bad – ünïcode",
    )
    assert fresh.config != {"changed": "in memory only"}  # not named: not written
    step.heartbeat_at = None
    fastsql.update(step, ["heartbeat_at"])
    assert StepRun.objects.get(pk=step.pk).heartbeat_at is None


def test_update_where_is_conditional(step):
    step = StepRun.objects.filter(stage__run=step.stage.run, status=StepStatus.PENDING).first()
    values = {"status": StepStatus.RUNNING, "attempt": step.attempt + 1, "worker": "w1"}
    where = {"id": step.pk, "status": StepStatus.PENDING, "attempt": step.attempt}
    assert fastsql.update_where(StepRun, values, where) == 1
    assert fastsql.update_where(StepRun, values, where) == 0  # no longer pending
    fresh = StepRun.objects.get(pk=step.pk)
    assert (fresh.status, fresh.worker) == (StepStatus.RUNNING, "w1")


def test_insert_fills_defaults_like_save(step):
    before = timezone.now()
    fastsql.insert(LogChunk(step=step, offset=0, line_count=2, text="a\nb"))
    chunk = LogChunk.objects.get(step=step)
    assert (chunk.offset, chunk.line_count, chunk.text) == (0, 2, "a\nb")
    assert before - timedelta(seconds=1) <= chunk.created_at <= timezone.now()


def test_insert_many_sets_the_new_ids_in_at_most_two_statements_or_one(step):
    from django.test.utils import CaptureQueriesContext

    few = [LogChunk(step=step, offset=i, line_count=1, text=f"line {i}") for i in range(3)]
    many = [LogChunk(step=step, offset=i, line_count=1, text=f"line {i}") for i in range(3, 60)]
    with CaptureQueriesContext(connection) as queries:
        fastsql.insert_many(few)
    assert len(queries) <= 2
    with CaptureQueriesContext(connection) as queries:
        fastsql.insert_many(many)
    assert len(queries) == 1  # past two statements' worth: one big one
    ids = [c.pk for c in few + many]
    assert None not in ids and len(set(ids)) == 60
    assert list(
        LogChunk.objects.filter(step=step).order_by("pk").values_list("text", flat=True)
    ) == [f"line {i}" for i in range(60)]


@pytest.mark.parametrize("model", [Run, StageRun, StepRun, LogChunk])
def test_no_model_written_through_fastsql_has_save_signal_receivers(model):
    """fastsql writes these rows without Model.save(), so pre_save/post_save receivers would
    silently not run. A receiver added later must make this fail: then route that write
    through the ORM (or call the receiver's logic explicitly)."""
    from django.db.models.signals import post_save, pre_save

    from governance.models import AuditChainHead, AuditEvent

    for checked in (model, AuditEvent, AuditChainHead):
        assert not pre_save.has_listeners(checked), checked
        assert not post_save.has_listeners(checked), checked

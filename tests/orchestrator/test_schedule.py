"""A pipeline's cron schedule becomes a django-celery-beat periodic task; the task it runs
triggers a run with trigger "schedule"."""

from __future__ import annotations

import json

import pytest
from django_celery_beat.models import PeriodicTask

from governance.models import AuditEvent
from orchestrator import actions
from orchestrator.models import Run
from orchestrator.tasks import trigger_scheduled_run

pytestmark = pytest.mark.django_db

SCHEDULED = """
name: nightly
schedule: "30 2 * * 1-5"
parameters:
  - name: target
    default: all
stages:
  - name: build
    steps:
      - name: build
        run: echo nightly
"""


def test_schedule_is_synced_to_beat_and_triggers_runs(team, superuser, monkeypatch):
    monkeypatch.setattr("orchestrator.actions.dispatch_step", lambda *a, **k: None)
    pipeline = actions.create_pipeline(
        actor=superuser, slug="nightly", definition=SCHEDULED, team=team
    )
    task = PeriodicTask.objects.get(name="pipeline:nightly")
    assert task.task == "clearway.trigger_scheduled_run"
    assert json.loads(task.args) == [pipeline.pk]
    cron = task.crontab
    assert (cron.minute, cron.hour, cron.day_of_week) == ("30", "2", "1-5")

    run_id = trigger_scheduled_run(pipeline.pk)
    run = Run.objects.get(pk=run_id)
    assert run.trigger == "schedule" and run.triggered_by is None
    assert run.parameters == {"target": "all"}
    assert AuditEvent.objects.filter(action="run.trigger", target_id=str(run.pk)).exists()

    actions.update_pipeline(
        pipeline, actor=superuser, definition=SCHEDULED.replace('schedule: "30 2 * * 1-5"\n', "")
    )
    assert not PeriodicTask.objects.filter(name="pipeline:nightly").exists()


def test_scheduled_trigger_of_a_deleted_pipeline_is_quiet():
    assert trigger_scheduled_run(999_999) is None

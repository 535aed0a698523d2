"""LOG_FORMAT=json: one JSON object per line, and every record carries the request id or the
task id and, during a step, the run id (orchestrator.logcontext)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from orchestrator import logcontext

from .conftest import steps_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def json_lines():
    """The console handler of settings.LOGGING (JSON format, context filter), on a buffer."""
    from logging.config import dictConfigClass

    config = dictConfigClass({**settings.LOGGING, "incremental": False})
    formatter = config.configure_custom(dict(settings.LOGGING["formatters"]["json"]))
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    handler.addFilter(logcontext.ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logcontext.clear()


@pytest.mark.django_db(transaction=True)
def test_a_steps_log_records_carry_the_run_id_as_json(json_lines, start, worker):
    run = start(
        """
name: logged
stages:
  - name: only
    steps:
      - name: hello
        run: "echo hi"
"""
    )
    worker.drive(run)
    [step] = steps_of(run).values()
    records = [r for r in json_lines() if r["logger"] == "orchestrator.executors"]
    assert records, "the executor logs the step's outcome"
    line = records[-1]
    assert line["run_id"] == run.pk
    assert line["step_id"] == step.pk
    assert line["level"] == "INFO" and "hello succeeded" in line["message"]
    assert line["service"] == "clearway" and "time" in line


def test_task_records_carry_the_task_id_and_forget_it_afterwards(json_lines):
    from celery.signals import task_postrun, task_prerun

    log = logging.getLogger("clearway.test")
    task_prerun.send(sender=None, task_id="t-123", task=None)
    logcontext.bind(run_id=7)
    log.info("inside")
    task_postrun.send(sender=None, task_id="t-123", task=None)
    log.info("outside")
    inside, outside = json_lines()
    assert (inside["task_id"], inside["run_id"]) == ("t-123", 7)
    assert "task_id" not in outside and "run_id" not in outside


def test_request_records_carry_the_request_id(json_lines, rf):
    from django.http import HttpResponse

    from governance.middleware import RequestContextMiddleware

    def view(request):
        logging.getLogger("clearway.test").info("in a request")
        return HttpResponse("ok")

    response = RequestContextMiddleware(view)(rf.get("/"))
    [line] = [r for r in json_lines() if r["message"] == "in a request"]
    assert line["request_id"] == response["X-Request-ID"]


def test_the_settings_log_json_lines_when_asked(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    env.update(
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
        CLEARWAY_VAR_DIR=str(tmp_path),
        LOG_FORMAT="json",
    )
    code = "import django, logging; django.setup(); logging.getLogger('x').warning('hello')"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert {"logger": "x", "level": "WARNING", "message": "hello"}.items() <= lines[-1].items()


def test_an_unknown_log_format_is_refused(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "orchestrator.settings", "LOG_FORMAT": "xml"}
    env["CLEARWAY_VAR_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "LOG_FORMAT must be plain or json" in result.stderr

"""Step executors: the `run` step's environment, output capture, batching, cap, timeouts and
process-group kill; the `http` step against a local server."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from orchestrator import actions, executors
from orchestrator.models import LogChunk, RunStatus, StepRun, StepStatus

from .conftest import host_pids, log_text, steps_of, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z .*$")


def one_step(command: str, **options) -> str:
    extra = "".join(f"\n        {key}: {value}" for key, value in options.items())
    return f"""
name: one
stages:
  - name: only
    steps:
      - name: step
        run: {json.dumps(command)}{extra}
"""


def only_step(run) -> StepRun:
    [step] = steps_of(run).values()
    return step


def texts(step: StepRun) -> list[str]:
    """The log lines of a step without their timestamps."""
    out = []
    for line in log_text(step).split("\n"):
        assert STAMPED.match(line), f"line without timestamp: {line!r}"
        out.append(line.split(" ", 1)[1])
    return out


# --- environment ------------------------------------------------------------------------

PARAMS = """
name: params
parameters:
  - name: message
    required: true
  - name: flavour
    default: vanilla
stages:
  - name: deploy
    environment: dev
    steps:
      - name: show
        env: {EXTRA: "from the spec"}
        run: |
          printf 'message=%s\\n' "$CLEARWAY_PARAM_MESSAGE"
          env | sort
"""


def test_parameters_reach_the_command_only_as_environment_variables(
    start, worker, dev_env, monkeypatch
):
    # What the worker process holds must not reach the step.
    monkeypatch.setenv("SECRET_KEY", "worker-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://user:pw@db/clearway")
    target = Path(f"/tmp/clearway-pwned-{uuid.uuid4().hex}")
    hostile = f"$(touch {target}); echo hi `touch {target}` ; touch {target}"
    run = start(PARAMS, message=hostile)
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    lines = texts(only_step(run))
    assert f"message={hostile}" in lines
    assert not target.exists(), "the parameter was executed"
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_][A-Z0-9_]*=", line))
    assert env["CLEARWAY_PARAM_MESSAGE"] == hostile
    assert env["CLEARWAY_PARAM_FLAVOUR"] == "vanilla"
    assert env["CLEARWAY_RUN_ID"] == str(run.pk)
    assert env["CLEARWAY_RUN_NUMBER"] == "1"
    assert env["CLEARWAY_PIPELINE"] == run.pipeline.slug
    assert env["CLEARWAY_STAGE"] == "deploy"
    assert env["CLEARWAY_STEP"] == "show"
    assert env["CLEARWAY_ENVIRONMENT"] == "dev"
    assert env["EXTRA"] == "from the spec"
    assert env["HOME"] == env["CLEARWAY_WORKSPACE"]
    assert env["CLEARWAY_WORKSPACE"].endswith(f"run-{run.pk}")
    for leaked in ("SECRET_KEY", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "REDIS_URL"):
        assert leaked not in env
    assert not any("worker-secret" in line for line in lines)


def test_a_stage_without_environment_gets_an_empty_environment_name(start, worker):
    run = start(one_step('echo "env=[$CLEARWAY_ENVIRONMENT]"'))
    worker.drive(run)
    assert "env=[]" in texts(only_step(run))


# --- output -----------------------------------------------------------------------------


def test_stdout_and_stderr_are_captured_line_by_line_with_timestamps(start, worker):
    run = start(one_step("echo out1; echo err1 >&2; printf 'no newline'"))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.SUCCEEDED
    lines = texts(step)
    assert lines[0].startswith("$ echo out1")
    assert "out1" in lines and "[stderr] err1" in lines and "no newline" in lines
    assert step.log_lines == len(lines)
    assert step.log_bytes == sum(len(line.encode()) + 1 for line in log_text(step).split("\n"))


def test_many_quick_lines_are_written_in_batches_with_one_event_each(start, worker, published):
    run = start(one_step("seq 1 500"))
    worker.drive(run)
    step = only_step(run)
    chunks = list(LogChunk.objects.filter(step=step).order_by("offset"))
    # 501 lines (the command echo + 500) in batches of at most 50 lines.
    assert 10 <= len(chunks) <= 12
    assert all(c.line_count <= 50 for c in chunks)
    offsets = [c.offset for c in chunks]
    assert offsets == [sum(c.line_count for c in chunks[:i]) for i in range(len(chunks))]
    assert step.log_lines == 501
    assert texts(step)[1:] == [str(n) for n in range(1, 501)]
    logs = published.events(run.pk, "log")
    assert [(e["data"]["offset"], len(e["data"]["lines"])) for e in logs] == [
        (c.offset, c.line_count) for c in chunks
    ]
    assert all(e["data"]["step"] == step.pk for e in logs)
    assert logs[-1]["data"]["lines"][-1].endswith(" 500")


def test_a_slow_trickle_is_flushed_after_the_batch_interval(start, worker):
    run = start(one_step("echo first; sleep 0.4; echo second"))
    worker.drive(run)
    chunks = list(LogChunk.objects.filter(step=only_step(run)).order_by("offset"))
    assert len(chunks) >= 2, "a quiet step must not hold back its lines"
    first_lines = [line.split(" ", 1)[1] for line in chunks[0].text.split("\n")]
    assert "first" in first_lines and "second" not in first_lines
    assert chunks[-1].text.endswith(" second")


def test_output_beyond_the_cap_is_truncated_and_the_step_still_completes(start, worker, settings):
    settings.CLEARWAY = {**settings.CLEARWAY, "LOG_CAP_BYTES": 4000}
    run = start(one_step("seq 1 5000; echo done > finished"))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert step.log_truncated
    lines = texts(step)
    assert lines[-1].startswith("[clearway] log truncated")
    assert len(lines) < 200
    assert step.log_bytes <= 4000 + 200
    assert sum(len(c.encode()) + 1 for c in log_text(step).split("\n")) == step.log_bytes


def test_ansi_nul_and_invalid_utf8_are_stored_safely(start, worker):
    command = r"printf '\033[31mred\033[0m\n'; printf 'a\000b\n'; printf 'bad \377\376 end\n'"
    run = start(one_step(command + "; printf 'caf\\303\\251\\n'"))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    lines = texts(step)[1:]
    assert lines[0] == "\x1b[31mred\x1b[0m"  # colours are kept for the viewer
    assert lines[1] == "a\ufffdb"  # NUL cannot go into PostgreSQL text
    assert lines[2].startswith("bad \ufffd") and lines[2].endswith(" end")
    assert lines[3] == "café"
    assert "\x00" not in log_text(step)


def test_clean_line_bounds_a_very_long_line():
    text = executors.clean_line(b"x" * 20_000 + b"\r\n")
    assert text.startswith("x" * 100) and text.endswith("…[line truncated]")
    assert len(text) < executors.MAX_LINE_CHARS + 50


# --- timeouts and process groups ---------------------------------------------------------


def test_timeout_fails_the_step_and_kills_its_process_group(start, worker):
    run = start(one_step('sleep 5.0271 & echo "child $!"; wait', timeout=1))
    began = time.monotonic()
    worker.drive(run)
    assert time.monotonic() - began < 4
    step = only_step(run)
    assert run.status == RunStatus.FAILED
    assert step.status == StepStatus.FAILED
    assert step.error == "timed out after 1 s"
    text = log_text(step)
    assert "[clearway] step stopped: timed out after 1 s" in text
    wait_for(lambda: not host_pids("sleep 5.0271"), 3, what="the background sleep to be killed")


def test_timeout_holds_for_a_step_that_closed_its_output(start, worker):
    # A command that detaches from its output (a daemon, `exec >/dev/null`) must still be
    # bounded by its timeout.
    run = start(one_step("exec >/dev/null 2>&1; sleep 6", timeout=1))
    began = time.monotonic()
    worker.drive(run)
    assert time.monotonic() - began < 4.5
    step = only_step(run)
    assert step.status == StepStatus.FAILED
    assert step.error == "timed out after 1 s"


def test_a_background_process_is_not_left_behind_after_success(start, worker):
    run = start(one_step('sleep 20.0313 >/dev/null 2>&1 & echo "child $!"', timeout=60))
    worker.drive(run)
    step = only_step(run)
    assert step.status == StepStatus.SUCCEEDED
    # What a step started ends with it (no daemons left on the worker).
    wait_for(lambda: not host_pids("sleep 20.0313"), 3, what="the leftover process to end")


# --- http steps -------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self):  # noqa: N802 — the http.server API
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/held":
            self.release.wait(15)
        status = 404 if self.path == "/missing" else 200
        body = b'{"ok": true}\nsecond line\n' if status == 200 else b"nope"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    Handler.release = threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def http_step(url: str, *, expect: str = "[200, 204]", timeout: int = 5) -> str:
    return f"""
name: http
stages:
  - name: check
    steps:
      - name: probe
        timeout: {timeout}
        http:
          url: {url}
          expect: {expect}
"""


def test_http_step_with_an_expected_status_succeeds(start, worker, server):
    run = start(http_step(f"{server}/health"))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert step.exit_code == 200
    lines = texts(step)
    assert lines[0] == f"GET {server}/health"
    assert re.fullmatch(r"HTTP 200 in \d+ ms", lines[1])
    assert '{"ok": true}' in lines


def test_http_step_with_an_unexpected_status_fails(start, worker, server):
    run = start(http_step(f"{server}/missing"))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.FAILED
    assert step.exit_code == 404
    assert step.error == "status 404, expected 200, 204"


def test_http_step_times_out(start, worker, server):
    run = start(http_step(f"{server}/slow", timeout=1))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.FAILED
    assert step.error == "timed out after 1 s"


def test_http_step_against_a_closed_port_fails(start, worker):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = start(http_step(f"http://127.0.0.1:{port}/"))
    worker.drive(run)
    step = only_step(run)
    assert run.status == RunStatus.FAILED
    assert step.error.startswith("request failed: ConnectError")


def test_a_slow_http_step_keeps_its_heartbeat_and_can_be_canceled(start, worker, server, developer):
    from django.db import connection

    Handler.release.clear()
    run = start(http_step(f"{server}/held", timeout=30))
    [item] = worker.take()
    done = threading.Event()

    def execute() -> None:
        try:
            worker.run(item)
        finally:
            done.set()
            connection.close()

    thread = threading.Thread(target=execute)
    thread.start()
    try:
        step = wait_for(
            lambda: StepRun.objects.filter(pk=item.step_id, status="running").first(),
            what="the step to start",
        )
        # A request in flight is not a dead worker: the heartbeat moves on (the reaper would
        # otherwise fail a long request as "worker lost").
        wait_for(
            lambda: StepRun.objects.get(pk=step.pk).heartbeat_at > step.heartbeat_at,
            5,
            what="a heartbeat during the request",
        )
        actions.cancel_run(run, actor=developer)
        assert done.wait(5), "canceling did not stop waiting for the response"
    finally:
        Handler.release.set()
        thread.join(20)
    step.refresh_from_db()
    assert step.status == StepStatus.CANCELED

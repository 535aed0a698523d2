"""Redis stops during a run and starts again while dana watches the run page in Chromium:
`#live-indicator` goes down and comes back to "live", and the page ends equal to the database
(every stage and step status, every log line), without a reload.

The test has a redis-server of its own (the stack's broker, result backend and channel
layer), so it can stop it; its server, worker and beat are started with REDIS_URL pointing
there. A worker whose broker connection drops may exit (Celery 5.7, docs/operations.md): a
supervisor thread restarts the worker and beat when they exit, as systemd would.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    PROCESSES,
    STRICT,
    expect_live,
    mark_document,
    same_document,
)
from tests.integration.conftest import (
    Proc,
    RedisServer,
    require,
    start_beat,
    start_server,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.browser

DOWN = re.compile(r"(^|\s)down(\s|$)")

LONG_LINES = 12
AFTER_LINES = 6


def definition() -> str:
    """first/long prints a line every 0.5 s (~6 s): Redis stops while it runs and stays down
    until it ended, so the page misses its last lines and its end. second/after waits until
    the file `go` exists (the test creates it once the page is live again), then prints a
    line every 0.4 s: those arrive over the restarted Redis."""
    numbers = " ".join(str(n) for n in range(1, LONG_LINES + 1))
    return f"""\
name: Through an outage
stages:
  - name: first
    steps:
      - name: long
        run: |
          for i in {numbers}; do echo "line $i of {LONG_LINES}"; sleep 0.5; done
  - name: second
    needs: [first]
    steps:
      - name: after
        run: |
          n=0; while [ ! -e "$CLEARWAY_WORKSPACE/go" ]; do
            sleep 0.1; n=$((n + 1)); [ $n -lt 900 ] || exit 3
          done
          for i in {" ".join(str(n) for n in range(1, AFTER_LINES + 1))}; do
            echo "after the outage $i"; sleep 0.4
          done
  - name: third
    needs: [first]
    steps:
      - {{name: also, run: "echo also after; echo to stderr >&2"}}
"""


# What the run page shows, read in one go: the run's status, every stage's and step's
# status (attribute and pill; the step also in the stage graph, with its exit code) and
# every log line put back together as stored ("<time> [stderr] <text>", see
# dashboard_tags.log_lines and live.js lineElement).
PAGE_STATE = """() => {
  const pill = (el) => el.querySelector("[data-role=status]").textContent.trim();
  const run = document.getElementById("run-status");
  const stages = {};
  document.querySelectorAll("[data-stage-id]").forEach((el) => {
    stages[el.dataset.stageId] = [el.dataset.status, pill(el)];
  });
  const steps = {};
  document.querySelectorAll("section[data-step-id]").forEach((section) => {
    const id = section.dataset.stepId;
    const graph = document.querySelector(`[data-graph-step="${id}"]`);
    const lines = Array.from(section.querySelectorAll(".log .log-line")).map((line) => {
      const time = line.querySelector(".log-time");
      const copy = line.cloneNode(true);
      copy.querySelectorAll(".log-lineno, .log-time").forEach((n) => n.remove());
      const text = time ? copy.textContent.replace(/^ /, "") : copy.textContent;
      const stderr = line.classList.contains("log-stderr") ? "[stderr] " : "";
      return (time ? time.title + " " : "") + stderr + text;
    });
    const numbers = Array.from(section.querySelectorAll(".log .log-lineno"))
      .map((a) => Number(a.textContent));
    steps[id] = {
      status: [section.dataset.status, pill(section), graph.dataset.status],
      exit: section.querySelector("[data-role=exit-code]").textContent.trim(),
      lines: lines,
      numbers: numbers,
    };
  });
  return {run: [run.dataset.status, run.textContent.trim()], stages: stages, steps: steps};
}"""

# A step's log section while it runs, read in one go: its number of lines if it shows the
# step running with more than `shown` and fewer than `total` lines.
RUNNING_WITH_MORE_THAN = """([stepId, shown, total]) => {
  const section = document.querySelector(`[data-step-id="${stepId}"]`);
  if (section.dataset.status !== "running") return false;
  const lines = section.querySelectorAll(".log .log-line").length;
  return lines > shown && lines < total ? lines : false;
}"""
# A step's log section: its status and number of lines.
STEP_SHOWN = """(stepId) => {
  const section = document.querySelector(`[data-step-id="${stepId}"]`);
  return [section.dataset.status, section.querySelectorAll(".log .log-line").length];
}"""


def database_state(run) -> dict:
    """What the page must end up showing, from the database (same shape as PAGE_STATE)."""
    from orchestrator.models import StageRun, StepRun, read_log

    run.refresh_from_db()
    stages = {
        str(stage.pk): [stage.status, stage.status] for stage in StageRun.objects.filter(run=run)
    }
    steps = {}
    for step in StepRun.objects.filter(stage__run=run):
        lines, _ = read_log(step, 0, 20_000)
        steps[str(step.pk)] = {
            "status": [step.status, step.status, step.status],
            "exit": "" if step.exit_code is None else f"exit {step.exit_code}",
            "lines": lines,
            "numbers": list(range(1, len(lines) + 1)),
        }
    return {"run": [run.status, run.status], "stages": stages, "steps": steps}


class Supervisor:
    """Restarts a process that exited, as systemd's Restart=always would (a Celery 5.7 worker
    may exit when its broker connection drops). `processes` is the list the failure report
    copies the logs of; restarted processes are appended to it."""

    def __init__(self, starters: dict[str, Callable[[], Proc]], processes: list):
        self.starters = starters
        self.current = {proc.name: proc for proc in processes if proc.name in starters}
        self.processes = processes
        self.errors: list[str] = []  # restarts that failed (tried again)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for name, proc in list(self.current.items()):
                if proc.popen.poll() is None or self._stop.is_set():
                    continue
                proc.stop()
                try:
                    new = self.starters[name]()
                except Exception as exc:  # e.g. not ready in time: try again next round
                    self.errors.append(f"{name}: {exc}")
                    continue
                self.current[name] = new
                self.processes.append(new)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None, "redis-server")
    data = tmp_path / "redis"
    data.mkdir()
    redis = RedisServer(data)
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def supervised(live_db, log_dir, tmp_path, request, own_redis) -> Iterator[dict]:
    """The server, worker and beat of this test, on the test's own Redis, the worker and beat
    under a Supervisor. Returns {"url": …, "supervisor": …}."""
    env = {**STRICT, "REDIS_URL": own_redis.url}

    def worker() -> Proc:
        return start_worker(live_db, log_dir, name="browser-worker", extra_env=env)

    def beat() -> Proc:
        return start_beat(live_db, log_dir, tmp_path, env)

    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(start_server, live_db, log_dir, name="browser-asgi", extra_env=env),
            pool.submit(worker),
            pool.submit(beat),
        ]
    processes = [f.result() for f in futures if f.exception() is None]
    processes = [p[0] if isinstance(p, tuple) else p for p in processes]
    request.node.stash[PROCESSES] = processes
    supervisor = None
    try:
        url = futures[0].result()[1]
        for future in futures[1:]:
            future.result()  # a process that did not start fails the test here
        supervisor = Supervisor({"browser-worker": worker, "beat": beat}, processes)
        yield {"url": url, "supervisor": supervisor}
    finally:
        if supervisor is not None:
            supervisor.stop()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda proc: proc.stop(), processes))


@pytest.fixture
def stack(supervised) -> str:
    """Overrides the package's `stack`: `login` opens its pages on this test's server."""
    return supervised["url"]


def test_page_reconnects_and_ends_equal_to_the_database(
    developer, make_pipeline, login, own_redis, supervised, tmp_path, shot
):
    from orchestrator.actions import workspace_for
    from orchestrator.models import Run, RunStatus, StepRun, StepStatus

    pipeline = make_pipeline(slug="through-an-outage", definition=definition())
    page = login(developer)
    page.goto(f"/pipelines/{pipeline.slug}/")
    expect_live(page)
    page.locator("form#trigger-form button[type=submit]").click()
    page.wait_for_url("**/runs/*/")
    run = Run.objects.get(pipeline=pipeline)
    go = workspace_for(run.pk) / "go"
    assert page.url.endswith(f"/runs/{run.pk}/")
    mark_document(page)
    expect_live(page)
    steps = {step.name: step.pk for step in StepRun.objects.filter(stage__run=run)}
    long_total = LONG_LINES + 1  # the executor's "$ <script>" line first

    # Redis stops while the long step runs (the page shows it running, with output).
    page.wait_for_function(RUNNING_WITH_MORE_THAN, arg=[steps["long"], 1, long_total])
    own_redis.stop()
    indicator = page.locator("#live-indicator")
    expect(indicator).to_have_class(DOWN)
    expect(indicator).to_have_text("reconnecting…")

    # Redis stays down until the long step ended in the database: nothing reaches the page
    # meanwhile, it still shows the step running, without its last lines.
    wait_for(
        lambda: StepRun.objects.get(pk=steps["long"]).is_terminal, 30, what="the long step to end"
    )
    status, lines = page.evaluate(STEP_SHOWN, steps["long"])
    assert status == "running" and lines < long_total, (status, lines)
    expect(indicator).to_have_class(DOWN)
    shot(page, "10-run-redis-down")

    # Redis starts again (same port, empty: the run's state lives in PostgreSQL). The page
    # reconnects and catches up on what it missed.
    own_redis.start()
    expect(indicator).to_have_text("live", timeout=30_000)
    expect_live(page)
    long_step = page.locator(f'[data-step-id="{steps["long"]}"]')
    expect(long_step).to_have_attribute("data-status", StepStatus.SUCCEEDED)
    expect(long_step.locator(".log-line")).to_have_count(long_total)

    # Events flow again: second/after's output arrives while it runs.
    go.touch()
    after_total = AFTER_LINES + 1
    page.wait_for_function(
        RUNNING_WITH_MORE_THAN, arg=[steps["after"], 0, after_total], timeout=30_000
    )

    try:
        wait_for(
            lambda: Run.objects.get(pk=run.pk).status in (RunStatus.SUCCEEDED, RunStatus.FAILED),
            45,
            what="the run to end",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; failed restarts: {supervised['supervisor'].errors}") from None
    expected = database_state(run)
    assert expected["run"][0] == RunStatus.SUCCEEDED, run.reason
    assert all(s["status"][0] == StepStatus.SUCCEEDED for s in expected["steps"].values())
    assert len(expected["steps"][str(steps["long"])]["lines"]) == long_total
    assert len(expected["steps"][str(steps["after"])]["lines"]) == after_total

    # The page ends equal to the database: every status, every log line, nothing twice.
    deadline = time.monotonic() + 20
    state = page.evaluate(PAGE_STATE)
    while state != expected and time.monotonic() < deadline:
        time.sleep(0.25)
        state = page.evaluate(PAGE_STATE)
    assert state == expected
    expect_live(page)
    assert same_document(page), "the run page reloaded"
    shot(page, "11-run-after-redis-restart")

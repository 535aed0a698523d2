"""Fixtures for the orchestrator's fast tests: no Celery worker, no eager mode.

`worker` stands in for Celery: it records what the engine dispatches (step, attempt,
countdown) and runs it on demand through the real executor (`executors.execute_step`), in
this process. `published` records every live event handed to the sender. Engine tests that
run commands are transactional (`django_db(transaction=True)`), so `transaction.on_commit`
fires as in production.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections import deque
from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from governance.models import Environment
from orchestrator import actions, events, executors
from orchestrator.models import Run, StepRun, Team
from tests.processes import host_pids  # noqa: F401 (for the test modules)


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@dataclass(frozen=True)
class Sent:
    step_id: int
    attempt: int
    countdown: float


class FakeCelery:
    """Records dispatches like `actions.dispatch_step` would send them; `drive()` executes
    them one after the other with the real executor until nothing is left."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.pending: deque[Sent] = deque()
        self.executed: list[Sent] = []

    def dispatch(self, step_id: int, attempt: int, countdown: float = 0) -> None:
        item = Sent(step_id, attempt, countdown or 0)
        self.sent.append(item)
        self.pending.append(item)

    def take(self) -> list[Sent]:
        """What was dispatched and not run yet (and forget it)."""
        items = list(self.pending)
        self.pending.clear()
        return items

    def run(self, item: Sent) -> None:
        self.executed.append(item)
        executors.execute_step(item.step_id, item.attempt)

    def drive(self, run: Run | None = None, limit: int = 200) -> Run | None:
        for _ in range(limit):
            if not self.pending:
                break
            self.run(self.pending.popleft())
        else:
            raise AssertionError(f"still dispatching after {limit} executions")
        if run is not None:
            run.refresh_from_db()
        return run


@pytest.fixture
def worker(monkeypatch) -> FakeCelery:
    fake = FakeCelery()
    monkeypatch.setattr(actions, "dispatch_step", fake.dispatch)
    return fake


# build → (unit, lint) in parallel → package with two steps.
DIAMOND = """
name: diamond
stages:
  - name: build
    steps:
      - name: compile
        run: echo compiled
  - name: unit
    needs: [build]
    steps:
      - name: unit
        run: echo unit
  - name: lint
    needs: [build]
    steps:
      - name: lint
        run: echo lint
  - name: package
    needs: [unit, lint]
    steps:
      - name: first
        run: echo one
      - name: second
        run: echo two
"""


class Published(list):
    """Events handed to the channel-layer sender, in sending order."""

    def messages(self) -> list[tuple[str, dict]]:
        """(group, message) of the runs' events: without the access notices to users."""
        return [(g, m) for g, m in self if m["type"] != "clearway.access"]

    def events(self, run_id: int | None = None, type: str | None = None) -> list[dict]:
        out = [
            e for _, message in self.messages() for e in message.get("events") or [message["event"]]
        ]
        if run_id is not None:
            out = [e for e in out if e["run"] == run_id]
        if type is not None:
            out = [e for e in out if e["type"] == type]
        return out


@pytest.fixture(autouse=True)
def published(monkeypatch) -> Published:
    sent = Published()
    monkeypatch.setattr(events.sender, "send", lambda group, message: sent.append((group, message)))
    return sent


# --- people and pipelines ------------------------------------------------------------------
# People, roles and teams come from tests/conftest.py (developer = dana of team-payments,
# viewer, approver, outsider with no role and no team, ...); these are the orchestrator's own.


@pytest.fixture
def rival(make_user, other_team):
    """A developer of another team (team-platform)."""
    return make_user("omar", "developer", other_team.group.name)


@pytest.fixture
def dev_env(db) -> Environment:
    return Environment.objects.get_or_create(name="dev", defaults={"protected": False})[0]


@pytest.fixture
def new_pipeline(team, developer):
    """new_pipeline(yaml, slug=None, owner=team): a pipeline created by the developer."""

    def make(definition: str, *, slug: str | None = None, owner: Team | None = None):
        return actions.create_pipeline(
            actor=developer,
            slug=slug or f"p-{uuid.uuid4().hex[:8]}",
            definition=dedent(definition),
            team=owner or team,
        )

    return make


@pytest.fixture
def start(new_pipeline, developer, worker):
    """Create a pipeline from YAML and trigger a run of it (dispatches are recorded)."""

    def go(definition: str, **parameters) -> Run:
        pipeline = new_pipeline(definition)
        return actions.trigger_run(pipeline, actor=developer, parameters=parameters, trigger="api")

    return go


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def log_text(step: StepRun) -> str:
    return "\n".join(step.log_chunks.order_by("offset").values_list("text", flat=True))


def steps_of(run: Run) -> dict[str, StepRun]:
    """{"stage/step": StepRun} of a run, fresh from the database."""
    return {
        f"{s.stage.name}/{s.name}": s
        for s in StepRun.objects.filter(stage__run=run).select_related("stage")
    }


def wait_for(predicate, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")

"""Delegation and the run_failed notification on PostgreSQL with a real prefork worker.

sam (it-sre, approves prod-it) is away and delegates to tom on the preferences page. tom's
inbox lists the gate, he approves through the API, the worker deploys, and the gate reads
"tom for sam" on the run page and in the API. A change tom authored is refused to him even
as sam's delegate, and the refusal is audited. A deployment that fails after its gate
opened is told to prod-it's channel (a local HTTP receiver) by the worker."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from governance.models import (
    Approval,
    ApprovalRule,
    AuditEvent,
    Environment,
    Gate,
    NotificationChannel,
    Outcome,
    Tier,
)
from orchestrator import actions
from orchestrator.models import RunStatus

from .conftest import wait_for
from .test_engine_live import _pipeline, _user, _wait_run

pytestmark = pytest.mark.integration

DEFINITION = """
name: delegated rollout
parameters:
  - name: author
    default: ""
  - name: outcome
    default: "0"
stages:
  - name: build
    steps:
      - name: compile
        run: echo build
  - name: deploy
    needs: [build]
    environment: prod-it
    steps:
      - name: rollout
        run: echo "rolling out"; exit "$CLEARWAY_PARAM_OUTCOME"
"""


class Receiver:
    """A local HTTP endpoint standing in for a JSON webhook: records every POST."""

    def __init__(self):
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                receiver.bodies.append(
                    {"path": self.path, "body": json.loads(self.rfile.read(length) or b"{}")}
                )
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def world(live_db):
    env, _ = Environment.objects.get_or_create(
        name="prod-it", defaults={"tier": Tier.PRODUCTION, "protected": True}
    )
    sre, _ = Group.objects.get_or_create(name="it-sre")
    ApprovalRule.objects.get_or_create(environment=env, group=sre, defaults={"required_count": 1})
    assign_perm("governance.approve_environment", sre, env)
    sam, _ = User.objects.get_or_create(username="it-sam", defaults={"email": "sam@it.test"})
    sam.groups.add(sre, Group.objects.get(name="approver"))
    tom, _ = User.objects.get_or_create(username="it-tom", defaults={"email": "tom@it.test"})
    tom.groups.add(Group.objects.get(name="viewer"))
    return {"env": env, "sam": sam, "tom": tom}


def _delegate_on_the_page(sam, tom) -> None:
    page = Client()
    page.force_login(sam)
    now = timezone.now()
    fmt = "%Y-%m-%dT%H:%M"
    response = page.post(
        "/notifications/delegation/",
        {
            "delegate": tom.username,
            "starts_at": (now - timedelta(minutes=5)).strftime(fmt),
            "ends_at": (now + timedelta(days=3)).strftime(fmt),
            "reason": "on leave",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]


def _run_at_gate(pipeline, **parameters):
    run = actions.trigger_run(pipeline, actor=_user(), trigger="api", parameters=parameters)
    _wait_run(run, {RunStatus.WAITING, RunStatus.FAILED})
    assert run.status == RunStatus.WAITING, run.reason
    return run, Gate.objects.get(stage_run__run=run)


def test_a_delegate_approves_for_the_approver_away_and_the_gate_says_so(world, worker):
    sam, tom = world["sam"], world["tom"]
    _delegate_on_the_page(sam, tom)
    pipeline = _pipeline(DEFINITION)
    run, gate = _run_at_gate(pipeline)

    api = APIClient()
    api.force_authenticate(tom)
    inbox = api.get("/api/v1/gates/?status=waiting").json()
    assert gate.pk in [g["id"] for g in inbox["results"]]
    response = api.post(f"/api/v1/gates/{gate.pk}/approve/", {"comment": "for sam"}, format="json")
    assert response.status_code == 200, response.json()
    (row,) = response.json()["approvals"]
    assert (row["user"], row["on_behalf_of"]) == ("it-tom", "it-sam")

    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    page = Client()
    page.force_login(sam)
    html = page.get(f"/runs/{run.pk}/").content.decode()
    assert '<strong>it-tom</strong> <span data-role="on-behalf-of">for <strong>it-sam</strong>' in (
        html
    )
    assert AuditEvent.objects.get(action="gate.approve").details["on_behalf_of"] == "it-sam"
    assert not api.get("/api/v1/gates/?status=waiting").json()["results"]


def test_a_delegate_who_is_the_author_is_refused(world, worker):
    sam, tom = world["sam"], world["tom"]
    _delegate_on_the_page(sam, tom)
    run, gate = _run_at_gate(_pipeline(DEFINITION), author="it-tom")
    api = APIClient()
    api.force_authenticate(tom)
    assert gate.pk not in [
        g["id"] for g in api.get("/api/v1/gates/?status=waiting").json()["results"]
    ]
    response = api.post(f"/api/v1/gates/{gate.pk}/approve/", {}, format="json")
    assert response.status_code == 403
    assert response.json()["rule"] == "separation-of-duties"
    assert "it-tom is the author of the change" in response.json()["message"]
    assert not Approval.objects.filter(gate=gate).exists()
    refused = AuditEvent.objects.get(action="gate.approve", outcome=Outcome.DENIED)
    assert refused.actor_name == "it-tom"
    actions.cancel_run(run, actor=_user())


def test_a_failed_deployment_past_its_gate_is_told_to_the_channel(world, worker, receiver):
    NotificationChannel.objects.create(
        environment=world["env"],
        name="prod-alerts",
        url=f"json://127.0.0.1:{receiver.port}/alerts",
        events=["run_failed"],
    )
    run, gate = _run_at_gate(_pipeline(DEFINITION), outcome="3")
    api = APIClient()
    api.force_authenticate(world["sam"])
    assert api.post(f"/api/v1/gates/{gate.pk}/approve/", {}, format="json").status_code == 200
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.FAILED

    wait_for(lambda: receiver.bodies, 60, what="the run_failed notification")
    (hook,) = receiver.bodies
    assert hook["path"] == "/alerts"
    assert hook["body"]["title"].endswith("→ prod-it failed after passing its gate")
    assert f"/gates/{gate.pk}/" in hook["body"]["message"]

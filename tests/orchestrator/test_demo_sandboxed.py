"""The demo as `make run` seeds it: payments-api runs sandboxed, and its production rollout
receives the seeded PAYMENTS_DB_PASSWORD, shown masked on the run page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from governance import actions as gate_actions
from governance.models import Gate, GateStatus, Secret, SecretVersion
from governance.secrets import decrypt
from orchestrator import actions
from orchestrator.models import Pipeline, RunStatus, StepRun

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_demo_payments_rollout_gets_its_seeded_secret_masked(worker, settings):
    from django.contrib.auth.models import Group, Permission

    from dashboard.demo.seed import seed
    from governance.roles import ensure_roles

    # The roles come from a data migration; an earlier transactional test's flush (SQLite)
    # removed them, as `roles` in tests/conftest.py knows.
    ensure_roles(Group, Permission)
    seed(history=False)
    secret = Secret.objects.get(name="PAYMENTS_DB_PASSWORD", environment__name="production")
    value = decrypt(SecretVersion.objects.get(secret=secret).ciphertext)
    pipeline = Pipeline.objects.get(slug="payments-api")
    dana = get_user_model().objects.get(username="dana")
    run = actions.trigger_run(pipeline, actor=dana, parameters={"version": "2.14.0"})
    worker.drive(run)
    gate = Gate.objects.get(stage_run__run=run)
    for name in ("sam", "sara", "sofia"):
        gate_actions.approve_gate(gate, actor=get_user_model().objects.get(username=name))
    gate.refresh_from_db()
    if gate.status == GateStatus.WAITING:  # outside the demo's change windows: break-glass
        gate_actions.override_gate(
            gate,
            actor=get_user_model().objects.get(username="sam"),
            justification="Demo test: deploying outside the change window on purpose.",
        )
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    assert run.sandboxed is True
    rollout = StepRun.objects.get(stage__run=run, stage__name="deploy-production")
    assert rollout.secrets[0]["name"] == "PAYMENTS_DB_PASSWORD"
    client = Client()
    client.force_login(dana)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "Migrating payments-db as payments:***" in page
    assert '<span class="mono">PAYMENTS_DB_PASSWORD</span> v1' in page
    assert value not in page

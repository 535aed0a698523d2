"""Managed secrets on PostgreSQL + Redis with a real prefork worker: the step gets the value
(decrypted by the worker with the shared keys), the log shows it masked, and the value is
nowhere in clear — not in a pg_dump of the whole database, the API, the audit log or an
export."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from guardian.shortcuts import assign_perm

from governance import secrets
from governance.models import Environment, Tier
from orchestrator import actions
from orchestrator.models import LogChunk, RunStatus, StepRun

from .conftest import require
from .test_engine_live import _pipeline, _user, _wait_run

pytestmark = pytest.mark.integration

DEFINITION = """
name: staged secret
stages:
  - name: deploy
    environment: staging-it
    steps:
      - name: use
        secrets: [STAGING_DB_PASSWORD]
        run: |
          echo "password=$STAGING_DB_PASSWORD"
          printf '%s' "$STAGING_DB_PASSWORD" | base64
          echo "length=${#STAGING_DB_PASSWORD}"
"""


def test_a_prefork_worker_releases_a_secret_masked_and_it_is_nowhere_in_clear(live_db, worker):
    value = f"it-secret-{uuid.uuid4().hex}"
    env, _ = Environment.objects.get_or_create(name="staging-it", defaults={"tier": Tier.STAGING})
    keeper = _user("it-keeper")
    assign_perm("governance.manage_secrets", keeper, env)
    secret = secrets.set_secret(
        actor=keeper, name="STAGING_DB_PASSWORD", value=value, environment=env
    )
    run = actions.trigger_run(_pipeline(DEFINITION), actor=_user(), trigger="api")
    _wait_run(run, {RunStatus.SUCCEEDED, RunStatus.FAILED})
    assert run.status == RunStatus.SUCCEEDED, run.reason
    step = StepRun.objects.get(stage__run=run)
    text = "\n".join(LogChunk.objects.filter(step=step).values_list("text", flat=True))
    assert f"length={len(value)}" in text and "password=***" in text
    assert value not in text
    assert step.secrets == [
        {"name": "STAGING_DB_PASSWORD", "version": 1, "scope": "environment staging-it"}
    ]

    # The whole database, as a dump: ciphertext only.
    require(shutil.which("pg_dump") is not None, "pg_dump")
    db = settings.DATABASES["default"]
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            db.get("HOST") or "127.0.0.1",
            "-p",
            str(db.get("PORT") or 5432),
            "-U",
            db.get("USER") or "postgres",
            db["NAME"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "STAGING_DB_PASSWORD" in dump, "the dump is of the right database"
    assert value not in dump

    admin, _ = User.objects.get_or_create(username="it-admin", defaults={"is_superuser": True})
    admin.is_superuser = True
    admin.save()
    client = Client()
    client.force_login(admin)
    for url in (
        f"/api/v1/runs/{run.pk}/",
        f"/api/v1/runs/{run.pk}/log/?step={step.pk}",
        "/api/v1/secrets/",
        "/api/v1/audit-events/",
        "/api/v1/reports/audit?format=csv",
        "/api/v1/reports/changes?format=json",
        f"/runs/{run.pk}/",
    ):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        body = (
            b"".join(response.streaming_content) if response.streaming else response.content
        ).decode()
        assert value not in body, url
    refused = client.get(f"/api/v1/secrets/{secret.pk}/value/")
    assert refused.status_code == 403 and value not in refused.content.decode()

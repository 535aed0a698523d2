"""Artifacts across hosts, on PostgreSQL + Redis with two prefork workers that share no
workspace: the plan stage runs on worker one (its own workspace root, queue q-one), the
apply stage — behind a production gate, approved from here with steps routed to q-two —
on worker two (another workspace root), and receives the plan from storage, digest
checked. Once with the file-system storage, once with S3-compatible storage (moto's
standalone server through django-storages). When the run has ended its logs are archived
(by worker one, which also serves Celery's default queue): the database keeps only the
index, and the API reads the lines back identically from storage."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.core.files.storage import storages
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from governance import actions as gate_actions
from governance.models import ApprovalRule, Environment, Gate
from orchestrator import actions
from orchestrator.models import Artifact, LogArchive, LogChunk, Run, StepRun, Team

from .audit_receivers import MotoS3
from .conftest import start_worker, wait_for

pytestmark = pytest.mark.integration

PLAN_BYTES = 300_000  # several storage blocks; JSON, as a policy-input artifact must be


def _definition(env_name: str) -> str:
    return f"""
name: infra
stages:
  - name: plan
    steps:
      - name: plan
        run: |
          printf '{{"blob": "' > tfplan.json
          head -c {PLAN_BYTES} /dev/urandom | base64 -w 0 >> tfplan.json
          printf '"}}' >> tfplan.json
          sha256sum tfplan.json
        artifacts:
          - {{name: plan, path: tfplan.json, policy_input: true}}
  - name: apply
    needs: [plan]
    environment: {env_name}
    steps:
      - name: apply
        run: |
          sha256sum tfplan.json
          seq 1 1500
"""


def _people(env_name: str) -> tuple[User, User, Team]:
    tag = uuid.uuid4().hex[:6]
    group, _ = Group.objects.get_or_create(name=f"team-art-{tag}")
    team = Team.objects.create(slug=f"art-{tag}", name=f"Art {tag}", group=group)
    dev = User.objects.create_user(f"dev-{tag}")
    dev.groups.add(group, Group.objects.get(name="developer"))
    approvers = Group.objects.create(name=f"approvers-{tag}")
    approver = User.objects.create_user(f"approver-{tag}")
    approver.groups.add(approvers, group)
    env = Environment.objects.create(name=env_name, protected=True)
    ApprovalRule.objects.create(environment=env, group=approvers, required_count=1)
    assign_perm("governance.approve_environment", approvers, env)
    return dev, approver, team


def _scenario(live_db, log_dir, tmp_path: Path, settings, extra_env: dict) -> None:
    env_name = f"prod-{uuid.uuid4().hex[:6]}"
    dev, approver, team = _people(env_name)
    roots = {name: tmp_path / f"workspaces-{name}" for name in ("one", "two")}
    workers = {
        "one": start_worker(
            live_db,
            log_dir,
            name="art-w1",
            queues="q-one,celery",
            extra_env={
                **extra_env,
                "CLEARWAY_WORKSPACE_ROOT": str(roots["one"]),
                "CLEARWAY_STEP_QUEUE": "q-one",
            },
        ),
        "two": start_worker(
            live_db,
            log_dir,
            name="art-w2",
            queues="q-two",
            extra_env={
                **extra_env,
                "CLEARWAY_WORKSPACE_ROOT": str(roots["two"]),
                "CLEARWAY_STEP_QUEUE": "q-two",
            },
        ),
    }
    try:
        pipeline = actions.create_pipeline(
            actor=dev,
            slug=f"infra-{uuid.uuid4().hex[:6]}",
            definition=_definition(env_name),
            team=team,
        )
        settings.CLEARWAY = {**settings.CLEARWAY, "STEP_QUEUE": "q-one"}
        run = actions.trigger_run(pipeline, actor=dev, trigger="api")
        gate = wait_for(
            lambda: Gate.objects.filter(stage_run__run=run, status="waiting").first(),
            90,
            what="the plan stage to finish and the gate to wait",
        )
        plan = Artifact.objects.get(stage_run__run=run, name="plan")
        plan_step = StepRun.objects.get(stage__run=run, name="plan")
        assert plan.size > PLAN_BYTES and plan.policy_input
        assert f"{plan.sha256}  tfplan.json" in "\n".join(
            plan_step.log_chunks.values_list("text", flat=True)
        )
        settings.CLEARWAY = {**settings.CLEARWAY, "STEP_QUEUE": "q-two"}  # the other worker
        gate_actions.approve_gate(gate, actor=approver, comment="plan reviewed")
        run = wait_for(
            lambda: Run.objects.filter(pk=run.pk, status__in=["succeeded", "failed"]).first(),
            90,
            what="the apply stage to finish",
        )
        apply_step = StepRun.objects.get(stage__run=run, name="apply")
        assert run.status == "succeeded", (run.reason, apply_step.error)
        # Each stage on its worker, in its own workspace root.
        assert "step plan succeeded" in workers["one"].output()
        assert "step apply succeeded" in workers["two"].output()
        assert "step apply succeeded" not in workers["one"].output()
        # The run ended on worker two: its workspace and delivery marker are gone there.
        assert not (roots["two"] / f"run-{run.pk}").exists()
        assert not list(roots["two"].glob(f".received/run-{run.pk}-*"))

        # The logs move to storage; the database keeps only the index.
        archives = wait_for(
            lambda: (
                LogArchive.objects.filter(step__stage__run=run).count() == 2
                and list(LogArchive.objects.filter(step__stage__run=run).order_by("step_id"))
            ),
            60,
            what="the run's logs to be archived",
        )
        assert not LogChunk.objects.filter(step__stage__run=run).exists()
        api = APIClient()
        api.force_authenticate(dev)
        for archive in archives:
            step = StepRun.objects.get(pk=archive.step_id)
            lines = api.get(
                f"/api/v1/runs/{run.pk}/log/", {"step": step.pk, "limit": 20000}
            ).json()["lines"]
            assert len(lines) == step.log_lines == archive.line_count
            text = "".join(line + "\n" for line in lines).encode()
            assert hashlib.sha256(text).hexdigest() == archive.sha256
            assert storages["artifacts"].exists(archive.storage_key)
        apply_lines = [
            line.split(" ", 1)[1]
            for line in api.get(
                f"/api/v1/runs/{run.pk}/log/", {"step": apply_step.pk, "limit": 20000}
            ).json()["lines"]
        ]
        assert f"{plan.sha256}  tfplan.json" in apply_lines  # received, identical
        assert any(line.startswith("[clearway] received artifact plan") for line in apply_lines)
        assert [line for line in apply_lines if line.isdigit()] == [str(i) for i in range(1, 1501)]
        # And the stored plan downloads with its digest.
        download = api.get(f"/api/v1/runs/{run.pk}/artifacts/{plan.pk}/download/")
        assert download.status_code == 200
        body = b"".join(download.streaming_content)
        assert hashlib.sha256(body).hexdigest() == plan.sha256
    finally:
        for proc in workers.values():
            proc.stop()


def test_an_artifact_crosses_workers_through_file_storage(live_db, log_dir, tmp_path, settings):
    store = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(store)},
        },
    }
    _scenario(live_db, log_dir, tmp_path, settings, {"CLEARWAY_ARTIFACT_STORAGE": str(store)})


def test_an_artifact_crosses_workers_through_s3_storage(
    live_db, log_dir, tmp_path, settings, monkeypatch
):
    import boto3

    server = MotoS3(log_dir)
    try:
        credentials = {
            "AWS_ACCESS_KEY_ID": "clearway-test",
            "AWS_SECRET_ACCESS_KEY": "clearway-test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for key, value in credentials.items():
            monkeypatch.setenv(key, value)
        bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        url = f"s3://{bucket}/clearway?endpoint_url={server.endpoint}&region=us-east-1"
        from orchestrator.settings import _artifact_storage

        settings.STORAGES = {**settings.STORAGES, "artifacts": _artifact_storage(url)}
        _scenario(
            live_db,
            log_dir,
            tmp_path,
            settings,
            {"CLEARWAY_ARTIFACT_STORAGE": url, **credentials},
        )
        keys = [
            o["Key"]
            for o in boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
            .list_objects_v2(Bucket=bucket)
            .get("Contents", [])
        ]
        assert any(k.startswith("clearway/runs/") and k.endswith("/tfplan.json") for k in keys)
        assert any(k.endswith(".log.gz") for k in keys)
    finally:
        server.stop()

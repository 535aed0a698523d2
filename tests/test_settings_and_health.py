"""Settings read from the environment; /healthz."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _boot(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    clean.update(env, DJANGO_SETTINGS_MODULE="orchestrator.settings")
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('booted')"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_boots_with_nothing_set(tmp_path):
    result = _boot({"CLEARWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "booted" in result.stdout


def test_refuses_to_start_with_debug_off_and_no_secret_key(tmp_path):
    result = _boot({"DEBUG": "false", "CLEARWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
    assert "refuses to start" in result.stderr


def test_starts_with_debug_off_and_a_secret_key(tmp_path):
    result = _boot({"DEBUG": "false", "SECRET_KEY": "x" * 60, "CLEARWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_an_empty_database_url_means_the_default(tmp_path):
    result = _boot({"DATABASE_URL": "", "CLEARWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("url", ["mysql://user:s3cret@db/clearway", "nonsense"])
def test_a_database_url_clearway_cannot_use_is_refused_clearly(tmp_path, url):
    result = _boot({"DATABASE_URL": url, "CLEARWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DATABASE_URL is not a database Clearway runs on" in result.stderr
    assert "postgres://user:password@host:5432/name" in result.stderr  # how to fix it
    assert "s3cret" not in result.stderr  # never echo the credentials


def test_sqlite_default_uses_wal(tmp_path):
    code = (
        "import django; django.setup(); from django.db import connection;"
        "c = connection.cursor(); c.execute('PRAGMA journal_mode'); print(c.fetchone()[0])"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    clean.update(CLEARWAY_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="orchestrator.settings")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "wal", result.stderr
    assert (tmp_path / "clearway.sqlite3").exists()


@pytest.mark.django_db
def test_healthz_reports_every_part(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "channel_layer"}
    assert all(check["ok"] for check in body["checks"].values())

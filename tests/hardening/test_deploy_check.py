"""`manage.py check --deploy --fail-level WARNING` passes with production settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_check_passes_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="orchestrator.settings",
        DEBUG="false",
        SECRET_KEY="k" * 30 + "-a-long-random-production-secret-" + "z" * 20,
        ALLOWED_HOSTS="clearway.example.org",
        CSRF_TRUSTED_ORIGINS="https://clearway.example.org",
        SECURE_PROXY_SSL="true",
        CLEARWAY_VAR_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout

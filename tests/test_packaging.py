"""What a wheel holds and what installs with it (pyproject.toml), the version's one source,
the `clearway` command, and settings that import on a read-only filesystem.

The wheel itself is built, installed into a fresh virtualenv outside the source tree and
smoke-tested by .ci/package-smoke (`make package-smoke`, part of `make test`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
APPS = ("orchestrator", "governance", "dashboard")


def test_every_package_of_the_source_tree_is_in_the_wheel():
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for app in APPS
        for init in (ROOT / app).rglob("__init__.py")
    }
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert found <= declared, f"add to [tool.setuptools] packages: {sorted(found - declared)}"


def test_templates_static_and_data_are_mapped_into_the_wheel():
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapping == {
        "orchestrator.site_templates": "templates",
        "orchestrator.site_static": "static",
    }
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert {"governance", "dashboard.demo"} <= set(data)
    # what the demo seeder and the policy loader read
    for pattern in data["governance"]:
        assert list((ROOT / "governance").glob(pattern)), pattern
    assert list((ROOT / "dashboard" / "demo").glob(data["dashboard.demo"][0]))


def test_the_version_has_one_source():
    assert settings.CLEARWAY_VERSION == PYPROJECT["project"]["version"]
    assert metadata.version("clearway") == PYPROJECT["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {PYPROJECT['project']['version']} " in changelog


def test_licence_changelog_and_security_policy_exist():
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    security = (ROOT / "SECURITY.md").read_text()
    assert "Reporting a vulnerability" in security and "Threat model" in security


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s<>=\[;!~]", r, maxsplit=1)[0].lower() for r in requirements}


def test_runtime_dependencies_hold_no_test_library_and_one_asgi_server():
    runtime = _names(PYPROJECT["project"]["dependencies"])
    assert "time-machine" not in runtime  # the demo seeder's: extra "demo"
    assert not runtime & _names(PYPROJECT["project"]["optional-dependencies"]["dev"]) - {
        "time-machine"
    }
    assert "uvicorn" in runtime and "daphne" not in runtime
    assert _names(PYPROJECT["project"]["optional-dependencies"]["daphne"]) == {"daphne"}
    assert PYPROJECT["project"]["scripts"] == {"clearway": "orchestrator.cli:main"}


def _run(args, env_extra: dict, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(env_extra)
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


IMPORT_SETTINGS = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.VAR_DIR, settings.CLEARWAY_VERSION)"
)


def test_the_settings_import_with_a_read_only_var_directory(tmp_path):
    """The var directory does not exist and its parent is read-only: importing the
    settings (and setting Django up) creates nothing and does not fail."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    var = readonly / "var"
    env = {"CLEARWAY_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "orchestrator.settings"}
    bwrap = shutil.which("bwrap")
    if bwrap:  # a read-only filesystem even for root: the whole tree, bind-mounted read-only
        args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        args += [sys.executable, "-c", IMPORT_SETTINGS]
    else:
        if os.geteuid() == 0:
            why = "needs bubblewrap (make sandbox-deps) to make a read-only filesystem for root"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
        readonly.chmod(0o555)
        args = [sys.executable, "-c", IMPORT_SETTINGS]
    try:
        result = _run(args, env)
    finally:
        readonly.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert str(var) in result.stdout
    assert not var.exists()


def test_clearway_check_creates_nothing_and_migrate_prepares_the_var_directory(tmp_path):
    var = tmp_path / "var"
    env = {"CLEARWAY_VAR_DIR": str(var)}
    cli = [sys.executable, "-m", "orchestrator.cli"]
    checked = _run([*cli, "check"], env)
    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues" in checked.stdout
    assert not var.exists()
    migrated = _run([*cli, "migrate", "--verbosity", "0"], env)
    assert migrated.returncode == 0, migrated.stderr
    assert (var / "clearway.sqlite3").is_file()
    assert (var / "staticfiles").is_dir() and (var / "workspaces").is_dir()


def test_an_unwritable_var_directory_is_refused_with_what_to_change(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run(
        [sys.executable, "-m", "orchestrator.cli", "migrate"],
        {"CLEARWAY_VAR_DIR": str(blocker / "var")},
    )
    assert result.returncode != 0
    assert "Point CLEARWAY_VAR_DIR" in result.stderr


def test_clearway_lists_its_commands_and_refuses_unknown_ones():
    shown = _run([sys.executable, "-m", "orchestrator.cli", "--help"], {})
    for command in ("standalone", "web", "worker", "beat", "migrate", "check", "seed-demo"):
        assert f"clearway {command}" in shown.stdout
    assert "verify-audit" in shown.stdout
    unknown = _run([sys.executable, "-m", "orchestrator.cli", "serve"], {})
    assert unknown.returncode == 2 and "unknown command 'serve'" in unknown.stdout


def test_manage_py_keeps_working(tmp_path):
    result = _run([sys.executable, "manage.py", "check"], {"CLEARWAY_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_without_the_demo_extra_seed_demo_says_what_to_install(tmp_path):
    code = (
        "import sys; sys.modules['time_machine'] = None\n"  # as if it were not installed
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('seed_demo')"
    )
    result = _run(
        [sys.executable, "-c", code],
        {"CLEARWAY_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "orchestrator.settings"},
    )
    assert result.returncode != 0
    assert "pip install 'clearway[demo]', or pass --no-history" in result.stderr

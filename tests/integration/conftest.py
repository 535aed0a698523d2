"""Real services and real processes for the integration tests.

The run is started by `make test-integration` with DATABASE_URL (PostgreSQL) and REDIS_URL
(Redis db 15) set. pytest-django creates the test database; the worker, beat and ASGI server
subprocesses are pointed at that same database, so what a test commits they see.

Every integration test is a transactional test (marked here at collection): its rows are
committed, so the subprocesses see them, and the database is flushed after it (see
tests/pg_flush.py for the audit table's TRUNCATE guard). Outside CI a missing service skips
these tests; with CI=true it fails them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require(condition: bool, what: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI and is not available", pytrace=False)
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_database(db: dict) -> None:
    """DATABASE_URL names a database that may not exist yet on a fresh machine; Django needs
    it to exist (it creates test_<name> next to it)."""
    import psycopg

    name = db["NAME"].removeprefix("test_")
    with psycopg.connect(
        host=db.get("HOST") or "127.0.0.1",
        port=db.get("PORT") or 5432,
        user=db.get("USER") or "postgres",
        dbname="postgres",
        autocommit=True,
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def services() -> dict:
    db = settings.DATABASES["default"]
    require(db["ENGINE"].endswith("postgresql"), "PostgreSQL (DATABASE_URL)")
    require(_port_open(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)), "PostgreSQL")
    _ensure_database(db)
    require(bool(settings.REDIS_URL), "Redis (REDIS_URL)")
    require(_port_open("127.0.0.1", 6379), "Redis")
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    return {"redis_url": settings.REDIS_URL}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("integration") or item.get_closest_marker("browser"):
            if item.get_closest_marker("django_db") is None:
                item.add_marker(pytest.mark.django_db(transaction=True))


@pytest.fixture(scope="session")
def live_db(services, django_db_setup) -> Iterator[str]:
    """The test database, shared with subprocesses; yields its DATABASE_URL."""
    db = settings.DATABASES["default"]
    yield (
        f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:"
        f"{db.get('PORT') or 5432}/{db['NAME']}"
    )
    connections.close_all()


def process_env(live_db: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "orchestrator.settings",
        "DATABASE_URL": live_db,
        "REDIS_URL": settings.REDIS_URL,
        "CLEARWAY_VAR_DIR": os.environ.get("CLEARWAY_VAR_DIR", str(settings.VAR_DIR)),
        "CLEARWAY_WORKSPACE_ROOT": settings.CLEARWAY["WORKSPACE_ROOT"],
        "CLEARWAY_HEARTBEAT_SECONDS": "1",
        "CLEARWAY_HEARTBEAT_TIMEOUT": "6",
        "CLEARWAY_REAPER_INTERVAL": "2",
        "PYTHONUNBUFFERED": "1",
        "DEBUG": "true",
    }
    env.update(extra)
    return env


class Proc:
    """A subprocess in its own process group, stopped with its children."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("process-logs")


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_worker(
    live_db: str,
    log_dir: Path,
    *,
    name="worker",
    concurrency=2,
    extra_env=None,
    pool="prefork",
    queues: str = "celery",
) -> Proc:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "orchestrator",
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--loglevel=INFO",
        "-n",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "-Q",
        queues,
    ]
    proc = Proc(name, args, process_env(live_db, **(extra_env or {})), log_dir)
    wait_for(
        lambda: "ready." in proc.output() or proc.popen.poll() is not None,
        60,
        what=f"{name} to be ready",
    )
    assert proc.popen.poll() is None, proc.output()
    return proc


def start_beat(live_db: str, log_dir: Path, tmp: Path, extra_env=None) -> Proc:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "orchestrator",
        "beat",
        "--loglevel=INFO",
        "-S",
        "django_celery_beat.schedulers:DatabaseScheduler",
        "--max-interval",
        "1",
        "--pidfile",
        str(tmp / "beat.pid"),
    ]
    proc = Proc("beat", args, process_env(live_db, **(extra_env or {})), log_dir)
    wait_for(
        lambda: "beat: Starting" in proc.output() or proc.popen.poll() is not None,
        60,
        what="beat to start",
    )
    return proc


def start_server(live_db: str, log_dir: Path, *, name="asgi", extra_env=None) -> tuple[Proc, str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "orchestrator.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws",
        "websockets-sansio",
        # As documented (docs/operations.md): uvicorn must not rewrite the client address
        # from X-Forwarded-For (it would for 127.0.0.1); Clearway decides it itself.
        "--no-proxy-headers",
        "--log-level",
        "warning",
    ]
    proc = Proc(name, args, process_env(live_db, **(extra_env or {})), log_dir)
    wait_for(
        lambda: _port_open("127.0.0.1", port) or proc.popen.poll() is not None,
        60,
        what=f"{name} to listen",
    )
    assert proc.popen.poll() is None, proc.output()
    return proc, f"http://127.0.0.1:{port}"


class RedisServer:
    """A redis-server of the test's own on a free port, to stop and start again on the same
    port (an outage). No persistence: everything that matters lives in PostgreSQL."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: _port_open("127.0.0.1", self.port) or self.popen.poll() is not None,
            20,
            what="redis-server",
        )
        assert self.popen.poll() is None, f"redis-server exited ({self.popen.returncode})"

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)


@pytest.fixture(scope="session")
def worker(live_db, log_dir) -> Iterator[Proc]:
    proc = start_worker(live_db, log_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def beat(live_db, log_dir, tmp_path_factory) -> Iterator[Proc]:
    proc = start_beat(live_db, log_dir, tmp_path_factory.mktemp("beat"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def asgi_server(live_db, log_dir) -> Iterator[str]:
    proc, url = start_server(live_db, log_dir)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def production_env(live_db, tmp_path_factory) -> dict[str, str]:
    """Settings of a production deployment (DEBUG off: no debug pages, hashed static files),
    served over plain HTTP on loopback for the test."""
    var = tmp_path_factory.mktemp("prod-var")
    extra = {
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,  # sessions made by the test process must verify
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "CLEARWAY_VAR_DIR": str(var),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=process_env(live_db, **extra),
        check=True,
        timeout=300,
    )
    return extra

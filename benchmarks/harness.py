"""What the benchmark scripts share: free ports, a PostgreSQL database of their own, the
uvicorn command line, waiting for a server, and appending a run to a results file.

The scripts run as `python benchmarks/<name>.py`, so this module is importable as
`harness` (the script's folder is first on sys.path)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_database(url: str, *, recreate: bool = False) -> None:
    """Create the database `url` names if it does not exist (drop it first with `recreate`)."""
    import psycopg

    u = urlparse(url)
    name = u.path.lstrip("/")
    with psycopg.connect(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and recreate:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def uvicorn_command(port: int, app: str = "orchestrator.asgi:application", *extra: str) -> list:
    """A uvicorn server on 127.0.0.1:`port`, warnings only."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]


def wait_listening(port: int, proc: subprocess.Popen, what: str, log, timeout: float = 60) -> None:
    """Until something listens on `port`; RuntimeError with the end of `log()` if `proc`
    exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log()[-3000:]}")
        time.sleep(0.1)


def append_results(path: Path, title: str, text: str) -> None:
    """Append one run's section to a results file, starting the file if needed."""
    if not path.exists():
        path.write_text(
            f"# {title}\n\nMethod: see the script's docstring. Each run appends a section below.\n"
        )
    with path.open("a") as f:
        f.write(text)

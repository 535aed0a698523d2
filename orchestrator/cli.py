"""`clearway`: the command operators run (installed by pyproject.toml's console script).

    clearway standalone [--port 8000]     web + worker + beat in one process (SQLite)
    clearway web [--host H] [--port P]    the ASGI server (uvicorn): HTTP + websockets
    clearway worker [celery options]      a Celery worker
    clearway beat [celery options]        the Celery beat scheduler (exactly one)
    clearway migrate                      apply the database migrations
    clearway check [--deploy]             Django's system checks (production: --deploy)
    clearway seed-demo                    the demo of DEMO.md (needs the "demo" extra)
    clearway verify-audit                 recompute the audit chain, name the first bad row
    clearway collectstatic --noinput      copy static files to STATIC_ROOT (whitenoise)

Each sub-command sets DJANGO_SETTINGS_MODULE (orchestrator.settings unless set), and the ones
that write (everything but `check`) create the directories under CLEARWAY_VAR_DIR first:
the settings module itself creates nothing, so it imports on a read-only filesystem.
`manage.py` keeps working and prepares the directories the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# sub-command -> management command (the rest of the arguments are passed on)
MANAGEMENT = {
    "standalone": "standalone",
    "migrate": "migrate",
    "check": "check",
    "seed-demo": "seed_demo",
    "verify-audit": "verify_audit_log",
    "collectstatic": "collectstatic",
}
# Commands that only read: no directory is created for them.
READ_ONLY = {"check", "help", "version", "--help", "-h", "--version", "makemigrations"}


def _setup_environment() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")


def prepare_directories() -> list[Path]:
    """Create what the running process writes to: the var directory (SQLite database, step
    workspaces, generated reports, development mail) and whitenoise's STATIC_ROOT. Refuses
    with the variable to change when a directory cannot be created."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    wanted = [Path(settings.STATIC_ROOT), Path(settings.MEDIA_ROOT)]
    wanted.append(Path(settings.CLEARWAY["WORKSPACE_ROOT"]))
    if settings.EMAIL_BACKEND.endswith("filebased.EmailBackend"):
        wanted.append(Path(settings.EMAIL_FILE_PATH))
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3") and str(database["NAME"]) != ":memory:":
        wanted.append(Path(database["NAME"]).parent)
    for path in wanted:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImproperlyConfigured(
                f"cannot create {path}: {exc.strerror}. Point CLEARWAY_VAR_DIR (or "
                "CLEARWAY_WORKSPACE_ROOT) at a writable directory, e.g. a volume mounted "
                "at /var/lib/clearway."
            ) from None
    return wanted


def run_management(argv: list[str]) -> None:
    """`manage.py`'s entry: prepare the directories unless the command only reads."""
    _setup_environment()
    import django
    from django.core.management import execute_from_command_line

    command = argv[1] if len(argv) > 1 else "help"
    if command not in READ_ONLY:
        django.setup()
        prepare_directories()
    execute_from_command_line(argv)


def _web(args: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="clearway web", description="Serve HTTP + websockets.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument(
        "--forwarded-allow-ips",
        default="",
        help="addresses of proxies whose X-Forwarded-* headers uvicorn may apply; leave "
        "empty (the default) and let Clearway read them from CLEARWAY_TRUSTED_PROXIES",
    )
    opts = parser.parse_args(args)
    import django

    django.setup()
    prepare_directories()
    import uvicorn

    uvicorn.run(
        "orchestrator.asgi:application",
        host=opts.host,
        port=opts.port,
        workers=opts.workers,
        lifespan="off",
        ws="websockets-sansio",
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise: a step on the
        # web host could then choose its address. Off unless the operator names proxies.
        proxy_headers=bool(opts.forwarded_allow_ips),
        forwarded_allow_ips=opts.forwarded_allow_ips or None,
    )


def _celery(kind: str, args: list[str]) -> None:
    import django

    django.setup()
    prepare_directories()
    # Start-up order (a documented exception to "no import inside a function"): the Celery
    # app reads Django's settings, which this command set up just above.
    from orchestrator.celery import app

    argv = [kind, *args]
    if kind == "beat" and not any(a in ("-S", "--scheduler") for a in args):
        argv += ["-S", "django_celery_beat.schedulers:DatabaseScheduler"]
    app.start(argv=argv)


USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: clearway <command> [options]\n\n" + USAGE)
        return
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"clearway {version('clearway')}")
        return
    command, rest = argv[0], argv[1:]
    _setup_environment()
    if command == "web":
        _web(rest)
    elif command in ("worker", "beat"):
        _celery(command, rest)
    elif command in MANAGEMENT:
        run_management(["clearway", MANAGEMENT[command], *rest])
    else:
        print(f"clearway: unknown command {command!r}\n\nusage: clearway <command>\n\n{USAGE}")
        sys.exit(2)


if __name__ == "__main__":
    main()

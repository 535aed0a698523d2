"""`manage.py standalone`: Clearway in one process, with no external service.

The ASGI server (uvicorn: HTTP + websockets), a Celery worker (thread pool) and the beat
scheduler run together. The worker really consumes its tasks from the broker — the embedded
`memory://` transport unless CELERY_BROKER_URL / REDIS_URL say otherwise — so the code paths
are those of production, not `task_always_eager`.

The in-memory channel layer is not thread-safe, so live events published from worker threads
are handed to the server's own event loop (orchestrator.events.bind_loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from governance import checkpoints
from orchestrator import events, executors, sandbox
from orchestrator.celery import app
from orchestrator.cli import prepare_directories

logger = logging.getLogger("clearway.standalone")


class Command(BaseCommand):
    help = "Run Clearway standalone: web server + worker + beat in one process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-demo", action="store_true", help="do not seed the demo")
        parser.add_argument("--concurrency", type=int, default=4, help="worker threads")
        parser.add_argument("--no-beat", action="store_true")
        parser.add_argument(
            "--forwarded-allow-ips",
            default="",
            help="proxies whose X-Forwarded-* headers uvicorn may apply (default: none; "
            "Clearway reads them itself from CLEARWAY_TRUSTED_PROXIES)",
        )

    def handle(self, *args, **opts):
        prepare_directories()
        if "LOG_LEVEL" not in os.environ:
            # The embedded worker and beat would log every task at INFO: a demo's console
            # keeps to warnings (LOG_LEVEL=INFO brings them back).
            logging.getLogger("celery").setLevel(logging.WARNING)
        # Steps run under bubblewrap; without it, refuse rather than run them unisolated.
        try:
            warning = sandbox.startup_check("standalone server")
        except sandbox.SandboxUnavailable as exc:
            raise CommandError(f"Clearway refuses to start: {exc}") from None
        if warning:
            self.stderr.write(self.style.WARNING(warning))
        call_command("migrate", interactive=False, verbosity=0)
        # Signed audit checkpoints need a key outside the database: standalone makes one under
        # var/ on its first start (a production deployment names its own in settings).
        checkpoints.ensure_demo_key()
        seeded = False
        if not opts["no_demo"]:
            seeded = self._seed_once()
        worker, worker_thread = self._start_worker(opts["concurrency"])
        beat = None if opts["no_beat"] else self._start_beat()
        try:
            self._banner(opts["host"], opts["port"], demo=not opts["no_demo"], seeded=seeded)
            try:
                asyncio.run(self._serve(opts["host"], opts["port"], opts["forwarded_allow_ips"]))
            except KeyboardInterrupt:
                pass  # uvicorn re-raises the Ctrl-C it handled; shutting down is the answer
        finally:
            self.stdout.write("Stopping worker and beat…")
            executors.kill_running_steps()
            if beat is not None:
                beat.stop()
            worker.stop(in_sighandler=False, exitcode=0)
            worker_thread.join(15)
            self.stdout.write("Stopped.")

    def _seed_once(self) -> bool:
        from django.contrib.auth import get_user_model

        if get_user_model().objects.filter(username="dana").exists():
            return False
        self.stdout.write(
            "Seeding the Northwind Health demo (first start only; takes a minute or two)…"
        )
        # The history needs the "demo" extra (time-machine); without it, seed the rest.
        try:
            import time_machine  # noqa: F401

            history = True
        except ImportError:
            history = False
        if not history:
            self.stdout.write(
                "  (without the 60 days of history: pip install 'clearway[demo]' to get them)"
            )
        call_command("seed_demo", no_history=not history)
        return True

    def _start_worker(self, concurrency: int):
        from celery.worker import WorkController

        app.finalize()
        app.set_current()
        app.set_default()
        ready = threading.Event()

        class Worker(WorkController):
            def on_consumer_ready(self, consumer):
                ready.set()

        worker = Worker(
            app=app,
            hostname=f"standalone@{os.uname().nodename}",
            pool="threads",
            concurrency=concurrency,
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=None,
        )
        # The worker must not install its own signal handlers (uvicorn owns SIGINT/SIGTERM).
        worker.install_signal_handlers = lambda *a, **k: None
        thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the embedded Celery worker did not start within 30 s")
        return worker, thread

    def _start_beat(self):
        from celery.beat import EmbeddedService

        beat = EmbeddedService(app, thread=True, scheduler_cls=settings.CELERY_BEAT_SCHEDULER)
        beat.start()
        return beat

    async def _serve(self, host: str, port: int, forwarded_allow_ips: str = "") -> None:
        import uvicorn

        events.bind_loop(asyncio.get_running_loop())
        config = uvicorn.Config(
            "orchestrator.asgi:application",
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            ws="websockets-sansio",
            # uvicorn would take X-Forwarded-For from 127.0.0.1 (any local process) as the
            # client's address; only proxies the operator names are believed.
            proxy_headers=bool(forwarded_allow_ips),
            forwarded_allow_ips=forwarded_allow_ips or None,
        )
        server = uvicorn.Server(config)
        await server.serve()

    def _banner(self, host: str, port: int, *, demo: bool, seeded: bool) -> None:
        password = settings.CLEARWAY.get("DEMO_PASSWORD")
        lines = [
            "",
            f"Clearway is running on http://{host}:{port}/  (Ctrl-C stops everything)",
            f"  database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
            f"broker: {settings.CELERY_BROKER_URL.split('://', 1)[0]}, "
            f"channel layer: {settings.CHANNEL_LAYERS['default']['BACKEND'].rsplit('.', 1)[-1]}",
            f"  audit checkpoints: signed with {settings.CLEARWAY['AUDIT_SIGNING_KEY']}, "
            f"written to {', '.join(settings.CLEARWAY['AUDIT_CHECKPOINT_SINKS'])}",
            "  steps: "
            + (
                "sandboxed (bubblewrap)"
                if sandbox.enabled()
                else "NOT SANDBOXED (CLEARWAY_SANDBOX=off)"
            ),
        ]
        if demo and password:
            lines += [
                f"  demo logins (password for all: {password}):",
                "    dana (developer, payments)  omar (developer, platform)",
                "    sam, sara (approver, sre)   sofia (approver, security)",
                "    paula (policy-admin)        carl (compliance-manager)",
                "    vic (viewer)                admin (superuser)",
            ]
        self.stdout.write("\n".join(lines) + "\n")
        self.stdout.flush()

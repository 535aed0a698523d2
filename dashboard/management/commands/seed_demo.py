"""`manage.py seed_demo`: the Northwind Health demo (see docs/demo.md). Idempotent: running it
again changes nothing that exists. Everything is made through the same actions the product
uses, so the audit chain verifies."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from dashboard import demo


class Command(BaseCommand):
    help = (
        "Seed the Northwind Health demo: users, teams, environments, pipelines, policies, history."
    )

    def add_arguments(self, parser):
        parser.add_argument("--no-history", action="store_true", help="skip the 60 days of runs")
        parser.add_argument("--days", type=int, default=60)

    def handle(self, *args, **opts):
        if not settings.DEBUG:
            raise CommandError(
                "seed_demo refuses to run with DEBUG off: the demo users have a published "
                "password. Seed a development or test instance instead."
            )
        if not opts["no_history"] and not _history_available():
            raise CommandError(
                "the demo's history is replayed with time-machine, which is not installed: "
                "pip install 'clearway[demo]', or pass --no-history"
            )
        summary = demo.seed(history=not opts["no_history"], days=opts["days"], out=self.stdout)
        self.stdout.write(self.style.SUCCESS(f"Demo ready: {summary}"))


def _history_available() -> bool:
    try:  # the "demo" extra: not a runtime dependency of Clearway
        import time_machine  # noqa: F401
    except ImportError:
        return False
    return True

"""`manage.py rollup_metrics [--full]`: one pass of the overview's metric rollups now, as
beat makes every minute (orchestrator/rollups.py); --full recomputes the whole horizon,
e.g. after importing history in bulk."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from orchestrator import rollups


class Command(BaseCommand):
    help = "Refresh the overview's metric rollups (--full: the whole 91-day horizon)."

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true", help="recompute every day")

    def handle(self, *args, **opts):
        done = rollups.refresh(full=opts["full"])
        kind = "full" if done["rebuild"] else "incremental"
        self.stdout.write(f"{kind} pass: {done['days']} day(s) in {done['seconds']} s")

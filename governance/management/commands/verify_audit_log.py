"""`manage.py verify_audit_log`: recompute the audit hash chain from the first row.

Exit status 0 and "audit chain OK: N events, head #seq hash" when every row matches; exit
status 1 naming the first broken row and what is wrong with it otherwise (a changed row, a
missing row, a head that does not match). Safe to run from cron or CI: it only reads."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from governance import audit


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit 1 naming the first broken row."

    def add_arguments(self, parser):
        parser.add_argument(
            "--up-to", type=int, default=None, metavar="SEQ", help="verify rows 1..SEQ only"
        )

    def handle(self, *args, **opts):
        result = audit.verify(up_to_seq=opts["up_to"])
        if not result.ok:
            raise CommandError(
                f"audit chain BROKEN at #{result.first_broken_seq}: {result.problem} "
                f"({result.checked} events verified before it; head #{result.head_seq} "
                f"{result.head_hash})"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"audit chain OK: {result.checked} events, head #{result.head_seq} "
                f"{result.head_hash}"
            )
        )

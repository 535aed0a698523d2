"""`manage.py verify_audit_log`: verify the audit hash chain.

    verify_audit_log                      from the latest trusted checkpoint to the head
    verify_audit_log --full               from the first row
    verify_audit_log --checkpoints SINK   every checkpoint in SINK (a directory, s3://bucket/
                                          prefix, or a file of syslog lines) against the
                                          chain, then the chain from the latest that matched
    verify_audit_log --make-checkpoint    sign the head now and write it to the sinks

Exit status 0 and "audit chain OK: …" when everything matches; exit status 1 naming the
first divergence otherwise (a changed row, a missing row, a head that does not match, a
checkpoint the database no longer agrees with). Safe to run from cron or CI: it only reads,
except for --make-checkpoint."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from governance import audit, checkpoints


class Command(BaseCommand):
    help = "Verify the audit hash chain and external checkpoints; exit 1 naming the divergence."

    def add_arguments(self, parser):
        parser.add_argument(
            "--up-to", type=int, default=None, metavar="SEQ", help="verify rows up to SEQ only"
        )
        parser.add_argument(
            "--full", action="store_true", help="walk the whole chain from the first row"
        )
        parser.add_argument(
            "--checkpoints",
            action="append",
            default=[],
            metavar="SINK",
            help="check the signed checkpoints in SINK against the chain (repeatable)",
        )
        parser.add_argument(
            "--make-checkpoint", action="store_true", help="sign the chain head now"
        )

    def handle(self, *args, **opts):
        if opts["make_checkpoint"]:
            try:
                row = checkpoints.make_checkpoint()
            except checkpoints.CheckpointError as exc:
                raise CommandError(str(exc))
            if row is None:
                self.stdout.write("no new audit events since the last checkpoint")
            else:
                sinks = ", ".join(f"{k}: {v}" for k, v in row.sinks.items()) or "no sinks"
                self.stdout.write(f"checkpoint #{row.seq} {row.hash} signed ({sinks})")
            return
        if opts["checkpoints"]:
            for spec in opts["checkpoints"]:
                self._verify_sink(spec, full=opts["full"])
            return
        if opts["full"]:
            result = audit.verify(up_to_seq=opts["up_to"])
        else:
            result = checkpoints.verify(up_to_seq=opts["up_to"])
        if not result.ok:
            raise CommandError(
                f"audit chain BROKEN at #{result.first_broken_seq}: {result.problem} "
                f"({result.checked} events verified before it; head #{result.head_seq} "
                f"{result.head_hash})"
            )
        since = f" since checkpoint #{result.since_seq}" if result.since_seq else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"audit chain OK: {result.checked} events{since}, head #{result.head_seq} "
                f"{result.head_hash}"
            )
        )

    def _verify_sink(self, spec: str, *, full: bool) -> None:
        try:
            report = checkpoints.verify_checkpoints(checkpoints.sink(spec), full=full)
        except checkpoints.CheckpointError as exc:
            raise CommandError(str(exc))
        for problem in report.problems:
            self.stderr.write(f"skipped: {problem}")
        if not report.ok:
            raise CommandError(
                f"audit chain DIVERGES from {report.source}: {report.first_divergence} "
                f"({report.checked} checkpoints matched before it)"
            )
        chain = report.chain
        self.stdout.write(
            self.style.SUCCESS(
                f"audit chain OK against {report.source}: {report.checked} checkpoints match "
                f"(latest #{report.latest_matching.seq} signed {report.latest_matching.at}); "
                f"{chain.checked} events verified after #{chain.since_seq}, head "
                f"#{chain.head_seq} {chain.head_hash}"
            )
        )

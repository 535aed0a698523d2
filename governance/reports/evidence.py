"""The evidence header and trailer every export carries: who, when, filters, row counts,
the audit chain head and its verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from celery import current_app
from django.conf import settings
from django.db import transaction

from .. import audit, checkpoints
from .constants import logger
from .filters import iso

# --- evidence header and trailer --------------------------------------------------------


@dataclass
class Evidence:
    """What every export says about itself. `rows` are computed before the first byte;
    `verification` (audit.verify up to `head_seq`) is filled in by `verify()`."""

    report: str
    title: str
    generated_at: datetime
    generated_by: str
    filters: dict
    rows: dict
    fmt: str
    head_seq: int = 0
    head_hash: str = audit.GENESIS_HASH
    export_event_seq: int | None = None
    extra: dict = field(default_factory=dict)
    verification: dict | None = None

    def header(self) -> dict:
        out = {
            "report": self.report,
            "title": self.title,
            "generated_at": iso(self.generated_at),
            "generated_by": self.generated_by,
            "format": self.fmt,
            "filters": self.filters,
            "rows": self.rows,
            "clearway_version": getattr(settings, "CLEARWAY_VERSION", ""),
            "audit_chain_head": {"seq": self.head_seq, "hash": self.head_hash},
            "export_audit_seq": self.export_event_seq,
            "ordering": ORDERING[self.report],
        }
        out.update(self.extra)
        if self.verification is not None:
            out["chain_verification"] = self.verification
        return out

    def verify(self) -> dict:
        # From the latest signed checkpoint, not row 1: O(rows since it), see checkpoints.py.
        result = checkpoints.verify(up_to_seq=self.head_seq)
        self.verification = {
            "ok": result.ok,
            "checked": result.checked,
            "since_checkpoint_seq": result.since_seq,
            "up_to_seq": self.head_seq,
            "first_broken_seq": result.first_broken_seq,
            "problem": result.problem,
        }
        return self.verification


ORDERING = {
    "changes": "changes by requested_at then change id; exceptions by kind, then time",
    "audit-log": "by seq",
    "access": "by environment, then user",
}


def record_refused_export(user, report: str, reason: str) -> None:
    """Audit an export that was refused (outcome denied)."""
    audit.record(user, "report.export", ("report", report, report), outcome="denied", reason=reason)


def record_export(user, report: str, *, filters: dict, rows: dict, fmt: str, **more) -> int:
    """Audit the export itself (before the first byte); returns the event's seq."""
    event = audit.record(
        user,
        "report.export",
        ("report", report, report),
        filters=filters,
        rows=rows,
        format=fmt,
        **more,
    )
    return event.seq


def queue_checkpoint() -> None:
    if not settings.CLEARWAY.get("AUDIT_SIGNING_KEY"):
        return
    try:
        current_app.send_task("clearway.audit_checkpoint")
    except Exception:  # noqa: BLE001  broker down: beat signs the head on its next round
        logger.warning("could not queue an audit checkpoint after an export", exc_info=True)


def make_evidence(
    user,
    report: str,
    title: str,
    *,
    filters: dict,
    rows: dict,
    fmt: str,
    generated_at: datetime,
    **more,
) -> Evidence:
    seq = record_export(user, report, filters=filters, rows=rows, fmt=fmt, **more)
    head_seq, head_hash = audit.chain_head()
    transaction.on_commit(queue_checkpoint)  # every export leaves a signed checkpoint
    return Evidence(
        report=report,
        title=title,
        generated_at=generated_at,
        generated_by=user.get_username(),
        filters=filters,
        rows=rows,
        fmt=fmt,
        head_seq=head_seq,
        head_hash=head_hash,
        export_event_seq=seq,
    )

"""Thin Celery wrappers for governance work."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="clearway.gate_housekeeping")
def gate_housekeeping() -> dict:
    """Expire stale approvals, send reminders (see governance.gates.housekeeping)."""
    from . import gates

    housekeeping = getattr(gates, "housekeeping", None)
    return housekeeping() if housekeeping else {}

"""/healthz: the state of the database, the broker and the channel layer; and, as details that
do not change the status, how far each SIEM stream lags and how old the last signed audit
checkpoint is."""

from __future__ import annotations

import asyncio
import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from governance import audit, siem
from governance.models import AuditCheckpoint
from orchestrator.celery import app


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:  # noqa: BLE001 — reported, not raised
        return {"ok": False, "error": exc.__class__.__name__}


def _check_broker() -> dict:
    url = settings.CELERY_BROKER_URL
    scheme = url.split("://", 1)[0]
    if scheme == "memory":
        return {"ok": True, "transport": "memory (embedded)"}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "transport": scheme}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "transport": scheme, "error": exc.__class__.__name__}


def _check_channel_layer() -> dict:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    name = type(layer).__name__
    if name == "InMemoryChannelLayer":
        return {"ok": True, "backend": "in-memory"}

    async def probe() -> None:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        await layer.receive(channel)

    try:
        asyncio.run(asyncio.wait_for(probe(), timeout=2))
        return {"ok": True, "backend": name}
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "backend": name, "error": exc.__class__.__name__}


def _audit_details() -> dict:
    try:
        head_seq, _ = audit.chain_head()
        latest = AuditCheckpoint.objects.order_by("-seq").first()
        checkpoint = {
            "configured": bool(settings.CLEARWAY.get("AUDIT_SIGNING_KEY")),
            "head_seq": head_seq,
            "latest_seq": latest.seq if latest else None,
            "events_since": head_seq - (latest.seq if latest else 0),
            "age_seconds": (
                round((timezone.now() - latest.created_at).total_seconds(), 1) if latest else None
            ),
            "sinks_failing": sorted(k for k, v in latest.sinks.items() if v != "ok")
            if latest
            else [],
        }
        return {"audit_stream": siem.lag(), "audit_checkpoint": checkpoint}
    except Exception as exc:  # noqa: BLE001 — a detail; the database check reports the cause
        return {"audit_error": exc.__class__.__name__}


@never_cache
@require_GET
def healthz(request):
    started = time.monotonic()
    checks = {
        "database": _check_database(),
        "broker": _check_broker(),
        "channel_layer": _check_channel_layer(),
    }
    ok = all(c["ok"] for c in checks.values())
    body = {
        "status": "ok" if ok else "down",
        "version": settings.CLEARWAY_VERSION,
        "checks": checks,
        "details": _audit_details() if checks["database"]["ok"] else {},
        "took_ms": round((time.monotonic() - started) * 1000, 1),
    }
    return JsonResponse(body, status=200 if ok else 503)

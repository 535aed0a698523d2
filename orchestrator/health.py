"""/healthz: the state of the database, the broker and the channel layer."""

from __future__ import annotations

import asyncio
import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

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
        "took_ms": round((time.monotonic() - started) * 1000, 1),
    }
    return JsonResponse(body, status=200 if ok else 503)

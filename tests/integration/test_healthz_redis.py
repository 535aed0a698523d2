"""/healthz reports a stopped Redis as down (503): a Redis server of the test's own is
started, checked, stopped and checked again."""

from __future__ import annotations

import shutil

import pytest
from django.test import Client

from .conftest import RedisServer, require

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path):
    require(shutil.which("redis-server") is not None, "redis-server")
    redis = RedisServer(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def test_healthz_reports_stopped_redis_as_503(live_db, own_redis, settings):
    url = own_redis.url
    settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}
    }
    from channels.layers import channel_layers

    from orchestrator.celery import app

    channel_layers.backends.clear()
    app.conf.broker_url = url
    try:
        up = Client().get("/healthz")
        assert up.status_code == 200, up.content
        own_redis.stop()
        channel_layers.backends.clear()
        down = Client().get("/healthz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "down"
        assert body["checks"]["broker"]["ok"] is False
        assert body["checks"]["channel_layer"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True
    finally:
        channel_layers.backends.clear()
        app.conf.broker_url = settings.REDIS_URL

"""Settings of the bare Channels project (see __init__.py). REDIS_URL is required."""

import os

SECRET_KEY = "bare-channels-benchmark-only"  # noqa: S105 - no sessions, no users
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "bare_channels.urls"
ASGI_APPLICATION = "bare_channels.asgi.application"
DATABASES = {}
USE_TZ = True

# The same layer configuration as orchestrator/settings.py (socket timeout above channels_redis's
# 5 s blocking wait, a pool for hundreds of clients), so the comparison isolates Clearway's own
# code path (publisher, consumer, middleware), not the layer's settings.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ["REDIS_URL"],
                    "socket_timeout": 30,
                    "socket_keepalive": True,
                    "max_connections": 1000,
                }
            ],
            "capacity": 1500,
            "expiry": 30,
            "group_expiry": 86400,
        },
    }
}

# channels_redis reports "... channels over capacity in group ..." at INFO: keep it visible.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}

"""Settings of the bare Channels project (see __init__.py). REDIS_URL is required.

LAYER_HOST_OPTIONS (JSON, optional) turns the host into {"address": REDIS_URL, **options},
e.g. '{"socket_timeout": 15, "max_connections": 1000}' for live_fanout.py --what-if; by
default the host is the plain URL, as in orchestrator/settings.py.
"""

import json
import os

_options = json.loads(os.environ.get("LAYER_HOST_OPTIONS") or "{}")
_host = {"address": os.environ["REDIS_URL"], **_options} if _options else os.environ["REDIS_URL"]

SECRET_KEY = "bare-channels-benchmark-only"  # noqa: S105 - no sessions, no users
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "bare_channels.urls"
ASGI_APPLICATION = "bare_channels.asgi.application"
DATABASES = {}
USE_TZ = True

# The same layer configuration as orchestrator/settings.py, so the comparison isolates
# Clearway's own code path (publisher, consumer, middleware), not the layer's settings.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [_host],
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

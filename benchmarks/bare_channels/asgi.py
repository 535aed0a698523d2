"""ASGI entry point of the bare project: websockets only, no origin check, no auth."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bare_channels.settings")

import django  # noqa: E402

django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from bare_channels.consumers import ForwardConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {"websocket": URLRouter([path("ws/events/", ForwardConsumer.as_asgi())])}
)

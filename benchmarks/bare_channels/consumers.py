"""One consumer: joins GROUP on connect and forwards every group message's `event`, adding
`t_server` (the time it forwards).

With BARE_LEAN=1 it also skips what Channels does before every handler, a
close_old_connections() round trip through the sync thread (this project has no database),
as Clearway's consumer does for relayed events: the lower bound for a Channels relay."""

import json
import os
import time

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "bench.run"
LEAN = os.environ.get("BARE_LEAN") == "1"


class ForwardConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def dispatch(self, message):
        if LEAN and message["type"] == "bench.event":
            await self.bench_event(message)
        else:
            await super().dispatch(message)

    async def bench_event(self, message):
        # t_server: when this consumer forwards (tells server-side from client-side delay)
        await self.send(text_data=json.dumps({**message["event"], "t_server": time.time()}))

"""One consumer: joins GROUP on connect and forwards every group message's `event`, adding
`t_server` (the time it forwards)."""

import json
import time

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "bench.run"


class ForwardConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_event(self, message):
        # t_server: when this consumer forwards (tells server-side from client-side delay)
        await self.send(text_data=json.dumps({**message["event"], "t_server": time.time()}))

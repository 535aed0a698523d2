"""The websocket consumer for live events (/ws/events/).

Only authenticated users get in (origin validation happens in asgi.py). On connect the user
joins the group of every pipeline they may view; `{"subscribe": "run", "id": N}` adds the
run's log stream after the same permission check the pages use. Permissions are decided by
governance.permissions, and re-decided on every (re)connect, so revoked access stops at the
latest on reconnect.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from governance import permissions
from orchestrator import events


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.pipeline_ids = await self._visible_pipeline_ids(user)
        self.groups_joined: set[str] = set()
        for pid in self.pipeline_ids:
            await self._join(events.pipeline_group(pid))
        await self.accept()
        await self.send_json({"type": "hello", "pipelines": sorted(self.pipeline_ids)})

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", set()):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "message": "expected a JSON object"})
            return
        if content.get("subscribe") == "run":
            run_id = content.get("id")
            if not isinstance(run_id, int) or not await self._may_view_run(run_id):
                await self.send_json(
                    {"type": "error", "message": f"run {run_id} not found", "id": run_id}
                )
                return
            await self._join(events.run_group(run_id))
            await self.send_json({"type": "subscribed", "run": run_id})
        elif content.get("unsubscribe") == "run":
            group = events.run_group(content.get("id"))
            if group in self.groups_joined:
                await self.channel_layer.group_discard(group, self.channel_name)
                self.groups_joined.discard(group)
        else:
            await self.send_json({"type": "error", "message": "unknown message"})

    async def clearway_event(self, message):
        await self.send_json(message["event"])

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.add(group)

    @database_sync_to_async
    def _visible_pipeline_ids(self, user) -> set[int]:
        return set(permissions.pipelines(user).values_list("pk", flat=True))

    @database_sync_to_async
    def _may_view_run(self, run_id: int) -> bool:
        from orchestrator.models import Run

        user = self.scope["user"]
        return permissions.restrict(Run.objects.filter(pk=run_id), user).exists()

"""The websocket consumer for live events (/ws/events/).

Only authenticated users get in (origin validation happens in asgi.py). On connect the user
joins the group of every pipeline they may view; `{"subscribe": "run", "id": N}` adds the
run's log stream after the same permission check the pages use, and answers
`{"type": "subscribed", "run": N, "seq": S}` with the run's current sequence number so the
client can tell whether it missed anything. Permissions are decided by
governance.permissions, and re-decided on every (re)connect, every subscription and whenever
the user's access changes: role, team and object-permission changes are announced to the
user's own group (events.publish_access_changed, from governance.signals), and the consumer
then follows exactly the pipelines the user may view now — revoked access stops at once.
"""

from __future__ import annotations

import contextlib
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from governance import permissions
from orchestrator import events
from orchestrator.models import Run

logger = logging.getLogger(__name__)

# What the channel layer raises while Redis is down or unreachable.
CHANNEL_LAYER_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)

MAX_RUN_SUBSCRIPTIONS = 20  # a page watches one run; a bound keeps a client from hoarding groups


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.groups_joined: set[str] = set()
        self.runs: dict[int, int] = {}  # subscribed run -> its pipeline
        self.pipeline_ids = await self._visible_pipeline_ids(user)
        await self._join(events.user_group(user.pk))
        for pid in self.pipeline_ids:
            await self._join(events.pipeline_group(pid))
        await self.accept()
        await self.send_json({"type": "hello", "pipelines": sorted(self.pipeline_ids)})

    async def clearway_access(self, message):
        """The user's access changed (events.publish_access_changed): follow exactly the
        pipelines they may view now — a revoked one stops at once, with its runs' logs — and
        tell the page, which re-reads what it shows."""
        user = self.scope["user"]
        await database_sync_to_async(user.refresh_from_db)()  # is_active, is_superuser
        if not user.is_active:
            await self._leave_groups()
            await self.close(code=4403)
            return
        if not await self._token_live():  # signed in with an API token, now revoked/expired
            await self._leave_groups()
            await self.close(code=4401)
            return
        visible = await self._visible_pipeline_ids(user)
        for pid in self.pipeline_ids - visible:
            await self._leave(events.pipeline_group(pid))
        for pid in visible - self.pipeline_ids:
            await self._join(events.pipeline_group(pid))
        self.pipeline_ids = visible
        for run_id, pipeline_id in list(self.runs.items()):
            if pipeline_id not in visible:  # a run is visible exactly when its pipeline is
                await self._leave(events.run_group(run_id))
                del self.runs[run_id]
        await self.send_json({"type": "access.changed", "pipelines": sorted(visible)})

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except CHANNEL_LAYER_DOWN as exc:
            # Redis is unreachable (restarting, failing over): every browser retries with
            # backoff, so one line per attempt, not a traceback each. The socket closes;
            # the page shows "reconnecting…" and re-reads the state once back.
            logger.warning("live events: channel layer unavailable (%s); the client retries", exc)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1011})
        finally:
            # A consumer that dies on a channel layer error (a Redis read timeout, a full
            # connection pool) never gets to disconnect(): leave its groups anyway, or every
            # later event is still routed to, and buffered in this process for, the dead
            # channel until group_expiry (a day).
            await self._leave_groups()

    async def disconnect(self, code):
        await self._leave_groups()

    async def _leave_groups(self) -> None:
        groups = getattr(self, "groups_joined", set())
        while groups:
            group = groups.pop()
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # one failure must not keep the other groups joined
                logger.warning("could not leave %s", group, exc_info=True)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "message": "expected a JSON object"})
            return
        if content.get("subscribe") == "run":
            await self._subscribe_run(content.get("id"))
        elif content.get("unsubscribe") == "run":
            run_id = content.get("id")
            if run_id in self.runs:
                await self._leave(events.run_group(run_id))
                del self.runs[run_id]
        else:
            await self.send_json({"type": "error", "message": "unknown message"})

    async def _subscribe_run(self, run_id) -> None:
        # bool is an int in Python: refuse it explicitly.
        if not isinstance(run_id, int) or isinstance(run_id, bool):
            await self.send_json({"type": "error", "message": "id must be a run id", "id": run_id})
            return
        if run_id not in self.runs and len(self.runs) >= MAX_RUN_SUBSCRIPTIONS:
            await self.send_json(
                {"type": "error", "message": "too many run subscriptions", "id": run_id}
            )
            return
        pipeline_id = await self._visible_run_pipeline(run_id)
        if pipeline_id is None:
            await self.send_json(
                {"type": "error", "message": f"run {run_id} not found", "id": run_id}
            )
            return
        # Status events travel in the pipeline's group, log lines in the run's. A pipeline
        # created (or granted) since connect is joined now: the permission was just checked.
        if pipeline_id not in self.pipeline_ids:
            self.pipeline_ids.add(pipeline_id)
            await self._join(events.pipeline_group(pipeline_id))
        # Join first, then read the sequence: whatever happens in between arrives as an
        # event or is counted in `seq`, so the client can detect what it missed.
        await self._join(events.run_group(run_id))
        self.runs[run_id] = pipeline_id
        seq = await self._run_seq(run_id)
        await self.send_json({"type": "subscribed", "run": run_id, "seq": seq})

    async def dispatch(self, message):
        # Channels runs close_old_connections() in the one sync thread before every handler:
        # for a relayed event that is a thread round trip per event per client, all through
        # that single thread (1,000/s for 200 clients at 5 events/s). Relaying never touches
        # the database, so events skip it; everything else goes the usual way.
        if message["type"] == "clearway.event":
            await self.clearway_event(message)
        elif message["type"] == "clearway.events":
            await self.clearway_events(message)
        else:
            await super().dispatch(message)

    async def clearway_event(self, message):
        await self.send_json(message["event"])

    async def clearway_events(self, message):
        """Several events of one transaction, for one group (events._Batch.deliver): the
        browser still gets one frame per event."""
        for event in message["events"]:
            await self.send_json(event)

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.add(group)

    async def _leave(self, group: str) -> None:
        await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined.discard(group)

    @database_sync_to_async
    def _token_live(self) -> bool:
        token = self.scope.get("token")  # dashboard.ws_auth
        if token is None:
            return True
        token.refresh_from_db(fields=["revoked_at", "expires_at"])
        return token.state(timezone.now()) == "active"

    @database_sync_to_async
    def _visible_pipeline_ids(self, user) -> set[int]:
        return set(permissions.pipelines(user).values_list("pk", flat=True))

    @database_sync_to_async
    def _visible_run_pipeline(self, run_id: int) -> int | None:
        user = self.scope["user"]
        return (
            permissions.restrict(Run.objects.filter(pk=run_id), user)
            .values_list("pipeline_id", flat=True)
            .first()
        )

    @database_sync_to_async
    def _run_seq(self, run_id: int) -> int:
        return Run.objects.filter(pk=run_id).values_list("event_seq", flat=True).first() or 0

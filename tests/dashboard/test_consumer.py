"""The live-events websocket (/ws/events/) through the full ASGI application: who gets in,
what they may subscribe to, and that events arrive in sequence order.

Transactional tests: the consumer reads the database from another thread. Events are
published through orchestrator.events bound to the test's own event loop, so they are
delivered by the in-memory channel layer the tests run with. The tests are plain functions
that run their scenario with asyncio.run (see `live`)."""

from __future__ import annotations

import asyncio
import functools

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from orchestrator import events
from orchestrator.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def live(scenario):
    """Run an async test scenario on a fresh loop, with orchestrator.events bound to it and a
    clean in-memory channel layer before and after."""

    @functools.wraps(scenario)
    def test(*args, **kwargs):
        async def main():
            layer = get_channel_layer()
            await layer.flush()
            events.bind_loop(asyncio.get_running_loop())
            try:
                await scenario(*args, **kwargs)
            finally:
                events.sender.unbind()
                await layer.flush()

        asyncio.run(main())

    return test


async def connect(user=None, origin=ORIGIN):
    headers = [origin] if origin else []
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


def _publish_sequence(run):
    """A stage update, three log batches and a run update, in one order."""
    from orchestrator.models import Run, StageRun

    run = Run.objects.get(pk=run.pk)
    stage = StageRun.objects.filter(run=run).order_by("position").first()
    step = stage.steps.first()
    events.publish_stage(stage, run)
    for offset in (0, 2, 4):
        events.publish_log(step, run.pk, offset, [f"line {offset}", f"line {offset + 1}"])
    events.publish_run(run)
    return step.pk


@live
async def test_anonymous_is_refused():
    communicator, connected, code = await connect(None)
    assert not connected
    assert code == 4401
    await communicator.disconnect()


@live
async def test_a_foreign_origin_is_refused(developer):
    communicator, connected, _ = await connect(
        developer, origin=(b"origin", b"https://evil.example")
    )
    assert not connected
    await communicator.disconnect()


@live
async def test_hello_lists_only_visible_pipelines(developer, outsider, pipeline):
    communicator, connected, _ = await connect(developer)
    assert connected
    hello = await communicator.receive_json_from()
    assert hello == {"type": "hello", "pipelines": [pipeline.pk]}
    await communicator.disconnect()

    communicator, connected, _ = await connect(outsider)
    assert connected
    assert (await communicator.receive_json_from())["pipelines"] == []
    await communicator.disconnect()


@live
async def test_subscribing_to_an_invisible_run_is_refused(outsider, make_run):
    run = await database_sync_to_async(make_run)()
    communicator, connected, _ = await connect(outsider)
    await communicator.receive_json_from()  # hello
    await communicator.send_json_to({"subscribe": "run", "id": run.pk})
    reply = await communicator.receive_json_from()
    assert reply["type"] == "error" and reply["id"] == run.pk
    # ... and nothing of the run reaches them.
    await database_sync_to_async(_publish_sequence)(run)
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@pytest.mark.parametrize("bad", ["7", True, None, 1.5, [1]])
@live
async def test_malformed_subscriptions_are_refused(developer, bad):
    communicator, _, _ = await connect(developer)
    await communicator.receive_json_from()
    await communicator.send_json_to({"subscribe": "run", "id": bad})
    assert (await communicator.receive_json_from())["type"] == "error"
    await communicator.disconnect()


@live
async def test_events_arrive_in_sequence_order(developer, make_run):
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(developer)
    await communicator.receive_json_from()  # hello
    await communicator.send_json_to({"subscribe": "run", "id": run.pk})
    subscribed = await communicator.receive_json_from()
    assert subscribed["type"] == "subscribed" and subscribed["run"] == run.pk
    start = subscribed["seq"]

    step_id = await database_sync_to_async(_publish_sequence)(run)
    received = [await communicator.receive_json_from(timeout=2) for _ in range(5)]

    assert [e["type"] for e in received] == [
        "stage.updated",
        "log",
        "log",
        "log",
        "run.updated",
    ]
    assert [e["seq"] for e in received] == list(range(start + 1, start + 6))
    assert all(e["run"] == run.pk for e in received)
    logs = [e["data"] for e in received if e["type"] == "log"]
    assert [(d["step"], d["offset"]) for d in logs] == [(step_id, 0), (step_id, 2), (step_id, 4)]
    await communicator.disconnect()


def test_relayed_events_skip_the_database_thread(developer, make_run, monkeypatch):
    """Channels closes stale database connections in its one sync thread before every
    handler. Relaying an event never reads the database, so it skips that hop (with 200
    clients at 5 events/s it was 1,000 thread round trips a second through one thread);
    what comes from the browser still goes the usual way."""
    import channels.consumer

    calls = []
    original = channels.consumer.aclose_old_connections

    async def counting():
        calls.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counting)

    @live
    async def scenario():
        run = await database_sync_to_async(make_run)()
        communicator, _, _ = await connect(developer)
        await communicator.receive_json_from()  # hello
        await communicator.send_json_to({"subscribe": "run", "id": run.pk})
        await communicator.receive_json_from()  # subscribed
        before = len(calls)
        assert before >= 1  # the subscription (websocket.receive) went through it

        await database_sync_to_async(_publish_sequence)(run)
        received = [await communicator.receive_json_from(timeout=2) for _ in range(5)]
        assert len(received) == 5
        assert len(calls) == before
        await communicator.disconnect()

    scenario()


@live
async def test_a_transitions_batch_arrives_as_one_frame_per_event(developer, make_run):
    """A transition's status events travel as one channel-layer message (clearway.events,
    see orchestrator.events._Batch.deliver); the browser gets them one by one, in order."""
    from orchestrator import actions

    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(developer)
    await communicator.receive_json_from()  # hello
    await database_sync_to_async(actions.cancel_run)(run, actor=developer)
    received = []
    while True:
        event = await communicator.receive_json_from(timeout=2)
        received.append(event)
        if event["type"] == "run.updated":
            break
    seqs = [e["seq"] for e in received]
    assert len(received) > 1 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert received[-1]["data"]["status"] == "canceled"
    await communicator.disconnect()


@live
async def test_without_a_subscription_only_status_events_arrive(developer, make_run):
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(developer)
    await communicator.receive_json_from()
    await database_sync_to_async(_publish_sequence)(run)
    types = [(await communicator.receive_json_from(timeout=2))["type"] for _ in range(2)]
    assert types == ["stage.updated", "run.updated"]  # no log lines without subscribing
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


@live
async def test_revoked_access_stops_on_reconnect(make_user, team, make_run):
    """Permissions are decided on connect: a user removed from the team keeps nothing
    once they reconnect."""
    member = await database_sync_to_async(make_user)("tess", "developer", "team-payments")
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(member)
    assert (await communicator.receive_json_from())["pipelines"] == [run.pipeline_id]
    await communicator.disconnect()

    await database_sync_to_async(lambda: member.groups.remove(team.group))()
    communicator, connected, _ = await connect(member)
    assert connected
    assert (await communicator.receive_json_from())["pipelines"] == []
    await communicator.send_json_to({"subscribe": "run", "id": run.pk})
    assert (await communicator.receive_json_from())["type"] == "error"
    await database_sync_to_async(_publish_sequence)(run)
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@live
async def test_revoked_access_stops_at_once(make_user, team, make_run):
    """Removed from the team while connected: the consumer leaves the pipeline's group and
    the run's log stream right away and tells the page; nothing of that pipeline arrives."""
    member = await database_sync_to_async(make_user)("tess", "developer", "team-payments")
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(member)
    assert (await communicator.receive_json_from())["pipelines"] == [run.pipeline_id]
    await communicator.send_json_to({"subscribe": "run", "id": run.pk})
    assert (await communicator.receive_json_from())["type"] == "subscribed"

    await database_sync_to_async(lambda: member.groups.remove(team.group))()
    changed = await communicator.receive_json_from(timeout=2)
    assert changed == {"type": "access.changed", "pipelines": []}
    await database_sync_to_async(_publish_sequence)(run)  # status events and log lines
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


@live
async def test_granted_access_starts_at_once(make_user, team, make_run):
    """Added to the team while connected: the pipeline's events arrive without a reconnect."""
    newcomer = await database_sync_to_async(make_user)("nina", "developer")
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(newcomer)
    assert (await communicator.receive_json_from())["pipelines"] == []

    await database_sync_to_async(lambda: newcomer.groups.add(team.group))()
    changed = await communicator.receive_json_from(timeout=2)
    assert changed == {"type": "access.changed", "pipelines": [run.pipeline_id]}
    await database_sync_to_async(_publish_sequence)(run)
    types = [(await communicator.receive_json_from(timeout=2))["type"] for _ in range(2)]
    assert types == ["stage.updated", "run.updated"]
    await communicator.disconnect()


@live
async def test_an_object_permission_granted_to_the_user_counts_at_once(make_user, make_run):
    """django-guardian: view_pipeline on one pipeline, given to the user directly."""
    from guardian.shortcuts import assign_perm

    guest = await database_sync_to_async(make_user)("gus")  # no role, no team
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(guest)
    assert (await communicator.receive_json_from())["pipelines"] == []

    await database_sync_to_async(
        lambda: assign_perm("orchestrator.view_pipeline", guest, run.pipeline)
    )()
    changed = await communicator.receive_json_from(timeout=2)
    assert changed == {"type": "access.changed", "pipelines": [run.pipeline_id]}
    await communicator.disconnect()


@live
async def test_a_deactivated_user_is_disconnected_at_once(make_user, team, make_run):
    member = await database_sync_to_async(make_user)("dora", "developer", "team-payments")
    await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(member)
    await communicator.receive_json_from()  # hello

    def deactivate():
        member.is_active = False
        member.save()

    await database_sync_to_async(deactivate)()
    closed = await communicator.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": 4403}


@live
async def test_a_new_superuser_follows_every_pipeline_at_once(make_user, make_run):
    plain = await database_sync_to_async(make_user)("pat")  # no role, no team
    run = await database_sync_to_async(make_run)()
    communicator, _, _ = await connect(plain)
    assert (await communicator.receive_json_from())["pipelines"] == []

    def promote():
        plain.is_superuser = True
        plain.save(update_fields=["is_superuser"])

    await database_sync_to_async(promote)()
    changed = await communicator.receive_json_from(timeout=2)
    assert changed == {"type": "access.changed", "pipelines": [run.pipeline_id]}
    await communicator.disconnect()


def test_a_channel_layer_outage_closes_the_socket_with_one_log_line(
    developer, make_run, monkeypatch, caplog
):
    """Redis down: the consumer cannot join its groups. The socket is closed (the browser
    shows "reconnecting…" and retries) and the server logs one warning, not a traceback."""
    import redis.exceptions
    from channels.layers import InMemoryChannelLayer

    make_run()  # a pipeline dana may view: its group is joined on connect

    async def down(self, group, channel):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(InMemoryChannelLayer, "group_add", down)

    @live
    async def scenario():
        communicator, connected, code = await connect(developer)
        assert not connected and code == 1011
        await communicator.wait()  # the application ended without raising

    with caplog.at_level("WARNING", logger="dashboard.consumers"):
        scenario()
    warnings = [r for r in caplog.records if r.name == "dashboard.consumers"]
    assert len(warnings) == 1 and "channel layer unavailable" in warnings[0].getMessage()
    assert warnings[0].exc_info is None

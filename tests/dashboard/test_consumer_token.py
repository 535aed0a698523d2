"""The live-events websocket with an API token in the handshake's Authorization header (a
client that is not a browser): a `read` token signs it in as its user; a token without
`read`, expired or revoked, is refused — and revoking the token closes an open socket."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from governance import credentials, tokens
from governance.models import ApiToken, AuditEvent
from orchestrator.asgi import application

from .test_consumer import ORIGIN, _publish_sequence, live

pytestmark = pytest.mark.django_db(transaction=True)


def _issue(user, scopes):
    return tokens.issue(
        user, name="ws", scopes=scopes, expires_at=timezone.now() + timedelta(hours=1)
    )


async def connect_with(header: bytes, path: str = "/ws/events/"):
    headers = [ORIGIN, (b"authorization", header)]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


@live
async def test_a_read_token_connects_and_follows_what_its_user_sees(make_run):
    run = await database_sync_to_async(make_run)()
    developer = await database_sync_to_async(lambda: run.triggered_by)()
    _, raw = await database_sync_to_async(_issue)(developer, ["read"])
    communicator, connected, _ = await connect_with(f"Bearer {raw}".encode())
    assert connected
    hello = await communicator.receive_json_from()
    assert hello == {"type": "hello", "pipelines": [run.pipeline_id]}
    await communicator.send_json_to({"subscribe": "run", "id": run.pk})
    assert (await communicator.receive_json_from())["type"] == "subscribed"
    await database_sync_to_async(_publish_sequence)(run)
    assert (await communicator.receive_json_from(timeout=2))["run"] == run.pk
    await communicator.disconnect()


@live
async def test_a_token_without_read_is_refused_and_audited(make_run):
    run = await database_sync_to_async(make_run)()
    developer = await database_sync_to_async(lambda: run.triggered_by)()
    _, raw = await database_sync_to_async(_issue)(developer, ["trigger"])
    communicator, connected, code = await connect_with(f"Bearer {raw}".encode())
    assert not connected and code == 4403
    event = await database_sync_to_async(
        lambda: AuditEvent.objects.get(action="token.scope_denied")
    )()
    assert event.details["needed"] == "read" and event.details["method"] == "WEBSOCKET"


@live
async def test_unknown_expired_and_revoked_tokens_are_refused(make_run):
    run = await database_sync_to_async(make_run)()
    developer = await database_sync_to_async(lambda: run.triggered_by)()
    for header in (b"Bearer cw_00000000_" + b"x" * 43, b"Bearer nonsense", b"Basic abc"):
        _, connected, code = await connect_with(header)
        assert not connected and code == 4401, header
    token, raw = await database_sync_to_async(_issue)(developer, ["read"])
    await database_sync_to_async(
        lambda: ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    )()
    _, connected, code = await connect_with(f"Bearer {raw}".encode())
    assert not connected and code == 4401
    refused = await database_sync_to_async(lambda: AuditEvent.objects.get(action="token.refused"))()
    assert refused.details == {"reason": "revoked"}


@live
async def test_revoking_the_token_closes_the_open_socket(make_run):
    run = await database_sync_to_async(make_run)()
    developer = await database_sync_to_async(lambda: run.triggered_by)()
    token, raw = await database_sync_to_async(_issue)(developer, ["read"])
    communicator, connected, _ = await connect_with(f"Bearer {raw}".encode())
    assert connected
    await communicator.receive_json_from()  # hello
    await database_sync_to_async(
        lambda: credentials.revoke_api_token(actor=developer, token=token)
    )()
    closed = await communicator.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": 4401}

"""Websocket authentication by API token, for clients that are not a browser.

A client sends `Authorization: Bearer cw_…` with the websocket handshake; a token with the
`read` scope then signs the connection in as its user, instead of the session cookie.
Header only, never the URL: a query string ends up in access logs and proxy logs. (Browsers
cannot set handshake headers; they use their session, as before.) A token that is unknown,
expired, revoked, or lacks `read` closes the connection with 4401 / 4403 before it is
accepted; expired, revoked and beyond-scope uses are audited (governance.tokens).
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from governance import tokens


def _bearer(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            kind, _, raw = value.decode("latin-1").partition(" ")
            if kind.lower() in ("bearer", "token"):
                return raw.strip()
            return ""
    return None


@database_sync_to_async
def _authenticate(raw: str, path: str):
    """(user, token, None) or (None, token-or-None, close code)."""
    try:
        token = tokens.authenticate(raw)
    except tokens.TokenRefused as exc:
        return None, exc.token, 4401
    if tokens.READ not in token.scopes:
        tokens.scope_refused(token, tokens.READ, method="WEBSOCKET", path=path)
        return None, token, 4403
    return token.user, token, None


class TokenAuthMiddleware:
    """Inside channels' AuthMiddlewareStack: a handshake with an Authorization header is
    decided by the token alone (the session, if any, is ignored)."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        raw = _bearer(scope) if scope.get("type") == "websocket" else None
        if raw is None:
            return await self.inner(scope, receive, send)
        user, token, code = await _authenticate(raw, scope.get("path", ""))
        if code is not None:
            await receive()  # the websocket.connect message
            await send({"type": "websocket.close", "code": code})
            return None
        scope = dict(scope, user=user, token=token)
        return await self.inner(scope, receive, send)

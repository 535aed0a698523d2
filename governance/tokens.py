"""API tokens: how they are made, stored, found and checked (docs/security.md "API tokens").

A token is `cw_<prefix>_<secret>`: `prefix` is 8 random hex characters, public, stored in
clear to find the row and shown to tell tokens apart; `secret` is 256 random bits. The
database holds only the SHA-256 digest of the whole token — a high-entropy secret needs no
slow hash, and a digest cannot be used to authenticate — so a copy of the database holds no
usable token. The token is shown once, by the page or endpoint that created it.

The verbs that create and revoke tokens (audited) are in governance.credentials; this module
has no opinion on who may do what, except the rules every token obeys: known scopes, an
expiry no further than CLEARWAY_TOKEN_MAX_DAYS, and at most APPROVE_MAX_HOURS for a token
that can approve.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from . import audit
from .models import ApiToken, Outcome, TokenScope

logger = logging.getLogger(__name__)

SCOPES: tuple[str, ...] = tuple(TokenScope.values)
READ, TRIGGER, APPROVE, POLICY, ADMIN = SCOPES
APPROVE_MAX_HOURS = 24
# last_used_at is written at most this often per token: one UPDATE a minute, not one a request.
TOUCH_EVERY = timedelta(seconds=60)

_FORMAT = re.compile(r"^cw_(?P<prefix>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43})$")
_LEGACY = re.compile(r"^[0-9a-f]{40}$")  # DRF authtoken's keys, invalidated by 0012


class TokenRefused(Exception):
    """The token cannot authenticate: unknown, malformed, expired or revoked (HTTP 401)."""

    def __init__(self, message: str, token: ApiToken | None = None):
        super().__init__(message)
        self.message = message
        self.token = token


def max_lifetime() -> timedelta:
    return timedelta(days=settings.CLEARWAY_TOKEN_MAX_DAYS)


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate() -> tuple[str, str]:
    """A new token and its prefix."""
    prefix = secrets.token_hex(4)
    return f"cw_{prefix}_{secrets.token_urlsafe(32)}", prefix


def problems(name: str, scopes, expires_at: datetime | None, now: datetime) -> list[str]:
    """What is wrong with a token request, each with how to fix it; [] if nothing."""
    found = []
    if not (name or "").strip():
        found.append("name the token (what uses it, e.g. 'release script')")
    elif len(name.strip()) > 100:
        found.append("the name is longer than 100 characters")
    scopes = list(scopes or [])
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        found.append(f"unknown scope {', '.join(map(repr, unknown))}; use {', '.join(SCOPES)}")
    elif not scopes:
        found.append(f"choose at least one scope ({', '.join(SCOPES)})")
    if expires_at is None:
        found.append("choose when the token expires")
    elif expires_at <= now:
        found.append("the expiry is in the past; choose a later one")
    else:
        if expires_at > now + max_lifetime():
            found.append(
                f"a token lives at most {settings.CLEARWAY_TOKEN_MAX_DAYS} days "
                "(CLEARWAY_TOKEN_MAX_DAYS); choose an earlier expiry"
            )
        if APPROVE in scopes and expires_at > now + timedelta(hours=APPROVE_MAX_HOURS):
            found.append(
                f"a token with the approve scope lives at most {APPROVE_MAX_HOURS} hours; "
                "choose an earlier expiry"
            )
    return found


def issue(
    user, *, name: str, scopes, expires_at: datetime, now: datetime | None = None
) -> tuple[ApiToken, str]:
    """Store a new token for `user` and return it with its clear text (to show once).
    Raises ValueError with every problem of the request. Not audited: callers are the verbs
    of governance.credentials (and test set-ups)."""
    now = now or timezone.now()
    found = problems(name, scopes, expires_at, now)
    if found:
        raise ValueError("; ".join(found))
    raw, prefix = generate()
    token = ApiToken.objects.create(
        user=user,
        name=name.strip(),
        prefix=prefix,
        digest=digest(raw),
        scopes=[s for s in SCOPES if s in set(scopes)],
        created_at=now,
        expires_at=expires_at,
    )
    return token, raw


def authenticate(raw: str, now: datetime | None = None) -> ApiToken:
    """The live token `raw` names, with its user; raises TokenRefused with a clear message.
    An expired or revoked token's use is audited (against its owner); an unknown token is
    only logged, so that a flood of guesses cannot flood the audit log."""
    now = now or timezone.now()
    match = _FORMAT.match(raw or "")
    if not match:
        if _LEGACY.match(raw or ""):
            raise TokenRefused(
                "this is an old-style API token, invalidated by the upgrade to named tokens; "
                "create a new one on /accounts/tokens/"
            )
        raise TokenRefused("malformed API token: expected cw_<prefix>_<secret>")
    wanted = digest(raw)
    token = next(
        (
            t
            for t in ApiToken.objects.select_related("user").filter(prefix=match["prefix"])
            if hmac.compare_digest(t.digest, wanted)
        ),
        None,
    )
    if token is None:
        logger.warning("API token refused: unknown token cw_%s_…", match["prefix"])
        raise TokenRefused("unknown API token")
    state = token.state(now)
    if state != "active" or not token.user.is_active:
        if state == "revoked":
            message = (
                f"API token {token.name!r} was revoked on {token.revoked_at:%Y-%m-%d %H:%M} UTC"
            )
        elif state == "expired":
            message = f"API token {token.name!r} expired on {token.expires_at:%Y-%m-%d %H:%M} UTC"
        else:
            message = f"API token {token.name!r} belongs to a deactivated account"
        audit.record(
            token.user,
            "token.refused",
            token,
            outcome=Outcome.DENIED,
            reason=state if state != "active" else "inactive user",
        )
        raise TokenRefused(message + "; create a new one on /accounts/tokens/", token)
    touch(token, now)
    return token


def touch(token: ApiToken, now: datetime) -> None:
    """Record the use, at most once a minute per token (one UPDATE, no read)."""
    if token.last_used_at is None or now - token.last_used_at >= TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now


def scope_refused(token: ApiToken, needed: str, *, method: str, path: str) -> str:
    """Audit a use of `token` beyond its scopes; return the message for the 403."""
    audit.record(
        token.user,
        "token.scope_denied",
        token,
        outcome=Outcome.DENIED,
        needed=needed,
        scopes=token.scopes,
        method=method,
        path=path[:200],
    )
    return (
        f"API token {token.name!r} has the scopes {', '.join(token.scopes)}; "
        f"{method} {path} needs the {needed!r} scope. Create a token with that scope on "
        "/accounts/tokens/"
    )

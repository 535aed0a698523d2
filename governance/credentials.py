"""The verbs of credentials: API tokens, step-up, sessions. Each is atomic and audited; a
refused attempt is audited too (docs/security.md "API tokens" and "Sessions").

Beside governance.actions in the verbs layer, so that identity work (the OIDC and MFA parts
of issue 15) has its own place.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from importlib import import_module

from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone

from orchestrator import events

from . import audit, stepup, tokens
from .client_ip import client_ip
from .models import ApiToken, Outcome, StepUp, UserSession

logger = logging.getLogger(__name__)


class CredentialRefused(Exception):
    """A refused credential change: `message` says why and how to fix it (HTTP 400/403)."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.message = message
        self.status_code = status_code


# --- API tokens -------------------------------------------------------------------------


def create_api_token(
    *,
    actor,
    name: str,
    scopes,
    expires_at: datetime | None,
    session_key: str | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new named token for `actor`; returns it with its clear text, to show once (the
    audit row names the token, never its secret). A token with the `approve` scope needs a
    step-up in this session within CLEARWAY_STEP_UP_MINUTES (governance.stepup)."""
    now = now or timezone.now()
    scopes = list(scopes or [])
    found = tokens.problems(name, scopes, expires_at, now)
    if not found and tokens.APPROVE in scopes:
        if not stepup.recent_step_up(actor, now, session_key=session_key):
            found = [
                "a token with the approve scope can be created only right after you "
                f"confirm your password (within {settings.CLEARWAY_STEP_UP_MINUTES} "
                "minutes, in this browser); confirm it and try again"
            ]
    if found:
        # Audited on its own: the refusal must not roll back with a caller's transaction.
        audit.record(
            actor,
            "token.create",
            ("apitoken", "", (name or "")[:100]),
            outcome=Outcome.DENIED,
            reason="; ".join(found),
            scopes=[str(s)[:20] for s in scopes[:10]],
        )
        raise CredentialRefused("; ".join(found), 403 if "confirm" in found[0] else 400)
    with transaction.atomic():
        token, raw = tokens.issue(actor, name=name, scopes=scopes, expires_at=expires_at, now=now)
        audit.record(
            actor,
            "token.create",
            token,
            scopes=token.scopes,
            expires_at=token.expires_at.isoformat(),
            prefix=token.prefix,
        )
    return token, raw


def revoke_api_token(*, actor, token: ApiToken, now: datetime | None = None) -> bool:
    """Revoke `token` (its owner, or a superuser); False if it was already revoked."""
    now = now or timezone.now()
    if token.user_id != actor.pk and not actor.is_superuser:
        audit.record(actor, "token.revoke", token, outcome=Outcome.DENIED, reason="not yours")
        raise CredentialRefused("you may revoke only your own tokens", 403)
    with transaction.atomic():
        changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=now, revoked_by=actor
        )
        if not changed:
            return False
        token.revoked_at, token.revoked_by = now, actor
        audit.record(actor, "token.revoke", token, owner=token.user.get_username())
        # A websocket signed in with the token closes at once (dashboard.consumers).
        events.publish_access_changed([token.user_id])
    return True


def revoke_all_api_tokens(*, actor, now: datetime | None = None) -> int:
    """Revoke every live token of `actor`; the number revoked."""
    now = now or timezone.now()
    with transaction.atomic():
        live = list(ApiToken.objects.filter(user=actor, revoked_at__isnull=True))
        for token in live:
            revoke_api_token(actor=actor, token=token, now=now)
    return len(live)


# --- step-up ----------------------------------------------------------------------------


def record_step_up(*, actor, method: str, session_key: str, now: datetime | None = None) -> StepUp:
    """`actor` just proved again who they are (the caller checked the proof)."""
    now = now or timezone.now()
    with transaction.atomic():
        proof = StepUp.objects.create(user=actor, method=method, session_key=session_key, at=now)
        audit.record(actor, "auth.step_up", actor, method=method)
    return proof


def step_up_refused(*, actor, method: str, reason: str) -> None:
    audit.record(actor, "auth.step_up", actor, outcome=Outcome.DENIED, method=method, reason=reason)


# --- sessions ---------------------------------------------------------------------------

# Session keys (governance.middleware.SessionLifetimeMiddleware): Unix seconds of the sign-in
# and of the last request.
SESSION_STARTED = "cw_started"
SESSION_SEEN = "cw_seen"


def on_login(sender, request, user, **kwargs) -> None:
    """user_logged_in (connected in governance.apps): start the session's clocks and
    remember the session for "sign out everywhere"."""
    session = getattr(request, "session", None)
    if session is None:
        return
    now = time.time()
    session[SESSION_STARTED] = now
    session[SESSION_SEEN] = now
    if session.session_key is None:
        session.save()
    session_started(user=user, session_key=session.session_key, ip=client_ip(request))


def session_started(*, user, session_key: str, ip: str | None, now: datetime | None = None):
    """Remember a signed-in session, so that "sign out everywhere" finds it."""
    UserSession.objects.update_or_create(
        session_key=session_key,
        defaults={"user": user, "ip": ip, "created_at": now or timezone.now(), "ended_at": None},
    )


def end_session(*, user, session_key: str, reason: str, now: datetime | None = None) -> None:
    """A session ended by the server (idle timeout, absolute lifetime): audited."""
    now = now or timezone.now()
    with transaction.atomic():
        UserSession.objects.filter(session_key=session_key, ended_at__isnull=True).update(
            ended_at=now, end_reason=reason
        )
        audit.record(user, "session.expired", user, reason=reason)


def sign_out_everywhere(*, actor, revoke_tokens: bool = False, now: datetime | None = None) -> dict:
    """End every session of `actor`, this one included. API tokens stay valid unless
    `revoke_tokens`. Returns the counts."""
    now = now or timezone.now()
    store = import_module(settings.SESSION_ENGINE).SessionStore
    with transaction.atomic():
        keys = set(
            UserSession.objects.filter(user=actor, ended_at__isnull=True).values_list(
                "session_key", flat=True
            )
        )
        if settings.SESSION_ENGINE.endswith(("sessions.backends.db", "backends.cached_db")):
            # Sessions signed in before UserSession existed: found by their content.
            for session in Session.objects.filter(expire_date__gt=now).iterator():
                if session.get_decoded().get("_auth_user_id") == str(actor.pk):
                    keys.add(session.session_key)
        for key in keys:
            store(session_key=key).delete()
        UserSession.objects.filter(session_key__in=keys, ended_at__isnull=True).update(
            ended_at=now, end_reason="signed out everywhere"
        )
        revoked = revoke_all_api_tokens(actor=actor, now=now) if revoke_tokens else 0
        audit.record(
            actor, "session.sign_out_everywhere", actor, sessions=len(keys), tokens_revoked=revoked
        )
    return {"sessions": len(keys), "tokens_revoked": revoked}

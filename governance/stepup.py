"""Step-up: has the user proved again, very recently, that they are who the session says?

The hook every "release or weaken a control" action asks. Today the only proof is the
password, re-entered on the page that asks for it (creating an `approve`-scope token); the
MFA issue (#15 part 2) replaces it with a second factor (TOTP, WebAuthn) recorded as further
StepUp methods, and `recent_step_up` then decides which methods count. Callers keep calling
`recent_step_up(user, now, session_key=...)`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from .models import StepUp


def window() -> timedelta:
    return timedelta(minutes=settings.CLEARWAY_STEP_UP_MINUTES)


def recent_step_up(user, now: datetime, *, session_key: str | None = None) -> bool:
    """True if `user` stepped up within the last CLEARWAY_STEP_UP_MINUTES — in the session
    `session_key` when one is given (a proof made in one browser does not count in another)."""
    if user is None or not user.is_authenticated:
        return False
    qs = StepUp.objects.filter(user=user, at__gt=now - window(), at__lte=now)
    if session_key is not None:
        qs = qs.filter(session_key=session_key)
    return qs.exists()

"""Request-scoped context for the audit log, and the Content-Security-Policy header."""

from __future__ import annotations

import secrets
import time
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.core.exceptions import DisallowedHost
from django.utils.functional import SimpleLazyObject

from orchestrator import logcontext

from . import credentials
from .audit import request_context
from .client_ip import client_ip


class RequestContextMiddleware:
    """Gives every request an id (echoed in X-Request-ID) and makes it and the client address
    available to governance.audit.record and to every log record. The address is decided by
    governance.client_ip: the socket's peer, or what a trusted proxy says it saw — never a
    header from anyone else."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = uuid.uuid4().hex
        request.request_id = request_id
        token = request_context.set({"request_id": request_id, "ip": client_ip(request)})
        log_token = logcontext.bind_token(request_id=request_id)
        try:
            response = self.get_response(request)
        finally:
            logcontext.reset(log_token)
            request_context.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ContentSecurityPolicyMiddleware:
    """A strict CSP: scripts only from this origin or with the per-request nonce; no inline
    event handlers, no eval; websockets only to this site (`'self'` does not cover ws: and
    wss: in every browser, so the site's own ws(s)://host is named, and no other host).

    Styles come from this origin only. A view whose page needs a <style> element written by
    a script (CodeMirror's style-mod in the policy editor) sets `request.csp_style_nonce =
    True`: that response's style-src also accepts <style> elements carrying the request's
    nonce. Style attributes stay blocked either way (a nonce never covers them)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.csp_nonce = secrets.token_urlsafe(16)
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = (
                "default-src 'self'; "
                f"script-src 'self' 'nonce-{request.csp_nonce}'; "
                f"style-src {_style_sources(request)}; "
                "img-src 'self' data:; "
                f"connect-src 'self' {_websocket_origin(request)}; "
                "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
            )
        return response


def _style_sources(request) -> str:
    if getattr(request, "csp_style_nonce", False):
        return f"'self' 'nonce-{request.csp_nonce}'"
    return "'self'"


def _websocket_origin(request) -> str:
    # get_host() is validated against ALLOWED_HOSTS, so it cannot smuggle other sources in.
    try:
        host = request.get_host()
    except DisallowedHost:
        return ""
    return f"{'wss' if request.is_secure() else 'ws'}://{host}"


SESSION_STARTED, SESSION_SEEN = credentials.SESSION_STARTED, credentials.SESSION_SEEN
SEEN_EVERY = 60  # the last request time is written at most once a minute (one session save)


class SessionLifetimeMiddleware:
    """Ends a signed-in browser session that was idle longer than
    CLEARWAY_SESSION_IDLE_MINUTES, or is older than CLEARWAY_SESSION_MAX_HOURS, and audits
    why (governance.credentials.end_session). The request then goes on signed out (pages
    send it to the login page, the API answers 401/403).

    Times are kept in the session itself (server side); the session is bound to nothing a
    client or proxy sends — not the address, not X-Forwarded-For, not the User-Agent — so
    a proxy cannot spoof its way in, nor sign people out by changing a header."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Decided when something first asks who the user is (as AuthenticationMiddleware
        # itself is lazy): a request that never does (/healthz) reads no session.
        original = request.user
        request.user = SimpleLazyObject(lambda: self._checked(request, original))
        response = self.get_response(request)
        session = request.session
        if (
            session.accessed
            and SESSION_STARTED not in session
            and "_auth_user_id" in session
            and session.session_key
        ):
            # A session signed in before this middleware existed (sign-in itself starts the
            # clocks: credentials.on_login).
            now = time.time()
            session[SESSION_STARTED] = now
            session[SESSION_SEEN] = now
            credentials.session_started(
                user=request.user, session_key=session.session_key, ip=client_ip(request)
            )
        return response

    def _checked(self, request, original):
        authenticated = original.is_authenticated  # evaluates AuthenticationMiddleware's lazy user
        user = getattr(original, "_wrapped", original)
        if not authenticated:
            return user
        session = request.session
        started = session.get(SESSION_STARTED)
        if started is None:
            return user
        now = time.time()
        seen = session.get(SESSION_SEEN, started)
        reason = None
        if now - started > settings.CLEARWAY_SESSION_MAX_HOURS * 3600:
            reason = "absolute"
        elif now - seen > settings.CLEARWAY_SESSION_IDLE_MINUTES * 60:
            reason = "idle"
        if reason is None:
            if now - seen >= SEEN_EVERY:
                session[SESSION_SEEN] = now
            return user
        credentials.end_session(user=user, session_key=session.session_key, reason=reason)
        request.user = user  # logout() asks who is signed in: not this lazy object again
        logout(request)
        messages.info(
            request,
            "Your session ended: "
            + (
                f"you were away more than {settings.CLEARWAY_SESSION_IDLE_MINUTES} minutes."
                if reason == "idle"
                else f"sessions last at most {settings.CLEARWAY_SESSION_MAX_HOURS} hours."
            )
            + " Sign in again.",
            fail_silently=True,
        )
        return request.user

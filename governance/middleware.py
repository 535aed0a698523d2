"""Request-scoped context for the audit log, and the Content-Security-Policy header."""

from __future__ import annotations

import secrets
import uuid

from django.core.exceptions import DisallowedHost

from orchestrator import logcontext

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

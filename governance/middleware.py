"""Request-scoped context for the audit log, and the Content-Security-Policy header."""

from __future__ import annotations

import secrets
import uuid

from .audit import request_context


class RequestContextMiddleware:
    """Gives every request an id (echoed in X-Request-ID) and makes it and the client address
    available to governance.audit.record. The address is REMOTE_ADDR: a proxy in front must
    set it (uvicorn --proxy-headers), never a header a client can spoof."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = uuid.uuid4().hex
        request.request_id = request_id
        token = request_context.set(
            {"request_id": request_id, "ip": request.META.get("REMOTE_ADDR") or None}
        )
        try:
            response = self.get_response(request)
        finally:
            request_context.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ContentSecurityPolicyMiddleware:
    """A strict CSP: scripts only from this origin or with the per-request nonce; no inline
    event handlers, no eval."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.csp_nonce = secrets.token_urlsafe(16)
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = (
                "default-src 'self'; "
                f"script-src 'self' 'nonce-{request.csp_nonce}'; "
                "style-src 'self'; "
                "img-src 'self' data:; "
                "connect-src 'self' ws: wss:; "
                "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
            )
        return response

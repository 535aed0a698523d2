"""API authentication by named, scoped tokens, and the one scope check of the API.

`Authorization: Bearer cw_…` (or `Token cw_…`, the header DRF's tokens used). An expired,
revoked or unknown token is a 401 with the reason. A token authenticates as its user, and
may do at most what its user may and what its scopes allow.

Every API view says which scope each of its requests needs, in `token_scopes`:

    token_scopes = {"runs": "trigger", "cancel": "trigger"}   # action -> scope

Safe methods (GET, HEAD, OPTIONS) need `token_scopes.get("safe", "read")`; any other method
needs the scope named for the view's action, else `token_scopes.get("unsafe", "admin")`. A
view that declares nothing needs `admin` for everything (fail closed), and
tests/governance/test_token_scope_declared.py lists every API view without a declaration.
Session-authenticated requests (the browser) are not scope-limited.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS, BasePermission

from . import tokens
from .models import ApiToken

KEYWORDS = (b"bearer", b"token")


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in KEYWORDS:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "invalid Authorization header: expected 'Bearer <token>'"
            )
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("malformed API token")
        try:
            token = tokens.authenticate(raw)
        except tokens.TokenRefused as exc:
            raise exceptions.AuthenticationFailed(exc.message)
        return token.user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The token scheme in the OpenAPI schema."""

    target_class = ApiTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A named API token (/accounts/tokens/): `Authorization: Bearer "
            "cw_…`. It may do what its user may, within its scopes (read, trigger, approve, "
            "policy, admin).",
        }


def required_scope(view, method: str) -> str:
    """The scope a token needs for `method` on `view` (see the module docstring)."""
    declared = getattr(view, "token_scopes", None)
    if declared is None:
        return tokens.ADMIN
    if method in SAFE_METHODS:
        return declared.get("safe", tokens.READ)
    action = getattr(view, "action", None)
    return declared.get(action) or declared.get("unsafe", tokens.ADMIN)


def request_token(request) -> ApiToken | None:
    """The API token the request authenticated with (None: a session)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) else None


class TokenScope(BasePermission):
    """A token-authenticated request passes only if the token has the scope the view needs;
    a refusal is a 403 saying which scope, and is audited."""

    def has_permission(self, request, view):
        token = request_token(request)
        if token is None:
            return True
        needed = required_scope(view, request.method)
        if needed in token.scopes:
            return True
        raise exceptions.PermissionDenied(
            tokens.scope_refused(token, needed, method=request.method, path=request.path)
        )

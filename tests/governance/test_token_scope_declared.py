"""Every API view declares the scope its requests need (governance/api_auth.py); a view
that does not is admin-only for tokens (fail closed), and this test names it."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.views import APIView

from governance.api_auth import TokenScope, required_scope


def _api_views(resolver=None, prefix=""):
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _api_views(entry, route)
        elif isinstance(entry, URLPattern) and route.startswith("api/v1/"):
            cls = getattr(entry.callback, "cls", None) or getattr(
                entry.callback, "view_class", None
            )
            if cls is not None and issubclass(cls, APIView):
                yield route, cls


def test_every_api_view_declares_its_scopes_and_checks_them():
    views = list(_api_views())
    assert len(views) > 20
    undeclared = sorted({r for r, cls in views if getattr(cls, "token_scopes", None) is None})
    unchecked = sorted(
        {
            r
            for r, cls in views
            if cls.permission_classes and TokenScope not in cls.permission_classes
        }
    )
    # The token endpoint takes credentials in its body, not a token.
    undeclared = [r for r in undeclared if r != "api/v1/auth/token/"]
    unchecked = [r for r in unchecked if r != "api/v1/auth/token/"]
    assert not undeclared, f"declare token_scopes on: {undeclared}"
    assert not unchecked, f"TokenScope missing from permission_classes of: {unchecked}"


def test_an_undeclared_view_needs_admin():
    class Undeclared:
        action = "list"

    class Declared:
        action = "approve"
        token_scopes = {"approve": "approve"}

    assert required_scope(Undeclared(), "GET") == "admin"
    assert required_scope(Undeclared(), "POST") == "admin"
    assert required_scope(Declared(), "GET") == "read"
    assert required_scope(Declared(), "POST") == "approve"
    Declared.action = "other"
    assert required_scope(Declared(), "POST") == "admin"

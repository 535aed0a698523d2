"""REST API v1 for environments, gates, policies, the audit log and reports.

Each area lives in its own module (api_gates, api_policies, api_audit, api_reports) and is
registered on the shared /api/v1/ router here."""

from __future__ import annotations

import importlib

extra_urlpatterns: list = []

_AREAS = ("api_gates", "api_policies", "api_audit", "api_reports", "api_secrets")


def register(router) -> None:
    """Add every area's viewsets (and plain URL patterns) to the shared router."""
    for name in _AREAS:
        try:
            module = importlib.import_module(f"governance.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"governance.{name}":
                raise
            continue
        module.register(router)
        extra_urlpatterns.extend(getattr(module, "urlpatterns", []))

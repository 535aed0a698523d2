"""REST API v1 for environments, gates, policies, the audit log and reports.

Each area lives in its own module (api_gates, api_policies, api_audit, api_reports,
api_secrets, api_delegations) and is
registered on the shared /api/v1/ router here."""

from __future__ import annotations

from . import (
    api_audit,
    api_change_requests,
    api_delegations,
    api_gates,
    api_policies,
    api_reports,
    api_secrets,
)

_AREAS = (
    api_gates,
    api_policies,
    api_audit,
    api_reports,
    api_secrets,
    api_change_requests,
    api_delegations,
)

extra_urlpatterns: list = [
    pattern for area in _AREAS for pattern in getattr(area, "urlpatterns", [])
]


def register(router) -> None:
    """Add every area's viewsets to the shared router."""
    for area in _AREAS:
        area.register(router)

"""REST API v1 for environments, gates, policies, the audit log and reports."""

from __future__ import annotations

extra_urlpatterns: list = []


def register(router) -> None:
    """Add this app's viewsets to the shared /api/v1/ router."""

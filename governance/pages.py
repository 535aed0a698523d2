"""Governance pages: policies (editor, tests, dry-run, versions), environments, audit log."""

from __future__ import annotations

urlpatterns: list = []

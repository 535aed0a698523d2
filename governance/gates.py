"""The gate hook the engine calls for a stage that targets a protected environment.

Placeholder until the governance gate logic lands: every gate opens at once."""

from __future__ import annotations


def check(stage_run, *, now=None) -> tuple[str, str]:
    """Return ("open" | "waiting" | "refused", reason)."""
    return "open", ""

"""Fixtures for the governance tests: small Rego v1 policies and a run waiting at its gate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

# A Tuesday, 10:00 UTC: inside the usual change windows, outside any freeze.
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

FREEZE = """package clearway.t

deny contains msg if { input.environment.in_freeze; msg := "frozen" }
"""

OUTSIDE_WINDOW = """package clearway.window

deny contains msg if {
    not input.environment.in_change_window
    msg := "outside the change windows"
}
"""

NEEDS_TICKET = """package clearway.ticket

deny contains "no change ticket" if { not input.run.parameters.ticket }
"""

BRANCH_WARNING = """package clearway.branch

warn contains msg if {
    input.run.parameters.version == "1.0.0"
    msg := "version 1.0.0 again?"
}
"""

# Like the demo's prod-approvals: a hard-mandatory policy that more approvals can satisfy.
TWO_SRE = """package clearway.two_sre

sre contains a.username if {
    some a in input.approvals
    a.decision == "approve"
    "sre" in a.groups
}

deny contains msg if {
    count(sre) < 2
    msg := sprintf("needs 2 sre approvals, has %d", [count(sre)])
}
"""

BROKEN = """package clearway.broken

deny contains msg if {
    x := to_number("not a number")
    msg := sprintf("%v", [x])
}
"""


@pytest.fixture
def t0():
    return T0


@pytest.fixture
def gate(run_at_gate, t0):
    """The production gate of a run triggered by dana at T0 (no policies)."""
    run, gate = run_at_gate(now=t0)
    return gate


@pytest.fixture
def approvers(approver, second_approver, security_approver):
    """The three people whose approvals open the production gate (sam, sara: sre; sofia:
    security)."""
    return [approver, second_approver, security_approver]


@pytest.fixture
def freezes_block(production):
    """Production lets its policies decide during a freeze (freeze_mode "block") instead of
    pausing its gates: the freeze policy blocks."""
    production.freeze_mode = "block"
    production.save(update_fields=["freeze_mode"])
    return production

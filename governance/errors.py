"""Refusals of gate actions, each with a message for the person who asked and the rule that
refused (audit details), and the HTTP status the API answers with."""

from __future__ import annotations


class GateError(Exception):
    """A refused gate action, with a message for the person who asked. `status_code` is the
    HTTP status the API answers with; `rule` names the rule that refused (audit details)."""

    status_code = 409
    rule = ""

    def __init__(self, message: str, *, rule: str = ""):
        super().__init__(message)
        self.message = message
        if rule:
            self.rule = rule


class GateRefused(GateError):
    """The actor may not do this (permission, eligibility, separation of duties)."""

    status_code = 403
    rule = "permission"


class GateConflict(GateError):
    """The gate is not in a state that allows it (already decided, duplicate decision)."""

    status_code = 409
    rule = "state"


class GateInputError(Exception):
    """The policy input document cannot be built (e.g. a malformed freeze window)."""


class GateInvalid(GateError):
    """The request itself is incomplete (missing comment, short justification)."""

    status_code = 400
    rule = "input"

"""Columns, formats, chunk sizes and the audit actions reports look for."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

CHUNK_SIZE = 500

AUDIT_CHUNK_SIZE = 2000

FLUSH_BYTES = 64 * 1024

# Audit actions the gate verbs write (governance/actions.py). A denied "approve" is a refused
# approval attempt, e.g. separation of duties.
APPROVE_ACTIONS = ("gate.approve",)

REJECT_ACTIONS = ("gate.reject",)

OVERRIDE_ACTIONS = ("gate.override",)

# Policy changes that alter what gates evaluate (drafts do not: gates use published versions).
POLICY_CHANGE_ACTIONS = ("policy.publish", "policy.enable", "policy.disable", "policy.update")

POLICY_SCOPE_FIELDS = ("environments", "tiers", "enabled")

SOD_WORDS = ("separation of duties", "self-approval")

CHANGE_FORMATS = ("csv", "json")

AUDIT_FORMATS = ("csv", "ndjson")

CHANGE_COLUMNS = [
    "change_id",
    "url",
    "requested_at",
    "pipeline",
    "team",
    "run_number",
    "pipeline_version",
    "version",
    "commit",
    "branch",
    "environment",
    "tier",
    "requested_by",
    "trigger",
    "reason",
    "gate_status",
    "approvals",
    "approvals_required",
    "approvals_given",
    "separation_of_duties",
    "policy_decisions",
    "overrides",
    "exceptions",
    "started",
    "finished",
    "outcome",
    "sandboxed",
    "secrets",
    "artifacts",
    "related_run",
    "audit_seq_first",
    "audit_seq_last",
]

EXCEPTION_COLUMNS = [
    "kind",
    "at",
    "change_id",
    "url",
    "subject",
    "actor",
    "detail",
    "audit_seq",
]

AUDIT_COLUMNS = [
    "seq",
    "at",
    "actor_id",
    "actor_name",
    "action",
    "target_type",
    "target_id",
    "target_name",
    "outcome",
    "details",
    "request_id",
    "ip",
    "prev_hash",
    "hash",
]

EXCEPTION_KINDS = {
    "override": "Override (break-glass)",
    "gate-rejected": "Gate rejected",
    "gate-blocked": "Gate blocked by policy",
    "failed-deployment": "Failed production deployment",
    "refused-approval": "Refused approval attempt",
    "refused-override": "Refused override attempt",
    "expired-approval": "Approval counted after it expired",
    "policy-change": "Policy changed during the period",
}

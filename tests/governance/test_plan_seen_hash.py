"""The approval's seen hash covers the plan: an approval given on one plan is void when the
artifact changes after it, and a client that shows the old plan cannot approve the new one."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.base import ContentFile

from governance import actions, gates
from governance.models import AuditEvent, Gate, GateStatus
from orchestrator.models import StageRun

from .plan_support import PLAN_PIPELINE, finish_plan, plan_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(make_pipeline, make_run, artifact_storage, t0):
    run = make_run(make_pipeline("infra-network", definition=PLAN_PIPELINE), now=t0)
    finish_plan(run, plan_bytes(), now=t0)
    gate = Gate.objects.get(stage_run__run=run)
    assert gate.status == GateStatus.WAITING
    return run, gate


def replace_plan(run, storage, content: bytes) -> None:
    """The plan artifact now holds other bytes (as when its stage is run again)."""
    row = StageRun.objects.get(run=run, name="plan").artifacts.get()
    storage.delete(row.storage_key)
    storage.save(row.storage_key, ContentFile(content))
    row.sha256, row.size = hashlib.sha256(content).hexdigest(), len(content)
    row.save(update_fields=["sha256", "size"])


def test_changing_the_plan_after_an_approval_voids_it(waiting, approver, artifact_storage, t0):
    run, gate = waiting
    seen_before = gate.seen_hash
    approval = actions.approve_gate(gate, actor=approver, now=t0, seen_hash=seen_before)
    assert not approval.void
    old_digest = StageRun.objects.get(run=run, name="plan").artifacts.get().sha256

    replace_plan(run, artifact_storage, plan_bytes(cidr="0.0.0.0/0"))
    assert gates.current_seen_hash(gate, t0) != seen_before
    actions.recheck(gate.pk, now=t0)

    approval.refresh_from_db()
    gate.refresh_from_db()
    assert approval.void
    new_digest = gate.input["artifact_files"][0]["sha256"]
    assert approval.void_reason == (
        "what was approved changed: artifact plan of stage plan changed "
        f"(sha256 {old_digest[:12]} → {new_digest[:12]})"
    )
    assert gate.input["artifacts"]["plan"]["resource_changes"][4]["change"]["after"][
        "cidr_blocks"
    ] == ["0.0.0.0/0"]
    event = AuditEvent.objects.get(action="approval.void")
    assert event.details["reason"] == approval.void_reason


def test_the_same_bytes_again_keep_the_approval(waiting, approver, artifact_storage, t0):
    run, gate = waiting
    approval = actions.approve_gate(gate, actor=approver, now=t0, seen_hash=gate.seen_hash)
    replace_plan(run, artifact_storage, plan_bytes())  # identical content
    actions.recheck(gate.pk, now=t0)
    approval.refresh_from_db()
    assert not approval.void


def test_an_approval_of_the_old_plan_is_refused(waiting, approver, artifact_storage, t0):
    run, gate = waiting
    shown = gate.seen_hash  # what the approver's page displayed
    replace_plan(run, artifact_storage, plan_bytes(cidr="0.0.0.0/0"))
    with pytest.raises(gates.GateConflict, match="changed since you looked at it"):
        actions.approve_gate(gate, actor=approver, now=t0, seen_hash=shown)

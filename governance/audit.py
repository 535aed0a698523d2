"""The audit log's one writer and its verifier.

`record()` must be called inside the transaction of the change it records, so the change and
its audit row commit or roll back together. Appends lock the chain-head row, which serializes
them: every row's prev_hash is the hash of the row before it, with no gaps or forks.

Inside `batch()` (the engine's transitions use it), `record()` keeps its rows and the block's
end appends them all at once, still inside the caller's transaction: one chain-head lock, one
multi-row INSERT, one head update — and the head is locked only from there to the commit
instead of from the first record on.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from orchestrator.kernel import fastsql
from orchestrator.kernel.batching import TransactionBatch, batching

from .models import AuditChainHead, AuditEvent, Outcome

GENESIS_HASH = "0" * 64

# Set by governance.middleware.RequestContextMiddleware for the duration of a request.
request_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "clearway_request_context", default=None
)


# Details added to every event recorded inside `attached(...)` (e.g. a change request's
# proposer and approver on the policy.publish row its approval writes).
_attached: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "clearway_audit_attached", default=None
)


@contextlib.contextmanager
def attached(**details: Any):
    """Within the block, every `record(...)` also carries `details` (the verb's own details
    win on a clash). Lets a verb that calls another verb say on whose behalf it happened
    without that verb knowing (governance.change_requests)."""
    token = _attached.set({**(_attached.get() or {}), **details})
    try:
        yield
    finally:
        _attached.reset(token)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def row_payload(event: AuditEvent) -> dict:
    """The fields covered by the hash, in a form that survives a database round trip."""
    return {
        "seq": event.seq,
        "at": _iso(event.at),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_name": event.target_name,
        "outcome": event.outcome,
        "details": event.details,
        "request_id": event.request_id,
        "ip": event.ip,
    }


def compute_hash(prev_hash: str, payload: dict) -> str:
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode()).hexdigest()


def _describe_target(target: Any) -> tuple[str, str, str]:
    if target is None:
        return "", "", ""
    if isinstance(target, tuple):
        kind, ident, name = (list(target) + ["", ""])[:3]
        return str(kind), str(ident), str(name)
    meta = getattr(target, "_meta", None)
    kind = meta.model_name if meta else type(target).__name__.lower()
    return kind, str(getattr(target, "pk", "") or ""), str(target)[:255]


def record(
    actor: Any,
    action: str,
    target: Any = None,
    *,
    outcome: str = Outcome.SUCCESS,
    at: datetime | None = None,
    **details: Any,
) -> AuditEvent:
    """Append one event to the chain. `actor` is a user, None (the system) or a string name;
    `target` a model instance, a (type, id, name) tuple or None."""
    ctx = request_context.get() or {}
    actor_id = getattr(actor, "pk", None)
    if actor is None:
        actor_name = "system"
    elif isinstance(actor, str):
        actor_name = actor
    else:
        actor_name = actor.get_username() if hasattr(actor, "get_username") else str(actor)
    target_type, target_id, target_name = _describe_target(target)
    extra = _attached.get()
    if extra:
        details = {**extra, **details}
    # JSON round trip now, so the hash covers exactly what the database will give back.
    details = json.loads(canonical_json(details))
    event = AuditEvent(
        at=(at or timezone.now()).astimezone(UTC),
        actor_id=actor_id,
        actor_name=actor_name[:150],
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_name=target_name,
        outcome=outcome,
        details=details,
        request_id=ctx.get("request_id", ""),
        ip=ctx.get("ip"),
    )
    pending = _batch.get()
    if pending is not None and pending.keep(event):
        return event  # seq and hash are filled in when the batch is appended
    _append([event])
    return event


def _append(events: list[AuditEvent]) -> None:
    """Chain `events` (in this order) onto the head and insert them: lock the head,
    multi-row INSERTs, move the head — through orchestrator.kernel.fastsql (plain SQL built from the
    models' metadata): this runs in every engine transition, where the ORM's compile and
    save machinery cost several times the statements themselves."""

    if not events:
        return
    # No savepoint: the caller's transaction (or this one) is the unit; an append either
    # commits with the change it records or not at all.
    with transaction.atomic(savepoint=False):
        heads = fastsql.select(AuditChainHead, "id = 1", [], lock=True)
        if not heads:
            AuditChainHead.objects.get_or_create(pk=1)
            heads = fastsql.select(AuditChainHead, "id = 1", [], lock=True)
        head = heads[0]
        seq, prev = head.seq, head.hash
        for event in events:
            seq += 1
            event.seq, event.prev_hash = seq, prev
            event.hash = prev = compute_hash(prev, row_payload(event))
        fastsql.insert_many(events)
        head.seq, head.hash = seq, prev
        fastsql.update(head, ["seq", "hash"])


_batch: contextvars.ContextVar[TransactionBatch | None] = contextvars.ContextVar(
    "clearway_audit_batch", default=None
)


def batching_now() -> bool:
    """Inside a batch() block (orchestrator.actions.transition)?"""
    return _batch.get() is not None


def batch():
    """Collect the rows `record()` is given inside the block and append them when the block
    ends without an exception. Use it inside the transaction of the changes, as its innermost
    block (`with transaction.atomic(), audit.batch():`) so that an exception rolls back the
    changes and drops their rows together. A nested batch joins the outer one."""
    return batching(_batch, TransactionBatch, lambda b: _append(b.survivors()), "audit.batch()")


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_broken_seq: int | None = None
    problem: str = ""
    since_seq: int = 0  # rows 1..since_seq were taken as verified (a trusted checkpoint)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_broken_seq": self.first_broken_seq,
            "problem": self.problem,
            "since_seq": self.since_seq,
        }


def chain_head() -> tuple[int, str]:
    head = AuditChainHead.objects.filter(pk=1).first()
    return (head.seq, head.hash) if head else (0, GENESIS_HASH)


def verify(up_to_seq: int | None = None, *, since: tuple[int, str] | None = None) -> VerifyResult:
    """Recompute the chain and name the first row that does not match: from the first row,
    or — `since=(seq, hash)`, a trusted checkpoint (governance.checkpoints) — from the row
    after `seq`, once row `seq` is shown to still have that hash. Costs O(rows verified)."""
    head_seq, head_hash = chain_head()
    limit = head_seq if up_to_seq is None else min(up_to_seq, head_seq)
    start_seq, prev_hash = since if since else (0, GENESIS_HASH)
    start_seq = min(start_seq, limit)

    def result(ok: bool, checked: int, broken: int | None = None, problem: str = ""):
        return VerifyResult(ok, checked, head_seq, head_hash, broken, problem, start_seq)

    if since and start_seq:
        anchor = AuditEvent.objects.filter(seq=start_seq).values_list("hash", flat=True).first()
        if anchor is None:
            return result(False, 0, start_seq, f"row {start_seq} missing")
        if anchor != prev_hash:
            return result(False, 0, start_seq, "hash differs from the signed checkpoint")
    expected_seq, checked = start_seq + 1, 0
    rows = (
        AuditEvent.objects.filter(seq__gt=start_seq, seq__lte=limit)
        .order_by("seq")
        .iterator(chunk_size=2000)
    )
    for event in rows:
        if event.seq != expected_seq:
            return result(False, checked, expected_seq, f"row {expected_seq} missing")
        if event.prev_hash != prev_hash:
            return result(False, checked, event.seq, "prev_hash does not match")
        if compute_hash(prev_hash, row_payload(event)) != event.hash:
            return result(False, checked, event.seq, "content does not match its hash")
        prev_hash, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
    if checked != limit - start_seq:
        return result(False, checked, expected_seq, f"row {expected_seq} missing")
    if up_to_seq is None and limit and prev_hash != head_hash:
        return result(False, checked, limit, "head hash does not match")
    return result(True, checked)

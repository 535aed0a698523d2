"""The owner-rewrite attack, as the table owner would run it: disable the append-only
trigger, change one row, recompute its hash and every later row's prev_hash and hash, and move
the chain head so that the chain verifies again."""

from __future__ import annotations

from django.db import connection, transaction

from governance import audit
from governance.models import AuditChainHead, AuditEvent


def rewrite_history(seq: int, **changes) -> None:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
        AuditEvent.objects.filter(seq=seq).update(**changes)
        prev = AuditEvent.objects.get(seq=seq - 1).hash if seq > 1 else audit.GENESIS_HASH
        for event in AuditEvent.objects.filter(seq__gte=seq).order_by("seq"):
            new_hash = audit.compute_hash(prev, audit.row_payload(event))
            AuditEvent.objects.filter(pk=event.pk).update(prev_hash=prev, hash=new_hash)
            prev = new_hash
        AuditChainHead.objects.filter(pk=1).update(hash=prev)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE governance_auditevent ENABLE TRIGGER USER")

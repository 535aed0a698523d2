"""The audit chain: record() appends, verify() recomputes and names the first broken row, and
`manage.py verify_audit_log` reports it with its exit status."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from governance import audit
from governance.models import AuditChainHead, AuditEvent, Outcome

pytestmark = pytest.mark.django_db


def tamper(seq: int, **changes) -> None:
    """Change (or with delete=True remove) a row behind the log's back. On SQLite nothing
    stops a queryset update; on PostgreSQL the append-only trigger does, so it is disabled
    for the moment (inside the test's transaction), as an attacker owning the table could."""
    rows = AuditEvent.objects.filter(seq=seq)
    with _triggers_off():
        if changes.pop("delete", False):
            rows.delete()
        else:
            rows.update(**changes)


@contextmanager
def _triggers_off():
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE governance_auditevent ENABLE TRIGGER USER")


def fill(n: int = 5) -> list[AuditEvent]:
    user = get_user_model().objects.create_user("auditor-subject")
    start = AuditChainHead.objects.get(pk=1).seq
    events = [
        audit.record(user, "test.event", ("thing", i, f"thing {i}"), number=i, note="é ✓")
        for i in range(n)
    ]
    assert [e.seq for e in events] == list(range(start + 1, start + n + 1))
    return events


def test_record_then_verify_roundtrip():
    user = get_user_model().objects.create_user("dana")
    at = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    event = audit.record(
        user,
        "policy.publish",
        ("policy", 7, "freeze"),
        outcome=Outcome.SUCCESS,
        at=at,
        version=2,
        nested={"b": [1, 2], "a": None},
    )
    stored = AuditEvent.objects.get(seq=event.seq)
    assert stored.actor_id == user.pk and stored.actor_name == "dana"
    assert (stored.target_type, stored.target_id, stored.target_name) == ("policy", "7", "freeze")
    assert stored.at == at and stored.details == {"version": 2, "nested": {"b": [1, 2], "a": None}}
    assert stored.hash == audit.compute_hash(stored.prev_hash, audit.row_payload(stored))
    previous = AuditEvent.objects.filter(seq=event.seq - 1).first()
    assert stored.prev_hash == (previous.hash if previous else audit.GENESIS_HASH)
    assert audit.chain_head() == (stored.seq, stored.hash)
    result = audit.verify()
    assert result.ok and result.checked == stored.seq and result.first_broken_seq is None
    assert result.as_dict()["head"] == {"seq": stored.seq, "hash": stored.hash}


def test_system_and_named_actors():
    system = audit.record(None, "beat.tick")
    named = audit.record("webhook:github", "run.trigger")
    assert (system.actor_id, system.actor_name) == (None, "system")
    assert (named.actor_id, named.actor_name) == (None, "webhook:github")
    assert audit.verify().ok


def test_a_rolled_back_change_leaves_no_audit_row():
    before = audit.chain_head()
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record(None, "test.doomed")
        raise RuntimeError("the change failed")
    assert audit.chain_head() == before
    assert not AuditEvent.objects.filter(action="test.doomed").exists()
    assert audit.verify().ok


def test_changed_details_are_found_and_the_seq_named():
    events = fill(5)
    victim = events[2]
    tamper(victim.seq, details={"number": 99})
    result = audit.verify()
    assert not result.ok
    assert result.first_broken_seq == victim.seq
    assert result.problem == "content does not match its hash"
    assert result.checked == victim.seq - 1


def test_a_changed_actor_or_time_is_found():
    events = fill(3)
    tamper(events[1].seq, actor_name="mallory")
    assert audit.verify().first_broken_seq == events[1].seq


def test_a_rehashed_row_breaks_the_next_link():
    events = fill(4)
    victim = AuditEvent.objects.get(seq=events[1].seq)
    victim.details = {"number": 42}
    forged = audit.compute_hash(victim.prev_hash, audit.row_payload(victim))
    tamper(victim.seq, details=victim.details, hash=forged)
    result = audit.verify()
    assert (result.first_broken_seq, result.problem) == (
        events[2].seq,
        "prev_hash does not match",
    )


def test_a_deleted_row_is_found():
    events = fill(4)
    tamper(events[1].seq, delete=True)
    result = audit.verify()
    assert (result.first_broken_seq, result.problem) == (
        events[1].seq,
        f"row {events[1].seq} missing",
    )


def test_a_deleted_last_row_is_found():
    events = fill(3)
    tamper(events[-1].seq, delete=True)
    result = audit.verify()
    assert not result.ok and result.first_broken_seq == events[-1].seq


def test_verify_up_to_a_seq_ignores_later_rows():
    events = fill(4)
    tamper(events[3].seq, action="forged")
    assert audit.verify(up_to_seq=events[2].seq).ok
    assert not audit.verify().ok


# --- the command ------------------------------------------------------------------------------


def test_the_command_says_ok_and_exits_0():
    events = fill(3)
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    head = events[-1]
    assert (
        out.getvalue().strip() == f"audit chain OK: {head.seq} events, head #{head.seq} {head.hash}"
    )


def test_the_command_names_the_first_broken_row_and_exits_1():
    events = fill(4)
    tamper(events[1].seq, details={"number": -1})
    with pytest.raises(CommandError) as excinfo:
        call_command("verify_audit_log", stdout=StringIO())
    assert excinfo.value.returncode == 1
    message = str(excinfo.value)
    assert f"BROKEN at #{events[1].seq}" in message
    assert "content does not match its hash" in message


def test_the_command_exit_status_from_the_command_line(monkeypatch):
    """run_from_argv (what `manage.py` runs) turns the error into exit status 1."""
    from django.core.management import base

    from governance.management.commands.verify_audit_log import Command

    # run_from_argv closes every connection when it ends: not the test's, please.
    monkeypatch.setattr(base.connections, "close_all", lambda: None)
    fill(2)
    Command().run_from_argv(["manage.py", "verify_audit_log"])  # no SystemExit: status 0
    tamper(1, action="forged")
    with pytest.raises(SystemExit) as broken:
        Command().run_from_argv(["manage.py", "verify_audit_log"])
    assert broken.value.code == 1

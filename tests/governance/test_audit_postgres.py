"""The audit chain on PostgreSQL: concurrent appends, and the append-only triggers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/clearway_audit \\
        .venv/bin/pytest -m integration tests/governance/test_audit_postgres.py

The transactional test relies on the tests.pg_flush plugin (pyproject addopts) to disable the
triggers around pytest-django's TRUNCATE flush.
"""

from __future__ import annotations

import os
import threading

import pytest
from django.db import DatabaseError, connection, connections, transaction

from governance import audit
from governance.models import AuditChainHead, AuditEvent

pytestmark = pytest.mark.integration

WRITERS = 50


@pytest.fixture(autouse=True)
def _postgres_only():
    if connection.vendor != "postgresql":
        if os.environ.get("CI") == "true":
            pytest.fail("these tests need PostgreSQL (DATABASE_URL) in CI", pytrace=False)
        pytest.skip("needs PostgreSQL: set DATABASE_URL")


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_form_one_chain_without_gaps():
    AuditChainHead.objects.get_or_create(pk=1)
    start, _ = audit.chain_head()
    barrier = threading.Barrier(WRITERS)
    pids: list[int] = []
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            pids.append(connection.cursor().connection.info.backend_pid)  # its own connection
            barrier.wait(timeout=60)
            with transaction.atomic():
                audit.record(f"writer-{number}", "test.concurrent", ("thing", number, ""), n=number)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(set(pids)) == WRITERS
    rows = AuditEvent.objects.filter(seq__gt=start).order_by("seq")
    assert list(rows.values_list("seq", flat=True)) == list(range(start + 1, start + WRITERS + 1))
    assert sorted(r.details["n"] for r in rows) == list(range(WRITERS))
    links = list(rows.values_list("prev_hash", "hash"))
    assert all(prev == links[i - 1][1] for i, (prev, _) in enumerate(links) if i)
    result = audit.verify()
    assert result.ok, result
    assert (result.checked, result.head_seq) == (start + WRITERS, start + WRITERS)


def _refused(sql: str, params=None) -> str:
    with pytest.raises(DatabaseError) as excinfo:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
    return str(excinfo.value)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql, refused",
    [
        ("UPDATE governance_auditevent SET details = '{}' WHERE seq = %s", "UPDATE"),
        ("DELETE FROM governance_auditevent WHERE seq = %s", "DELETE"),
        ("TRUNCATE governance_auditevent", "TRUNCATE"),
    ],
)
def test_raw_sql_changes_are_refused_by_the_trigger(sql, refused):
    event = audit.record(None, "test.guarded", note="original")
    message = _refused(sql, [event.seq] if "%s" in sql else None)
    assert f"governance_auditevent is append-only: {refused} refused" in message
    stored = AuditEvent.objects.get(seq=event.seq)
    assert stored.details == {"note": "original"}
    assert audit.verify().ok


@pytest.mark.django_db
def test_orm_updates_and_deletes_are_refused_too():
    event = audit.record(None, "test.guarded")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=event.seq).update(action="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=event.seq).delete()
    assert AuditEvent.objects.get(seq=event.seq).action == "test.guarded"


@pytest.mark.django_db
def test_a_change_made_with_the_triggers_disabled_is_found_by_verify():
    events = [audit.record(None, "test.chain", n=n) for n in range(5)]
    victim = events[2]
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
        cursor.execute(
            "UPDATE governance_auditevent SET details = %s WHERE seq = %s",
            ['{"n": 99}', victim.seq],
        )
        cursor.execute("ALTER TABLE governance_auditevent ENABLE TRIGGER USER")
    result = audit.verify()
    assert not result.ok
    assert result.first_broken_seq == victim.seq
    assert result.problem == "content does not match its hash"
    # and the guard is back
    assert "append-only" in _refused(
        "UPDATE governance_auditevent SET details = '{}' WHERE seq = %s", [victim.seq]
    )


@pytest.mark.django_db
def test_the_triggers_are_installed():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'governance_auditevent'::regclass "
            "AND NOT tgisinternal ORDER BY tgname"
        )
        names = [row[0] for row in cursor.fetchall()]
    assert names == ["clearway_audit_no_truncate", "clearway_audit_no_update"]

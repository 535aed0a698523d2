"""pytest plugin (loaded with -p tests.pg_flush): transactional tests on PostgreSQL.

The audit table refuses TRUNCATE (a trigger; by design), which is how Django flushes the
database after a transactional test. Around that flush the triggers are disabled, and the
rows that migrations seed (roles, the audit chain head) are put back afterwards.
"""

from __future__ import annotations

from django.test import TransactionTestCase

_original_teardown = TransactionTestCase._fixture_teardown


def _fixture_teardown(self):
    from django.db import connections

    guarded = []
    for alias in self._databases_names(include_mirrors=False):
        conn = connections[alias]
        if conn.vendor == "postgresql":
            with conn.cursor() as cursor:
                cursor.execute("ALTER TABLE governance_auditevent DISABLE TRIGGER USER")
            guarded.append(conn)
    try:
        _original_teardown(self)
    finally:
        for conn in guarded:
            with conn.cursor() as cursor:
                cursor.execute("ALTER TABLE governance_auditevent ENABLE TRIGGER USER")
            _reseed()


def _reseed() -> None:
    from django.contrib.auth.models import Group, Permission

    from governance.models import AuditChainHead
    from governance.roles import ensure_roles

    ensure_roles(Group, Permission)
    AuditChainHead.objects.get_or_create(pk=1)


TransactionTestCase._fixture_teardown = _fixture_teardown

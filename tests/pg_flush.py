"""pytest plugin (loaded with -p tests.pg_flush): transactional tests on PostgreSQL.

The audit table refuses TRUNCATE (a trigger; by design), which is how Django flushes the
database after a transactional test. Around that flush the triggers are disabled, and the
rows that migrations seed (roles, the audit chain head) are put back afterwards.

Content types and permissions are kept through the flush: recreated, they would get new
ids, and the worker and server processes that integration tests start once per session
cache the old ones (ContentType's manager cache) — django-guardian would then find no
object permission for anybody from the second test on.
"""

from __future__ import annotations

import contextlib

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
        with _keeping(KEPT_TABLES, guarded):
            _original_teardown(self)
    finally:
        for conn in guarded:
            with conn.cursor() as cursor:
                cursor.execute("ALTER TABLE governance_auditevent ENABLE TRIGGER USER")
            _reseed()


KEPT_TABLES = frozenset({"django_content_type", "auth_permission"})


@contextlib.contextmanager
def _keeping(tables: frozenset, conns: list):
    """Leave `tables` out of the flush on these connections."""
    originals = []
    for conn in conns:
        introspection = conn.introspection
        original = introspection.django_table_names

        def without(*args, _original=original, **kwargs):
            return [t for t in _original(*args, **kwargs) if t not in tables]

        introspection.django_table_names = without
        originals.append((introspection, original))
    try:
        yield
    finally:
        for introspection, original in originals:
            introspection.django_table_names = original


def _reseed() -> None:
    from django.contrib.auth.models import Group, Permission

    from governance.models import AuditChainHead
    from governance.roles import ensure_roles

    ensure_roles(Group, Permission)
    AuditChainHead.objects.get_or_create(pk=1)


TransactionTestCase._fixture_teardown = _fixture_teardown

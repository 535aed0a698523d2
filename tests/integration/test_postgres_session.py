"""What Clearway's PostgreSQL sessions are set up with (orchestrator/settings.py)."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.integration


def test_sessions_run_without_the_jit_compiler(live_db):
    # PostgreSQL's JIT spent ~100 ms compiling each metrics aggregate of the overview
    # (benchmarks/PAGES_RESULTS.md); Clearway's connections turn it off.
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"

"""The wallboard shows the DORA and governance tiles (issue 18, point 4): on the page and as
their own partial (re-fetched every 60 s); the live partial stays as cheap as before."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

METRICS = [
    "deploy-frequency",
    "lead-time",
    "change-failure-rate",
    "time-to-restore",
    "approval-wait",
    "override-rate",
]


def test_the_board_has_the_metric_tiles(gated, developer, client_for, htmx_client_for):
    page = client_for(developer).get("/board/").content.decode()
    for name in METRICS:
        assert f'data-metric="{name}"' in page
    assert 'hx-get="/board/?partial=board-metrics" hx-trigger="every 60s"' in page
    client = htmx_client_for(developer)
    part = client.get("/board/?partial=board-metrics").content.decode()
    assert part.lstrip().startswith('<section id="board-metrics"') and "<html" not in part
    with CaptureQueriesContext(connection) as live:
        body = client.get("/board/?partial=board-live").content.decode()
    assert 'data-metric="' not in body  # the live partial computes no metrics
    assert len(live.captured_queries) <= 10

"""Query counts of the busiest pages are pinned, and do not grow with history: the same
number of queries with 10 runs and with 5,000 (rows written with bulk_create), and never more
than 16 (the inbox badge's delegations in force are one of them). A page that grows with the
data makes a query per row somewhere."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

MAX_QUERIES = 16


def page_queries(client, urls: dict[str, str], django_assert_max_num_queries) -> dict[str, int]:
    counts = {}
    for name, url in urls.items():
        with django_assert_max_num_queries(MAX_QUERIES) as captured:
            response = client.get(url)
        assert response.status_code == 200, name
        counts[name] = len(captured.captured_queries)
    return counts


@pytest.mark.parametrize("who", ["superuser", "approver", "developer"])
def test_query_counts_do_not_grow_with_history(
    who, request, gated, soft_policy, bulk_history, client_for, django_assert_max_num_queries
):
    user = request.getfixturevalue(who)
    run, gate = gated
    urls = {
        "overview": "/",
        "pipeline": "/pipelines/payments-api/",
        "run": f"/runs/{run.pk}/",
        "inbox": "/approvals/",
    }
    client = client_for(user)
    for url in urls.values():  # warm up per-process caches (content types, permissions)
        client.get(url)

    bulk_history(10)
    small = page_queries(client, urls, django_assert_max_num_queries)
    bulk_history(4_990)
    large = page_queries(client, urls, django_assert_max_num_queries)

    assert small == large
    assert max(large.values()) <= MAX_QUERIES


def test_partials_stay_small(superuser, gated, bulk_history, htmx_client_for):
    """The live partials are re-fetched on every event: they must stay cheap."""
    from orchestrator import rollups

    run, _ = gated
    bulk_history(50)
    rollups.refresh()  # as beat does; a fresh install's first request makes the first pass
    client = htmx_client_for(superuser)
    for url, limit in [
        ("/?partial=live", 10),
        ("/?partial=metrics&days=90", 10),
        ("/board/?partial=board-live", 10),
        (f"/runs/{run.pk}/gate-panel/", 10),
        ("/approvals/count/", 5),
    ]:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        assert len(captured.captured_queries) <= limit, (url, len(captured.captured_queries))

"""The audit log page: filters with the API's meaning, 50 rows a page newest first, the chain
head always and the chain verification on demand (an htmx partial), and a query count that
does not grow with the log."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from governance import audit
from governance.models import AuditChainHead, AuditEvent

pytestmark = pytest.mark.django_db

# Long before the events the role fixtures record (role.add, at the time the test runs).
T0 = datetime(2020, 3, 1, 12, 0, tzinfo=UTC)
PERIOD = "until=2020-04-01"  # added to queries without `until`: only the fixture's events


@pytest.fixture
def auditor(compliance_manager) -> Client:
    client = Client()
    client.force_login(compliance_manager)
    return client


@pytest.fixture
def events(policy_admin, approver) -> list[int]:
    """Six events over three days (recorded through the one writer, so the chain is valid).
    Returns their seq numbers, first to last."""
    audit.record(policy_admin, "policy.create", ("policy", "3", "freeze"), at=T0, lines=12)
    audit.record(
        policy_admin, "policy.publish", ("policy", "3", "freeze"), at=T0 + timedelta(hours=1)
    )
    audit.record(
        approver,
        "gate.approve",
        ("gate", "7", "gate 7"),
        outcome="denied",
        at=T0 + timedelta(days=1),
        rule="self-approval",
    )
    audit.record(None, "run.succeeded", ("run", "5", "payments-api #5"), at=T0 + timedelta(days=1))
    audit.record(
        policy_admin,
        "environment.update",
        ("environment", "1", "production"),
        at=T0 + timedelta(days=2),
        changes={"approval_ttl_hours": {"from": 24, "to": 8}},
    )
    audit.record("mallory", "auth.login_failed", outcome="failure", at=T0 + timedelta(days=2))
    last = AuditChainHead.objects.get(pk=1).seq
    return list(range(last - 5, last + 1))


def seqs(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="seq-(\d+)"', page)]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", [6, 5, 4, 3, 2, 1]),
        ("?actor=paula", [5, 2, 1]),
        ("?actor=system", [4]),
        ("?action=policy.publish", [2]),
        ("?action=policy.*", [2, 1]),
        ("?action=policy.", []),  # exact unless it ends in *
        ("?target=policy", [2, 1]),
        ("?target=gate:7", [3]),
        ("?target=gate:8", []),
        ("?outcome=denied", [3]),
        ("?since=2020-03-02", [6, 5, 4, 3]),
        ("?until=2020-03-01", [2, 1]),  # a date as until: that whole day
        ("?since=2020-03-01T12:30&until=2020-03-02T12:00:00%2B00:00", [2]),  # until: exclusive
        ("?since=2020-03-01T12:30&until=2020-03-02T12:00:01", [4, 3, 2]),
        ("?since=2020-03-01T13:30:00%2B01:00", [6, 5, 4, 3, 2]),  # 12:30 UTC
        ("?actor=paula&action=environment.*&since=2020-03-03", [5]),
    ],
)
def test_filters(auditor, events, query, expected):
    """`expected` numbers the fixture's events 1 to 6."""
    if "until=" not in query:
        query += ("&" if query else "?") + PERIOD
    response = auditor.get(f"/audit/{query}")
    assert response.status_code == 200
    assert seqs(response.content.decode()) == [events[n - 1] for n in expected]


def test_everything_newest_first(auditor, events):
    page = auditor.get("/audit/").content.decode()
    assert seqs(page)[:6] == events[::-1]
    assert seqs(page)[6:] == list(range(events[0] - 1, 0, -1))  # what the fixtures recorded


@pytest.mark.parametrize(
    "query, message",
    [
        ("?since=yesterday", "Use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)."),
        ("?since=2026-13-01", "Use YYYY-MM-DD"),
        ("?since=2020-03-02&until=2020-03-01", "Until must be after since."),
        ("?outcome=maybe", "Select a valid choice."),
    ],
)
def test_bad_filters_are_explained(auditor, events, query, message):
    response = auditor.get(f"/audit/{query}")
    assert response.status_code == 200
    page = response.content.decode()
    assert message in page and seqs(page) == []


def test_rows_show_every_column(auditor, events):
    page = auditor.get("/audit/?target=environment").content.decode()
    row = re.search(rf'<tr id="seq-{events[4]}".*?</tr>', page, re.S).group(0)
    assert "2020-03-03 12:00:00" in row and "paula" in row and "environment.update" in row
    assert 'href="/environments/production/"' in row and "status-succeeded" in row
    assert "{&quot;changes&quot;:{&quot;approval_ttl_hours&quot;:{&quot;from&quot;:24" in row
    denied = auditor.get("/audit/?outcome=denied").content.decode()
    assert 'class="row-failed"' in denied and "status-rejected" in denied


def test_pages_of_fifty_newest_first_keep_the_filters(auditor, policy_admin):
    for n in range(120):
        audit.record(policy_admin, "policy.update", ("policy", str(n), f"p{n}"), at=T0)
    last = AuditChainHead.objects.get(pk=1).seq
    first = auditor.get("/audit/?action=policy.*").content.decode()
    assert seqs(first) == list(range(last, last - 50, -1))
    assert 'href="?action=policy.%2A&amp;page=2"' in first
    third = auditor.get("/audit/?action=policy.*&page=3").content.decode()
    assert seqs(third) == list(range(last - 100, last - 120, -1))
    out_of_range = auditor.get("/audit/?action=policy.*&page=999").content.decode()
    assert seqs(out_of_range) == seqs(third)


def test_head_is_always_shown_and_verification_waits_for_the_button(auditor, events):
    head = AuditChainHead.objects.get(pk=1)
    page = auditor.get("/audit/").content.decode()
    assert f"<strong>#{head.seq}</strong>" in page and head.hash in page
    assert 'id="verify-ok"' not in page and 'id="verify-broken"' not in page
    assert 'hx-get="/audit/verify/"' in page


def test_verify_partial_reports_ok(auditor, events):
    response = auditor.get("/audit/verify/", headers={"HX-Request": "true"})
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page
    assert 'id="verify-ok"' in page and f"{events[-1]} events verified" in page
    assert AuditChainHead.objects.get(pk=1).hash in page


def test_verify_names_the_first_broken_row(auditor, events):
    AuditEvent.objects.filter(seq=events[2]).update(outcome="success")  # rewrite history
    page = auditor.get("/audit/verify/", headers={"HX-Request": "true"}).content.decode()
    assert 'id="verify-broken"' in page and f"Chain BROKEN at #{events[2]}" in page
    assert "content does not match its hash" in page and "alert-error" in page


def test_verify_without_htmx_renders_the_page(auditor, events):
    page = auditor.get("/audit/verify/").content.decode()
    assert "<html" in page and 'id="verify-ok"' in page and seqs(page)[:6] == events[::-1]


def make_events(count: int) -> None:
    """Exactly `count` events, with fake hashes (verification is not what is measured here)."""
    AuditEvent.objects.all().delete()  # SQLite: no append-only trigger
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        AuditEvent(
            seq=n,
            at=now - timedelta(seconds=count - n),
            actor_id=None,
            actor_name="system" if n % 3 else "paula",
            action="run.succeeded" if n % 2 else "policy.update",
            target_type="run" if n % 2 else "policy",
            target_id=str(n),
            target_name=f"target {n}",
            outcome="success" if n % 7 else "denied",
            details={"n": n, "note": "x" * (n % 200)},
            prev_hash="0" * 64,
            hash=f"{n:064x}",
        )
        for n in range(1, count + 1)
    )
    AuditChainHead.objects.update_or_create(pk=1, defaults={"seq": count, "hash": f"{count:064x}"})


@pytest.mark.parametrize("query", ["", "?action=policy.*&outcome=success&page=2"])
def test_query_count_does_not_grow_with_the_log(
    auditor, query, django_assert_max_num_queries, django_assert_num_queries
):
    make_events(10)
    auditor.get(f"/audit/{query}")
    with django_assert_max_num_queries(10) as small:
        auditor.get(f"/audit/{query}")
    make_events(5_000)
    with django_assert_num_queries(len(small)):
        response = auditor.get(f"/audit/{query}")
    assert len(seqs(response.content.decode())) == 50

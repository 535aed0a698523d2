"""The overview, the wallboard, the approvals inbox and the navigation badge: what they show
for whom, and the partials live.js re-fetches."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db


def test_overview_shows_running_waiting_and_failures(
    gated, make_run, finish_stage, approver, client_for
):
    from orchestrator.models import Run

    waiting_run, gate = gated
    failing = make_run()
    finish_stage(failing, "build", succeeded=False)
    body = client_for(approver).get("/").content.decode()
    live = body[body.index('id="overview-live"') : body.index('id="metrics"')]

    running = live[live.index("In progress") : live.index("Waiting for your approval")]
    assert f'data-run-id="{waiting_run.pk}"' in running
    assert "deploy-production" in running and "status-waiting" in running

    waiting = live[live.index("Waiting for your approval") : live.index("Recent failures")]
    assert f'href="/runs/{waiting_run.pk}/#gate-panel"' in waiting
    assert "production" in waiting

    failures = live[live.index("Recent failures") : live.index('id="pipelines-title"')]
    failing.refresh_from_db()
    assert failing.status == "failed"
    assert f'href="/runs/{failing.pk}/"' in failures and "step compile failed" in failures
    assert Run.objects.count() == 2


def test_last_status_per_environment(gated, developer, client_for):
    run, _ = gated
    body = client_for(developer).get("/pipelines/").content.decode()
    row = re.search(r'<tr data-pipeline="payments-api".*?</tr>', body, re.S).group(0)
    assert '<th scope="col">production</th>' in body
    assert "status-waiting" in row  # production: at its gate
    assert f'href="/runs/{run.pk}/"' in row


def test_the_live_partial_is_only_the_partial(gated, developer, htmx_client_for, client_for):
    body = htmx_client_for(developer).get("/?partial=live").content.decode()
    assert body.lstrip().startswith('<div id="overview-live" data-live-refresh')
    assert 'hx-trigger="cw-refresh"' in body
    assert "<html" not in body and 'id="metrics"' not in body
    # Without HX-Request the same URL is the whole page (a bookmark, a reload).
    assert "<html" in client_for(developer).get("/?partial=live").content.decode()


def test_wallboard(gated, developer, client_for, htmx_client_for):
    body = client_for(developer).get("/board/").content.decode()
    assert '<body class="board"' in body
    assert 'id="board-clock"' in body and 'id="live-indicator"' in body
    assert '<nav class="nav"' not in body and "skip-link" not in body
    assert 'class="board-tile status-waiting" data-pipeline="payments-api"' in body
    assert "<title>Wallboard · Clearway</title>" in body
    partial = htmx_client_for(developer).get("/board/?partial=board-live").content.decode()
    assert partial.lstrip().startswith('<div id="board-live" data-live-refresh')
    assert 'hx-trigger="cw-refresh, every 60s"' in partial


def test_inbox_lists_waiting_gates_oldest_first(run_at_gate, approver, developer, client_for):
    from governance.models import Gate

    first, first_gate = run_at_gate(parameters={"version": "1.1.0"})
    second, second_gate = run_at_gate(parameters={"version": "1.2.0"})
    Gate.objects.filter(pk=first_gate.pk).update(created_at=timezone.now() - timedelta(hours=3))
    body = client_for(approver).get("/approvals/").content.decode()
    rows = re.findall(r'<tr data-gate-id="(\d+)">(.*?)</tr>', body, re.S)
    assert [int(pk) for pk, _ in rows] == [first_gate.pk, second_gate.pk]
    assert "3h 00m" in rows[0][1] and "1.1.0" in rows[0][1] and "dana" in rows[0][1]
    assert "production" in rows[0][1] and "not yet" in rows[0][1]
    # a developer may approve nothing
    assert (
        "Nothing waits for your approval."
        in client_for(developer).get("/approvals/").content.decode()
    )


def test_badge_count_and_its_partial(gated, approver, developer, htmx_client_for, client_for):
    run, gate = gated
    badge = htmx_client_for(approver).get("/approvals/count/").content.decode().strip()
    assert badge.startswith('<span id="inbox-badge" class="badge-count" data-count="1"')
    assert 'hx-get="/approvals/count/" hx-trigger="cw-gate from:body" hx-swap="outerHTML"' in badge
    assert badge.endswith(">1</span>")
    assert 'data-count="0"' in client_for(developer).get("/approvals/count/").content.decode()
    for url in ("/", "/pipelines/", "/approvals/", f"/runs/{run.pk}/"):
        body = client_for(approver).get(url).content.decode()
        assert 'id="inbox-badge" class="badge-count" data-count="1"' in body, url


def test_navigation_links_resolve_or_are_left_out(client_for, superuser):
    from dashboard.templatetags.dashboard_tags import url_or_none

    assert url_or_none("dashboard:overview") == "/"
    assert url_or_none("governance:no-such-page") is None
    body = client_for(superuser).get("/pipelines/").content.decode()
    assert '<a href="/pipelines/" aria-current="page">Pipelines</a>' in body
    assert 'href="/api/docs/"' in body

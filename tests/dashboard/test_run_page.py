"""The run page: the stage graph with data attributes live.js updates, logs rendered safely
with their offsets, timings, and the cancel and retry buttons."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


def page(client, run) -> str:
    response = client.get(f"/runs/{run.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def test_stages_and_steps_carry_their_ids_and_statuses(gated, developer, client_for):
    run, _ = gated
    run.refresh_from_db()
    body = page(client_for(developer), run)
    assert f'id="run" data-run-id="{run.pk}" data-seq="{run.event_seq}"' in body
    assert f'data-api="/api/v1/runs/{run.pk}/"' in body
    assert f'data-log-api="/api/v1/runs/{run.pk}/log/"' in body
    build = run.stages.get(name="build")
    deploy = run.stages.get(name="deploy-production")
    assert re.search(
        rf'class="stage status-succeeded" data-stage-id="{build.pk}" data-stage-name="build" '
        r'data-status="succeeded"',
        body,
    )
    assert f'data-stage-name="deploy-production" data-status="{deploy.status}"' in body
    for step in (build.steps.get(), deploy.steps.get()):
        assert f'data-step-id="{step.pk}" data-status="{step.status}"' in body
        assert f'data-graph-step="{step.pk}"' in body
    assert "<title>Payments API #1 · Clearway</title>" in body


def test_columns_follow_dependency_depth():
    from dashboard.views import stage_columns

    stages = [
        {"name": "build", "needs": []},
        {"name": "deploy", "needs": ["test", "lint"]},
        {"name": "test", "needs": ["build"]},
        {"name": "lint", "needs": ["build"]},
        {"name": "docs", "needs": []},
    ]
    columns = stage_columns(stages)
    assert [[s["name"] for s in c] for c in columns] == [
        ["build", "docs"],
        ["test", "lint"],
        ["deploy"],
    ]


def test_logs_are_rendered_escaped_with_colours(make_run, developer, client_for):
    from orchestrator.models import LogChunk, StepRun

    run = make_run()
    step = StepRun.objects.get(stage__run=run, name="compile")
    lines = [
        "2026-11-24T10:00:00.123Z <script>alert(1)</script>",
        "2026-11-24T10:00:01.000Z [stderr] \x1b[31mfailed\x1b[0m & done",
        "plain \x1b[2Kline",
    ]
    LogChunk.objects.create(step=step, offset=0, line_count=3, text="\n".join(lines))
    StepRun.objects.filter(pk=step.pk).update(log_lines=3)
    body = page(client_for(developer), run)
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert '<span class="ansi-31">failed</span> &amp; done' in body
    assert f'class="log-line log-stderr" id="s{step.pk}-L2"' in body
    assert '<span class="log-time" title="2026-11-24T10:00:00.123Z">10:00:00</span>' in body
    assert "plain line" in body
    assert f'<a class="log-lineno" href="#s{step.pk}-L3">3</a>plain line</div>' in body
    # A step without output says so (the others of this run printed nothing).
    assert "No output yet." in body
    assert "{#" not in body and "#}" not in body  # no template comment leaks as text
    assert re.search(rf'data-step-id="{step.pk}".*?data-next-offset="3"', body, re.S)


def test_cancel_and_retry_buttons(make_run, developer, viewer, client_for):
    from orchestrator import actions

    run = make_run()
    body = page(client_for(developer), run)
    assert 'id="cancel-run"' in body and 'id="retry-run"' in body
    cancel_form = re.search(r'<form[^>]*data-show-when="active"[^>]*>', body).group(0)
    retry_form = re.search(r'<form[^>]*data-show-when="terminal"[^>]*>', body).group(0)
    assert "hidden" not in cancel_form and "hidden" in retry_form

    assert "cancel-run" not in page(client_for(viewer), run)  # may watch, not act

    response = client_for(developer).post(f"/runs/{run.pk}/cancel/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "canceled"
    body = page(client_for(developer), run)
    cancel_form = re.search(r'<form[^>]*data-show-when="active"[^>]*>', body).group(0)
    assert "hidden" in cancel_form

    response = client_for(developer).post(f"/runs/{run.pk}/retry/")
    new = run.retries.get()
    assert response["Location"] == f"/runs/{new.pk}/"
    assert new.parameters == run.parameters

    # Cancelling again is refused with a message, not an error page.
    client = client_for(developer)
    response = client.post(f"/runs/{run.pk}/cancel/", follow=True)
    assert "already ended" in response.content.decode()
    actions.cancel_run(new, actor=developer)


def test_reason_is_shown_only_while_it_explains(make_run, developer, client_for):
    from orchestrator.models import Run

    run = make_run()
    Run.objects.filter(pk=run.pk).update(status="succeeded", reason="stage x waits at its gate")
    body = page(client_for(developer), run)
    assert "waits at its gate" not in body
    Run.objects.filter(pk=run.pk).update(status="failed", reason="stage build: step a failed")
    assert "stage build: step a failed" in page(client_for(developer), run)


def test_unknown_and_invisible_runs_are_404(gated, outsider, developer, client_for):
    run, _ = gated
    assert client_for(developer).get("/runs/999999/").status_code == 404
    assert client_for(outsider).get(f"/runs/{run.pk}/").status_code == 404
    assert client_for(outsider).get(f"/runs/{run.pk}/gate-panel/").status_code == 404


def test_a_run_page_shows_a_banner_when_steps_ran_or_run_without_the_sandbox(
    gated, developer, client_for, settings
):
    from orchestrator.models import Run

    run, _ = gated
    client = client_for(developer)
    assert 'id="sandbox-banner"' not in page(client, run)
    Run.objects.filter(pk=run.pk).update(sandboxed=False)
    body = page(client, run)
    assert 'id="sandbox-banner"' in body and "Steps of this run ran with" in body
    Run.objects.filter(pk=run.pk).update(sandboxed=True)
    settings.CLEARWAY = {**settings.CLEARWAY, "SANDBOX": "off"}
    body = page(client, run)
    assert 'id="sandbox-banner"' in body and "This installation runs pipeline steps" in body

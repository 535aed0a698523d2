"""The gate panel explains itself: a button only when the action can succeed (otherwise
why not), when approvals expire, when a held gate resumes, who may override and why; an
override is confirmed in a second step; a rejection and an override are flagged in the run
header (issue 18, point 1)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

pytestmark = pytest.mark.django_db

pytest.importorskip("governance.actions", reason="governance.actions (the gate verbs) is not there")


def panel(client, run) -> str:
    response = client.get(f"/runs/{run.pk}/gate-panel/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_superuser_who_triggered_the_run_is_offered_no_buttons(
    soft_policy, run_at_gate, superuser, client_for
):
    run, _ = run_at_gate(actor=superuser)
    body = panel(client_for(superuser), run)
    assert '<form id="approve-form"' not in body
    assert "ada is not in an approval group of production (security, sre)." in body


def test_separation_of_duties_hides_the_buttons_and_says_why(run_at_gate, approver, client_for):
    run, _ = run_at_gate(parameters={"author": "sam"})
    body = panel(client_for(approver), run)
    assert '<form id="approve-form"' not in body
    assert "Separation of duties: sam is the author of the change" in body


def test_expiry_and_resume_are_explained(run_at_gate, approver, htmx_client_for, production):
    run, gate = run_at_gate()
    client = htmx_client_for(approver)
    client.post(f"/runs/{run.pk}/gates/{gate.pk}/decide/", {"decision": "approve"})
    body = panel(client, run)
    assert "An approval counts for 24 h (production&#x27;s setting)" in body
    approval = gate.approvals.get()
    assert f"expires {approval.expires_at:%Y-%m-%d %H:%M} UTC" in body
    assert "re-checked every 30 s" in body

    end = timezone.now() + timedelta(days=2)
    production.freeze_windows = [
        {
            "start": (timezone.now() - timedelta(hours=1)).isoformat(),
            "end": end.isoformat(),
            "reason": "year-end",
        }
    ]
    production.save(update_fields=["freeze_windows"])
    body = panel(client, run)
    assert f"frozen until {end:%Y-%m-%d %H:%M:%S} UTC (year-end)" in body


def test_who_may_override_and_why(
    soft_policy, run_at_gate, approver, second_approver, security_approver, client_for
):
    from governance.actions import recheck

    run, gate = run_at_gate()
    recheck(gate.pk)
    body = panel(client_for(security_approver), run)  # sofia may approve, not override
    assert "An override is possible" in body and "change-window</span> v1" in body
    assert "Who may override: holders of the override permission on production (sam, sara)" in body
    assert "You do not hold it." in body
    assert 'id="override-form"' not in body


def test_a_short_justification_is_refused_by_the_server(
    soft_policy, run_at_gate, approver, htmx_client_for
):
    run, gate = run_at_gate()
    body = htmx_client_for(approver).post(
        f"/runs/{run.pk}/gates/{gate.pk}/override/",
        {"justification": "too short", "confirm": "yes"},
    )
    body = body.content.decode()
    assert "at least 20 characters (this one has 9)" in body
    assert not gate.overrides.exists()


def test_the_confirmation_works_without_javascript(soft_policy, run_at_gate, approver, client_for):
    run, gate = run_at_gate()
    client = client_for(approver)
    text = "Hotfix for INC-4711, agreed with the on-call lead."
    response = client.post(f"/runs/{run.pk}/gates/{gate.pk}/override/", {"justification": text})
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" in body and 'id="override-confirm-form"' in body
    assert not gate.overrides.exists()
    response = client.post(
        f"/runs/{run.pk}/gates/{gate.pk}/override/", {"justification": text, "confirm": "yes"}
    )
    assert response.status_code == 302
    assert gate.overrides.exists()
    body = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="run-override-flag"' in body and "overridden by sam" in body


def test_a_rejection_reads_as_a_decision(gated, security_approver, htmx_client_for, client_for):
    run, gate = gated
    body = htmx_client_for(security_approver).post(
        f"/runs/{run.pk}/gates/{gate.pk}/decide/", {"decision": "reject", "comment": "Not today"}
    )
    body = body.content.decode()
    assert "rejectd" not in body and ">rejected</span>" in body
    # The panel's answer also carries the run header (an htmx out-of-band swap).
    assert '<span id="run-headline" hx-swap-oob="true">' in body
    page = client_for(security_approver).get(f"/runs/{run.pk}/").content.decode()
    assert 'class="status status-rejected" data-status="blocked"' in page
    assert "rejected by <strong>sofia</strong>" in page
    assert "rejected by sofia: Not today" in page
    assert "hx-swap-oob" not in page  # the whole page carries the header once

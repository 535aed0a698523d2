"""The gate panel of the run page: what it shows (policy results, approvals per rule, who
may approve) and deciding from it — approve, reject, override — through the same htmx posts
the page makes. Refusals (separation of duties, a missing comment) are shown in the panel."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

governance_actions = pytest.importorskip(
    "governance.actions", reason="governance.actions (the gate verbs) is not there yet"
)


def panel(client, run) -> str:
    response = client.get(f"/runs/{run.pk}/gate-panel/")
    assert response.status_code == 200
    return response.content.decode()


def decide(client, run, gate, decision, comment=""):
    return client.post(
        f"/runs/{run.pk}/gates/{gate.pk}/decide/", {"decision": decision, "comment": comment}
    )


def test_the_panel_shows_rules_and_the_decision_form(gated, approver, second_approver, client_for):
    run, gate = gated
    body = client_for(approver).get(f"/runs/{run.pk}/").content.decode()
    assert 'id="gate-panel"' in body
    assert f'hx-get="/runs/{run.pk}/gate-panel/"' in body
    assert 'data-rule-group="sre"' in body and 'data-rule-group="security"' in body
    assert "sam, sara" in body  # who may approve for sre
    assert '<form id="approve-form"' in body
    assert 'textarea name="comment"' in body
    assert 'name="decision" value="approve"' in body and 'name="decision" value="reject"' in body
    assert 'id="override-form"' not in body  # nothing to override


def test_approving_from_the_panel(gated, approver, htmx_client_for):
    run, gate = gated
    client = htmx_client_for(approver)
    response = decide(client, run, gate, "approve", "Canary looks fine")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="gate-panel"')  # the partial, not the page
    assert 'id="gate-notice"' in body and "You approved." in body
    approval = gate.approvals.get()
    assert (approval.user, approval.decision, approval.comment) == (
        approver,
        "approve",
        "Canary looks fine",
    )
    assert "You approved this deployment" in body
    assert '<form id="approve-form"' not in body
    assert "(counts for sre)" in body


def test_rejecting_needs_a_comment(gated, approver, htmx_client_for):
    run, gate = gated
    client = htmx_client_for(approver)
    body = decide(client, run, gate, "reject", "  ").content.decode()
    assert "Say why you reject" in body
    assert not gate.approvals.exists()

    body = decide(client, run, gate, "reject", "Wrong version").content.decode()
    gate.refresh_from_db()
    run.refresh_from_db()
    assert gate.status == "rejected"
    assert run.status == "blocked"
    assert "rejected" in body


def test_separation_of_duties_is_shown_in_the_panel(
    make_run, finish_stage, approver, htmx_client_for
):
    """sam triggered the run: he may not approve it; the refusal is the panel's message."""
    from governance.models import Gate

    run = make_run(actor=approver)
    finish_stage(run, "build")
    gate = Gate.objects.get(stage_run__run=run)
    response = decide(htmx_client_for(approver), run, gate, "approve", "mine")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="gate-error"' in body and "separation of duties" in body
    # No form is offered to someone who would be refused; the panel says why instead.
    assert '<form id="approve-form"' not in body
    assert 'id="approve-refusal"' in body
    assert "Separation of duties: sam triggered this run and may not approve it." in body
    assert not gate.approvals.exists()


def test_who_may_approve_marks_separation_of_duties(run_at_gate, second_approver, client_for):
    run, _ = run_at_gate(parameters={"author": "sara"})
    body = panel(client_for(second_approver), run)
    assert "<s title=" in body and "sara</s>" in body


def test_override_from_the_panel(soft_policy, run_at_gate, approver, htmx_client_for):
    run, gate = run_at_gate()
    client = htmx_client_for(approver)
    body = panel(client, run)
    assert 'id="override-form"' in body and 'name="justification"' in body
    assert "enf-soft-mandatory" in body and "result-deny" in body
    assert "outside the change windows" in body

    body = client.post(
        f"/runs/{run.pk}/gates/{gate.pk}/override/", {"justification": "because"}
    ).content.decode()
    assert 'id="override-error"' in body
    assert not gate.overrides.exists()

    justification = "Hotfix for INC-4711, agreed with the on-call lead."
    body = client.post(
        f"/runs/{run.pk}/gates/{gate.pk}/override/", {"justification": justification}
    ).content.decode()
    # First a confirmation step that names the denial; nothing is recorded yet.
    assert 'id="override-confirm-form"' in body
    assert "change-window</span> v1" in body and "outside the change windows" in body
    assert not gate.overrides.exists()
    body = client.post(
        f"/runs/{run.pk}/gates/{gate.pk}/override/",
        {"justification": justification, "confirm": "yes"},
    ).content.decode()
    assert gate.overrides.get().justification == justification
    assert 'class="flag-override"' in body and justification in body
    assert 'id="override-form"' not in body  # the denial is passed


def test_only_overriders_see_the_override_form(
    soft_policy, run_at_gate, security_approver, client_for
):
    run, _ = run_at_gate()
    body = panel(client_for(security_approver), run)  # security may approve, not override
    assert '<form id="approve-form"' in body
    assert 'id="override-form"' not in body


def test_a_viewer_sees_the_panel_without_forms(gated, developer, client_for):
    run, _ = gated
    body = panel(client_for(developer), run)
    assert "You may not approve deployments to production." in body
    assert "approve-form" not in body and "override-form" not in body


def test_without_javascript_a_decision_redirects_with_a_message(gated, approver, client_for):
    run, gate = gated
    client = client_for(approver)
    response = decide(client, run, gate, "approve", "ok")
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.pk}/#gate-panel"
    assert "You approved." in client.get(response["Location"]).content.decode()


def test_a_run_without_gates_has_an_empty_panel(make_pipeline, developer, dispatched, client_for):
    from orchestrator import actions

    pipeline = make_pipeline(
        "tiny",
        definition=(
            "name: Tiny\nstages:\n  - name: build\n    steps:\n      - name: a\n        run: echo\n"
        ),
    )
    run = actions.trigger_run(pipeline, actor=developer)
    body = panel(client_for(developer), run)
    assert 'id="gate-panel" class="hidden"' in body

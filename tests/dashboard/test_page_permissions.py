"""Who may see and do what on the dashboard pages: a role × page table, both allowed and
denied. Objects a user may not see are 404 (never 403, which would confirm they exist); what
they may see but not do is 403; anonymous visitors go to the login page."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

ROLES = [
    "viewer",
    "developer",
    "outside_developer",
    "approver",
    "outsider",
    "policy_admin",
    "compliance_manager",
]
SEES_PIPELINE = {"viewer", "developer", "approver", "policy_admin", "compliance_manager"}


def expected_view(role: str) -> int:
    return 200 if role in SEES_PIPELINE else 404


def expected_change(role: str) -> int:
    if role == "developer":
        return 200
    return 403 if role in SEES_PIPELINE else 404


PAGES = {
    # name: (url template, expectation by role)
    "overview": ("/", lambda role: 200),
    "board": ("/board/", lambda role: 200),
    "pipelines": ("/pipelines/", lambda role: 200),
    "approvals": ("/approvals/", lambda role: 200),
    "approvals_count": ("/approvals/count/", lambda role: 200),
    "pipeline": ("/pipelines/payments-api/", expected_view),
    "versions": ("/pipelines/payments-api/versions/", expected_view),
    "diff": ("/pipelines/payments-api/diff/?from=1&to=1", expected_view),
    "run": ("/runs/{run}/", expected_view),
    "gate_panel": ("/runs/{run}/gate-panel/", expected_view),
    "edit": ("/pipelines/payments-api/edit/", expected_change),
    "new": ("/pipelines/new/", lambda role: 200 if role == "developer" else 403),
}


@pytest.mark.parametrize("role", ROLES)
def test_page_by_role(role, people, gated, client_for):
    """Every page for one role (one set-up per role keeps the table fast)."""
    run, _ = gated
    client = client_for(people[role])
    got, wanted = {}, {}
    for page, (template, expected) in PAGES.items():
        got[page] = client.get(template.format(run=run.pk)).status_code
        wanted[page] = expected(role)
    assert got == wanted


def test_anonymous_goes_to_login(gated, client_for):
    run, _ = gated
    client = client_for(None)
    for page, (template, _) in PAGES.items():
        response = client.get(template.format(run=run.pk))
        assert response.status_code == 302, page
        assert response["Location"].startswith("/accounts/login/?next="), page


@pytest.mark.parametrize("role", ROLES)
def test_lists_show_only_visible_pipelines(role, people, gated, client_for):
    body = client_for(people[role]).get("/").content.decode()
    listed = 'data-pipeline="payments-api"' in body
    assert listed == (role in SEES_PIPELINE)
    assert ("Payments API #" in body) == (role in SEES_PIPELINE)
    pipelines = client_for(people[role]).get("/pipelines/").content.decode()
    assert ('data-pipeline="payments-api"' in pipelines) == (role in SEES_PIPELINE)


@pytest.mark.parametrize(
    "role, expected",
    [
        ("developer", 302),
        ("viewer", 403),
        ("approver", 403),
        ("policy_admin", 403),
        ("compliance_manager", 403),
        ("outside_developer", 404),
        ("outsider", 404),
    ],
)
def test_trigger_cancel_retry_by_role(role, expected, people, pipeline, make_run, client_for):
    from orchestrator.models import Run

    client = client_for(people[role])
    before = Run.objects.count()
    response = client.post("/pipelines/payments-api/run/", {"version": "2.0.0"})
    assert response.status_code == expected
    assert Run.objects.count() == before + (1 if expected == 302 else 0)

    run = make_run()
    response = client.post(f"/runs/{run.pk}/cancel/")
    assert response.status_code == expected
    run.refresh_from_db()
    assert (run.status == "canceled") == (expected == 302)

    if expected != 302:
        from orchestrator import actions

        actions.cancel_run(run, actor=None)
    before = Run.objects.count()
    response = client.post(f"/runs/{run.pk}/retry/")
    assert response.status_code == expected
    assert Run.objects.count() == before + (1 if expected == 302 else 0)


@pytest.mark.parametrize(
    "role, expected",
    [
        ("approver", 200),  # sre: may approve production
        ("security_approver", 200),
        ("developer", 403),  # sees the run, may not approve
        ("viewer", 403),
        ("policy_admin", 403),
        ("compliance_manager", 403),
        ("outsider", 404),
        ("outside_developer", 404),
    ],
)
def test_gate_decision_by_role(role, expected, people, gated, htmx_client_for):
    run, gate = gated
    response = htmx_client_for(people[role]).post(
        f"/runs/{run.pk}/gates/{gate.pk}/decide/", {"decision": "approve", "comment": "ok"}
    )
    assert response.status_code == expected
    assert gate.approvals.exists() == (expected == 200)


@pytest.mark.parametrize(
    "role, expected",
    [("approver", 200), ("security_approver", 403), ("developer", 403), ("outsider", 404)],
)
def test_override_by_role(role, expected, people, soft_policy, run_at_gate, htmx_client_for):
    run, gate = run_at_gate()
    response = htmx_client_for(people[role]).post(
        f"/runs/{run.pk}/gates/{gate.pk}/override/",
        {"justification": "Hotfix for INC-4711, agreed with the on-call lead.", "confirm": "yes"},
    )
    assert response.status_code == expected
    assert gate.overrides.exists() == (expected == 200)


def test_navigation_by_role(people, client_for):
    """Audit and Reports links only for those who may use them; Approvals for everyone."""
    from django.urls import NoReverseMatch, reverse

    def resolves(name):
        try:
            return reverse(name)
        except NoReverseMatch:
            return None

    reports = resolves("governance:reports")
    for role in ROLES:
        body = client_for(people[role]).get("/").content.decode()
        assert 'id="inbox-badge"' in body
        assert 'id="live-indicator"' in body
        if reports:
            assert (f'href="{reports}"' in body) == (role == "compliance_manager"), role

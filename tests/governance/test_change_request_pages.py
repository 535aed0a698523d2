"""The change-request pages: the list (what waits for you, yours, recent) without N+1, and
one request's review page with reject, withdraw and a superuser's apply-alone."""

from __future__ import annotations

import pytest
from django.test import Client

from governance import change_requests
from governance.models import AuditEvent, ChangeRequest, Outcome

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def proposals(production, staging, policy_admin):
    return [
        change_requests.propose_environment_update(
            env, actor=policy_admin, settings={"approval_ttl_hours": hours}
        )
        for env, hours in ((production, 2), (staging, 3))
    ]


def test_the_list_shows_what_waits_for_a_reviewer(
    proposals, second_policy_admin, django_assert_max_num_queries
):
    client = _client(second_policy_admin)
    with django_assert_max_num_queries(12):
        page = client.get("/change-requests/").content.decode()
    assert page.count("approval_ttl_hours") == 2
    assert "Nothing waits for your review" not in page


def test_the_list_query_count_does_not_grow(
    production, policy_admin, second_policy_admin, django_assert_max_num_queries, make_policy
):
    source = 'package clearway.x\n\nimport rego.v1\n\ndeny contains "x" if false\n'
    for n in range(6):
        policy = make_policy(f"p{n}", source)
        change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=False)
    client = _client(second_policy_admin)
    with django_assert_max_num_queries(12):
        page = client.get("/change-requests/").content.decode()
    assert page.count("disable p") == 6


def test_the_proposer_sees_it_waits_and_may_withdraw(proposals, policy_admin):
    client = _client(policy_admin)
    assert "Nothing waits for your review" in client.get("/change-requests/").content.decode()
    page = client.get(f"/change-requests/{proposals[0].pk}/").content.decode()
    assert "waits for a second environment admin" in page
    response = client.post(f"/change-requests/{proposals[0].pk}/", {"action": "withdraw"})
    assert response.status_code == 302
    assert ChangeRequest.objects.get(pk=proposals[0].pk).status == "withdrawn"


def test_a_rejection_needs_a_comment(proposals, production, second_policy_admin):
    client = _client(second_policy_admin)
    url = f"/change-requests/{proposals[0].pk}/"
    assert client.post(url, {"action": "reject", "comment": ""}).status_code == 400
    assert client.post(url, {"action": "reject", "comment": "too short a TTL"}).status_code == 302
    production.refresh_from_db()
    assert production.approval_ttl_hours == 24
    assert AuditEvent.objects.get(action="change_request.reject", outcome="success")


def test_someone_without_the_permission_may_not_decide(proposals, viewer, approver):
    # Not even visible to a viewer: 404, and nothing to decide for an approver either.
    assert _client(viewer).get(f"/change-requests/{proposals[0].pk}/").status_code == 404
    response = _client(approver).post(f"/change-requests/{proposals[0].pk}/", {"action": "approve"})
    assert response.status_code == 404


def test_a_superuser_applies_alone_from_the_page(proposals, production, superuser):
    client = _client(superuser)
    url = f"/change-requests/{proposals[0].pk}/"
    page = client.get(url).content.decode()
    assert 'id="cr-alone-form"' in page
    short = client.post(url, {"action": "apply-alone", "justification": "because"})
    assert short.status_code == 400 and "at least 20 characters" in short.content.decode()
    denied = AuditEvent.objects.get(action="change_request.apply_alone")
    assert denied.outcome == Outcome.DENIED
    done = client.post(
        url, {"action": "apply-alone", "justification": "change freeze lifted by the CAB"}
    )
    assert done.status_code == 302
    production.refresh_from_db()
    assert production.approval_ttl_hours == 2
    assert ChangeRequest.objects.get(pk=proposals[0].pk).exception

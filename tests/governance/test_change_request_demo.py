"""The demo seeds one pending policy change request by paula for pierre, the second policy
admin, to review (issue 16); seeding again adds none."""

from __future__ import annotations

import pytest
from django.utils import timezone

from dashboard.demo.policies import seed_change_request, seed_policies
from governance import change_requests
from governance.models import ChangeRequest, Policy

pytestmark = pytest.mark.django_db


def test_the_demo_has_a_pending_request_for_pierre(production, policy_admin, second_policy_admin):
    seed_policies(policy_admin, now=timezone.now())
    seeded = seed_change_request(policy_admin)
    assert seeded.status == "pending" and seeded.proposed_by == policy_admin
    assert seeded.policy.name == "main-branch" and seeded.payload["enforcement"] == "soft-mandatory"
    assert seeded.checks["tests"]["total"] >= 1 and "would have blocked" in seeded.summary
    assert list(change_requests.pending_for(second_policy_admin)) == [seeded]
    assert seed_change_request(policy_admin) == seeded
    assert ChangeRequest.objects.count() == 1
    # Still advisory until pierre approves.
    assert Policy.objects.get(name="main-branch").current_version.enforcement == "advisory"

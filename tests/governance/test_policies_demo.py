"""The demo policies publish through the policy verbs with their test cases passing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard.demo.policies import seed_policies
from governance import audit
from governance.models import AuditEvent, Policy, PolicyVersion

pytestmark = pytest.mark.django_db

EXPECTED = {
    "prod-approvals": "hard-mandatory",
    "freeze": "hard-mandatory",
    "change-window": "soft-mandatory",
    "tests-passed": "hard-mandatory",
    "main-branch": "advisory",
    "plan-no-open-ingress": "hard-mandatory",
    "plan-stateful-destroy": "hard-mandatory",
    "plan-required-tags": "soft-mandatory",
    "plan-max-destroy": "hard-mandatory",
    "plan-required": "hard-mandatory",
}


@pytest.fixture
def prod(environments):
    return environments["production"]


def test_the_demo_policies_are_published_with_passing_tests(prod, policy_admin):
    author = policy_admin
    now = timezone.now() - timedelta(days=61)
    assert seed_policies(author, now=now) == 10
    found = {p.name: p for p in Policy.objects.select_related("current_version")}
    assert {name: p.enforcement for name, p in found.items()} == EXPECTED
    for name, policy in found.items():
        version = policy.current_version
        assert version is not None and version.number == 1, name
        assert version.enforcement == EXPECTED[name]
        assert version.author == author and version.created_at == now
        assert version.test_results, f"{name} has no test cases"
        assert all(r["passed"] for r in version.test_results), version.test_results
        assert [e.name for e in policy.environments.all()] == ["production"]
        assert policy.enabled and policy.description
    publishes = AuditEvent.objects.filter(action="policy.publish", outcome="success")
    assert publishes.count() == 10
    assert audit.verify().ok


def test_seeding_twice_changes_nothing(prod, policy_admin):
    author = policy_admin
    seed_policies(author, now=timezone.now())
    events = AuditEvent.objects.count()
    assert seed_policies(author, now=timezone.now()) == 10
    assert AuditEvent.objects.count() == events
    assert PolicyVersion.objects.count() == 10


def test_an_interrupted_seed_is_completed(prod, policy_admin):
    author = policy_admin
    seed_policies(author, now=timezone.now())
    freeze = Policy.objects.get(name="freeze")
    Policy.objects.filter(pk=freeze.pk).update(current_version=None)
    PolicyVersion.objects.filter(policy=freeze).delete()
    seed_policies(author, now=timezone.now())
    freeze.refresh_from_db()
    assert freeze.current_version is not None

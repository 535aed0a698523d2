"""The demo's policies: the ten shipped in governance/demo_policies (five about the
deployment, five about the terraform plan it applies), scoped to production and
published with their test cases through the product's own policy verbs (so the audit chain
verifies and every version has passing test results)."""

from __future__ import annotations

from datetime import datetime

from governance import change_requests, policies, rego
from governance.models import ChangeRequest, ChangeRequestStatus, Enforcement, Policy

# Enforcement per demo policy (the same as their header comments; this table is the contract).
ENFORCEMENT = {
    "prod-approvals": Enforcement.HARD_MANDATORY,
    "freeze": Enforcement.HARD_MANDATORY,
    "change-window": Enforcement.SOFT_MANDATORY,
    "tests-passed": Enforcement.HARD_MANDATORY,
    "main-branch": Enforcement.ADVISORY,
    "plan-no-open-ingress": Enforcement.HARD_MANDATORY,
    "plan-stateful-destroy": Enforcement.HARD_MANDATORY,
    "plan-required-tags": Enforcement.SOFT_MANDATORY,
    "plan-max-destroy": Enforcement.HARD_MANDATORY,
    "plan-required": Enforcement.HARD_MANDATORY,
}
SCOPE = ["production"]


def seed_policies(author, *, now: datetime) -> int:
    """Create and publish the demo policies. Idempotent: an existing policy is left as it is,
    except that one never published (an interrupted seed) is published now. Returns the
    number of demo policies in place."""
    count = 0
    for demo in rego.demo_policies():
        name = demo["name"]
        policy = Policy.objects.filter(name=name).first()
        if policy is None:
            description = demo["title"]
            if demo["description"]:
                description = f"{demo['title']}. {demo['description']}"
            policy = policies.create_policy(
                actor=author,
                name=name,
                source=demo["source"],
                enforcement=ENFORCEMENT.get(name, demo["enforcement"]),
                description=description,
                environments=SCOPE,
                test_cases=demo["tests"],
                now=now,
            )
        if policy.current_version is None:
            policies.publish_policy(policy, actor=author, now=now)
        count += 1
    return count


# The pending four-eyes request the demo shows: paula proposes making main-branch
# soft-mandatory; pierre (the second policy admin) reviews it on /change-requests/.
PROPOSED = ("main-branch", Enforcement.SOFT_MANDATORY)


def seed_change_request(author) -> ChangeRequest | None:
    """Idempotent: nothing when a request on the policy is pending already, or it is gone."""
    name, enforcement = PROPOSED
    policy = Policy.objects.filter(name=name).first()
    if policy is None:
        return None
    pending = ChangeRequest.objects.filter(policy=policy, status=ChangeRequestStatus.PENDING)
    if pending.exists():
        return pending.first()
    if policy.enforcement != enforcement:
        policy = policies.save_draft(policy, actor=author, enforcement=enforcement)
    try:
        return change_requests.propose_policy_publish(policy, actor=author)
    except policies.PolicyUnchanged:
        return None

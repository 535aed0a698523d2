"""Four eyes on governance changes (governance.change_requests): a change to a policy or an
environment takes effect only when a second person with the same permission approves it."""

from __future__ import annotations

import json

import pytest

from governance import change_requests, policies, rego
from governance.change_requests import (
    ChangeRequestConflict,
    ChangeRequestInvalid,
    ChangeRequestRefused,
)
from governance.models import (
    CHANGE_REQUEST_MACHINE,
    AuditEvent,
    ChangeRequest,
    ChangeRequestStatus,
    Outcome,
)

pytestmark = pytest.mark.django_db

SOURCE = """package clearway.branch

import rego.v1

deny contains msg if {
	input.run.parameters.branch != "main"
	msg := sprintf("branch %s is not main", [input.run.parameters.branch])
}
"""

SOURCE_V2 = SOURCE.replace('!= "main"', 'in {"dev", "wip"}')


def case(name, branch, deny):
    doc = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    doc["run"]["parameters"]["branch"] = branch
    return {"name": name, "input": doc, "expect": {"deny": deny}}


# Publishing needs a denying and a passing case (policies.missing_test_kinds).
CASES = [case("dev is refused", "dev", ["branch dev is not main"]), case("main passes", "main", [])]


@pytest.fixture
def draft(make_policy, policy_admin):
    policy = make_policy("branch", SOURCE)
    return policies.save_draft(policy, actor=policy_admin, source=SOURCE_V2, test_cases=CASES)


def test_a_publication_waits_for_a_second_policy_admin(draft, policy_admin, second_policy_admin):
    proposed = change_requests.propose_policy_publish(draft, actor=policy_admin)
    draft.refresh_from_db()
    assert proposed.status == ChangeRequestStatus.PENDING
    assert draft.current_version.number == 1  # nothing took effect yet
    assert proposed.diff["fields"][0]["field"] == "source"
    assert any(line.startswith("+") for line in proposed.diff["source_lines"])
    assert proposed.checks["dry_run"]["summary"].startswith("would have blocked 0 of 0 releases")
    assert change_requests.pending_for(second_policy_admin).get() == proposed
    assert not change_requests.pending_for(policy_admin).exists()

    done = change_requests.approve(proposed, actor=second_policy_admin, comment="looks right")
    draft.refresh_from_db()
    assert done.status == ChangeRequestStatus.APPLIED
    assert done.decided_by == second_policy_admin
    assert draft.current_version.number == 2 and draft.current_version.source == SOURCE_V2
    publish = AuditEvent.objects.get(action="policy.publish", outcome=Outcome.SUCCESS)
    assert publish.details["proposed_by"] == "paula"
    assert publish.details["approved_by"] == "pierre"
    applied = AuditEvent.objects.get(action="change_request.apply")
    assert (applied.details["proposed_by"], applied.details["approved_by"]) == ("paula", "pierre")


def test_the_proposer_cannot_approve_their_own_request(draft, policy_admin):
    proposed = change_requests.propose_policy_publish(draft, actor=policy_admin)
    with pytest.raises(ChangeRequestRefused, match="four eyes"):
        change_requests.approve(proposed, actor=policy_admin)
    proposed.refresh_from_db()
    draft.refresh_from_db()
    assert proposed.status == ChangeRequestStatus.PENDING
    assert draft.current_version.number == 1
    refused = AuditEvent.objects.get(action="change_request.approve")
    assert refused.outcome == Outcome.DENIED and refused.details["rule"] == "own-request"


def test_a_stale_request_is_refused(draft, policy_admin, second_policy_admin):
    proposed = change_requests.propose_policy_publish(draft, actor=policy_admin)
    policies.save_draft(draft, actor=policy_admin, source=SOURCE_V2 + "\n# later edit\n")
    with pytest.raises(ChangeRequestConflict, match="changed after this request was proposed"):
        change_requests.approve(proposed, actor=second_policy_admin)
    proposed.refresh_from_db()
    assert proposed.status == ChangeRequestStatus.PENDING
    refused = AuditEvent.objects.get(action="change_request.approve")
    assert refused.outcome == Outcome.DENIED and refused.details["rule"] == "stale"


def test_a_superuser_may_apply_alone_with_a_justification(draft, policy_admin, superuser):
    proposed = change_requests.propose_policy_publish(draft, actor=policy_admin)
    with pytest.raises(ChangeRequestInvalid, match="at least 20 characters"):
        change_requests.apply_alone_as_superuser(proposed, actor=superuser, justification="now")
    with pytest.raises(ChangeRequestRefused):
        change_requests.apply_alone_as_superuser(
            proposed, actor=policy_admin, justification="x" * 30
        )
    done = change_requests.apply_alone_as_superuser(
        proposed, actor=superuser, justification="incident 42: the gate blocks a hotfix"
    )
    assert done.status == ChangeRequestStatus.APPLIED and done.exception
    draft.refresh_from_db()
    assert draft.current_version.number == 2


def test_disabling_a_policy_is_a_change_request(make_policy, policy_admin, second_policy_admin):
    policy = make_policy("branch", SOURCE)
    proposed = change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=False)
    policy.refresh_from_db()
    assert policy.enabled and proposed.summary == "disable branch"
    assert change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=True) is None
    change_requests.approve(proposed, actor=second_policy_admin)
    policy.refresh_from_db()
    assert not policy.enabled
    event = AuditEvent.objects.get(action="policy.disable")
    assert event.actor_name == "pierre" and event.details["proposed_by"] == "paula"


def test_a_new_proposal_supersedes_the_pending_one(make_policy, production, policy_admin):
    policy = make_policy("branch", SOURCE)
    first = change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=False)
    second = change_requests.propose_policy_scope(policy, actor=policy_admin, environments=[])
    first.refresh_from_db()
    assert first.status == ChangeRequestStatus.SUPERSEDED
    assert second.status == ChangeRequestStatus.PENDING


def test_cutting_production_approvals_waits_for_a_second_admin(
    production, roles, policy_admin, second_policy_admin
):
    proposed = change_requests.propose_environment_update(
        production, actor=policy_admin, rules={roles["security"]: 1}, settings={"protected": False}
    )
    production.refresh_from_db()
    assert production.protected and production.approval_rules.count() == 2
    fields = {row["field"] for row in proposed.diff["fields"]}
    assert {"protected", "approval rule sre"} <= fields
    change_requests.approve(proposed, actor=second_policy_admin)
    production.refresh_from_db()
    assert not production.protected
    assert list(production.approval_rules.values_list("group__name", flat=True)) == ["security"]
    update = AuditEvent.objects.get(action="environment.update")
    assert (update.details["proposed_by"], update.details["approved_by"]) == ("paula", "pierre")


def test_an_environment_changed_since_is_stale(
    production, policy_admin, second_policy_admin, superuser
):
    proposed = change_requests.propose_environment_update(
        production, actor=policy_admin, settings={"approval_ttl_hours": 1}
    )
    other = change_requests.propose_environment_update(
        production, actor=superuser, freeze_windows=[]
    )
    assert other is None  # nothing to change: no request
    production.reminder_minutes = 5
    production.save()
    with pytest.raises(ChangeRequestConflict, match="was changed after"):
        change_requests.approve(proposed, actor=second_policy_admin)


def test_reject_and_withdraw(make_policy, policy_admin, second_policy_admin):
    policy = make_policy("branch", SOURCE)
    proposed = change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=False)
    with pytest.raises(ChangeRequestInvalid):
        change_requests.reject(proposed, actor=second_policy_admin, comment="")
    with pytest.raises(ChangeRequestRefused):
        change_requests.withdraw(proposed, actor=second_policy_admin)
    change_requests.reject(proposed, actor=second_policy_admin, comment="keep it on")
    proposed.refresh_from_db()
    assert proposed.status == ChangeRequestStatus.REJECTED
    with pytest.raises(ChangeRequestConflict):
        change_requests.approve(proposed, actor=second_policy_admin)
    again = change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=False)
    change_requests.withdraw(again, actor=policy_admin)
    again.refresh_from_db()
    assert again.status == ChangeRequestStatus.WITHDRAWN
    policy.refresh_from_db()
    assert policy.enabled


def test_statuses_follow_the_machine():
    assert CHANGE_REQUEST_MACHINE.terminal == {
        ChangeRequestStatus.REJECTED,
        ChangeRequestStatus.APPLIED,
        ChangeRequestStatus.WITHDRAWN,
        ChangeRequestStatus.SUPERSEDED,
    }
    assert CHANGE_REQUEST_MACHINE.allows("approved", "pending")  # applying failed
    assert not CHANGE_REQUEST_MACHINE.allows("pending", "applied")


# role × action: who may propose and who may approve a policy change / an environment change
MATRIX = [
    ("policy", "viewer", False, False),
    ("policy", "approver", False, False),
    ("policy", "compliance_manager", False, False),
    ("policy", "second_policy_admin", True, True),
    ("policy", "superuser", True, True),
    ("environment", "viewer", False, False),
    ("environment", "approver", False, False),
    ("environment", "second_policy_admin", True, True),
    ("environment", "superuser", True, True),
]


@pytest.mark.parametrize("target,role,may_propose,may_approve", MATRIX)
def test_permission_matrix(
    request, target, role, may_propose, may_approve, make_policy, production, policy_admin
):
    user = request.getfixturevalue(role)
    policy = make_policy("branch", SOURCE)

    def propose(actor):
        if target == "policy":
            return change_requests.propose_policy_scope(policy, actor=actor, enabled=False)
        return change_requests.propose_environment_update(
            production, actor=actor, settings={"approval_ttl_hours": 2}
        )

    if may_propose:
        propose(user).delete()
    else:
        with pytest.raises(ChangeRequestRefused):
            propose(user)
        assert AuditEvent.objects.filter(
            action="change_request.propose", outcome=Outcome.DENIED, actor_name=user.username
        ).exists()
    proposed = propose(policy_admin)
    if may_approve:
        assert change_requests.approve(proposed, actor=user).status == "applied"
    else:
        with pytest.raises(ChangeRequestRefused):
            change_requests.approve(proposed, actor=user)
        assert ChangeRequest.objects.get(pk=proposed.pk).status == "pending"


def test_eligible_reviewers_are_told_a_request_waits(
    make_policy,
    policy_admin,
    second_policy_admin,
    viewer,
    celery_eager,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    from governance.models import NotificationPreference

    policy = make_policy("branch", SOURCE)
    with django_capture_on_commit_callbacks(execute=True):
        proposed = change_requests.propose_policy_scope(policy, actor=policy_admin, enabled=False)
    assert [m.to for m in mailoutbox] == [["pierre@example.test"]]  # not paula, not vic
    assert "A governance change request waits for you: disable branch" in mailoutbox[0].subject
    assert f"/change-requests/{proposed.pk}/" in mailoutbox[0].body
    NotificationPreference.objects.create(user=second_policy_admin, events=["waiting"])
    with django_capture_on_commit_callbacks(execute=True):
        change_requests.propose_policy_scope(policy, actor=policy_admin, tiers=["staging"])
    assert len(mailoutbox) == 1  # pierre opted out of change_request notifications

"""Four eyes on governance changes, on PostgreSQL (issue 16 acceptance): the proposer cannot
approve their own change request; a change takes effect only on approval and is audited with
both people; a superuser's lone change is flagged in the change report's exceptions; a stale
request is refused; two reviewers approving at once apply the change once. Committed rows,
row locks and the audit chain are PostgreSQL's (transactional tests), through the real
pages and API."""

from __future__ import annotations

import json
import threading

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connections
from django.test import Client
from rest_framework.test import APIClient

from governance import audit, change_requests, policies
from governance.models import (
    AuditEvent,
    ChangeRequest,
    Enforcement,
    Environment,
    Outcome,
    Policy,
    Tier,
)
from governance.roles import ensure_roles

pytestmark = pytest.mark.integration

SOURCE = """package clearway.it_branch

import rego.v1

deny contains "not main" if input.run.parameters.branch != "main"
"""
SOURCE_V2 = SOURCE + '\nwarn contains "release" if input.run.parameters.branch == "release"\n'


def _case(name: str, branch: str, deny: list) -> dict:
    from governance import rego

    doc = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    doc["run"]["parameters"]["branch"] = branch
    return {"name": name, "input": doc, "expect": {"deny": deny}}


def _cases() -> list[dict]:
    """Publishing needs a denying and a passing case (policies.missing_test_kinds)."""
    return [_case("dev is refused", "dev", ["not main"]), _case("main passes", "main", [])]


def _people():
    from django.contrib.auth.models import User

    ensure_roles(Group, Permission)
    admins = Group.objects.get(name="policy-admin")
    out = {}
    for name in ("it-paula", "it-pierre"):
        user, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@x.test"})
        user.groups.add(admins)
        out[name] = user
    out["it-root"] = User.objects.filter(
        username="it-root"
    ).first() or User.objects.create_superuser("it-root", "root@x.test")
    carl, _ = User.objects.get_or_create(username="it-carl")
    carl.groups.add(Group.objects.get(name="compliance-manager"))
    out["it-carl"] = carl
    return out


def _policy(author) -> Policy:
    env, _ = Environment.objects.get_or_create(
        name="prod-it", defaults={"tier": Tier.PRODUCTION, "protected": True}
    )
    policy = policies.create_policy(
        actor=author,
        name="it-branch",
        source=SOURCE,
        enforcement=Enforcement.ADVISORY,
        environments=[env],
    )
    return policies.save_draft(policy, actor=author, source=SOURCE_V2, test_cases=_cases())


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_proposer_cannot_approve_their_own_request(live_db):
    people = _people()
    paula = people["it-paula"]
    policy = _policy(paula)
    response = _client(paula).post(f"/policies/{policy.pk}/", _form(policy, "publish"))
    assert response.status_code == 302
    proposed = ChangeRequest.objects.get(policy=policy)
    response = _client(paula).post(f"/change-requests/{proposed.pk}/", {"action": "approve"})
    assert response.status_code == 403
    assert "four eyes" in response.content.decode()
    proposed.refresh_from_db()
    policy.refresh_from_db()
    assert proposed.status == "pending" and policy.current_version is None
    # The refusal was committed although the attempt rolled back.
    refused = AuditEvent.objects.get(action="change_request.approve")
    assert refused.outcome == Outcome.DENIED and refused.details["rule"] == "own-request"
    assert refused.actor_name == "it-paula"
    assert audit.verify().ok


def test_a_change_takes_effect_only_on_approval_audited_with_both_people(live_db):
    people = _people()
    paula, pierre = people["it-paula"], people["it-pierre"]
    policy = _policy(paula)
    api = APIClient()
    api.force_authenticate(paula)
    response = api.post(f"/api/v1/policies/{policy.pk}/publish/")
    assert response.status_code == 202, response.data
    pk = response.json()["change_request"]["id"]
    policy.refresh_from_db()
    assert policy.current_version is None  # proposed, not in effect
    assert not AuditEvent.objects.filter(action="policy.publish").exists()

    review = _client(pierre).get(f"/change-requests/{pk}/").content.decode()
    assert "would have blocked" in review and "1 of 1 passed" not in review  # no test cases
    response = _client(pierre).post(
        f"/change-requests/{pk}/", {"action": "approve", "comment": "reviewed"}
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.current_version.number == 1 and policy.current_version.source == SOURCE_V2
    publish = AuditEvent.objects.get(action="policy.publish", outcome=Outcome.SUCCESS)
    assert publish.actor_name == "it-pierre"
    assert (publish.details["proposed_by"], publish.details["approved_by"]) == (
        "it-paula",
        "it-pierre",
    )
    applied = AuditEvent.objects.get(action="change_request.apply", outcome=Outcome.SUCCESS)
    assert applied.details["proposed_by"] == "it-paula" and not applied.details["exception"]
    assert audit.verify().ok

    carl = APIClient()
    carl.force_authenticate(people["it-carl"])
    doc = json.loads(
        b"".join(carl.get("/api/v1/reports/changes", {"format": "json"}).streaming_content)
    )
    changed = [e for e in doc["exceptions"] if e["kind"] == "policy-change"]
    assert any("proposed by it-paula, approved by it-pierre" in e["detail"] for e in changed)


def test_a_superusers_lone_change_is_flagged_in_the_exceptions_report(live_db):
    people = _people()
    root = people["it-root"]
    env = Environment.objects.create(name="lone-it", tier=Tier.PRODUCTION, protected=True)
    proposed = change_requests.propose_environment_update(
        env, actor=root, settings={"protected": False}
    )
    api = APIClient()
    api.force_authenticate(root)
    short = api.post(f"/api/v1/change-requests/{proposed.pk}/apply-alone/", {"justification": "x"})
    assert short.status_code == 400
    done = api.post(
        f"/api/v1/change-requests/{proposed.pk}/apply-alone/",
        {"justification": "incident 7: unprotect to unblock the rollback"},
        format="json",
    )
    assert done.status_code == 200, done.data
    assert done.json()["exception"] is True and done.json()["status"] == "applied"
    env.refresh_from_db()
    assert not env.protected
    carl = APIClient()
    carl.force_authenticate(people["it-carl"])
    doc = json.loads(
        b"".join(carl.get("/api/v1/reports/changes", {"format": "json"}).streaming_content)
    )
    lone = [e for e in doc["exceptions"] if e["kind"] == "lone-change"]
    assert len(lone) == 1
    assert lone[0]["actor"] == "it-root" and "incident 7" in lone[0]["detail"]
    assert lone[0]["subject"] == "lone-it" and lone[0]["audit_seq"]


def test_a_stale_request_is_refused(live_db):
    people = _people()
    paula, pierre = people["it-paula"], people["it-pierre"]
    policy = _policy(paula)
    proposed = change_requests.propose_policy_publish(policy, actor=paula)
    # paula saves another draft after proposing: what pierre would approve is not what he
    # would review.
    edited = {**_form(policy, "save"), "source": SOURCE_V2 + "\n# one more line\n"}
    assert _client(paula).post(f"/policies/{policy.pk}/", edited).status_code == 302
    response = _client(pierre).post(f"/change-requests/{proposed.pk}/", {"action": "approve"})
    assert response.status_code == 409
    assert "changed after this request was proposed" in response.content.decode()
    policy.refresh_from_db()
    proposed.refresh_from_db()
    assert policy.current_version is None and proposed.status == "pending"
    refused = AuditEvent.objects.get(action="change_request.approve")
    assert refused.outcome == Outcome.DENIED and refused.details["rule"] == "stale"


def test_two_reviewers_approving_at_once_apply_it_once(live_db):
    people = _people()
    paula = people["it-paula"]
    env = Environment.objects.create(name="race-it", tier=Tier.STAGING)
    proposed = change_requests.propose_environment_update(
        env, actor=paula, settings={"reminder_minutes": 5}
    )
    results: list = []
    barrier = threading.Barrier(2)

    def approve(user):
        try:
            barrier.wait(timeout=10)
            change_requests.approve(proposed, actor=user)
            results.append("applied")
        except change_requests.ChangeRequestError as exc:
            results.append(exc.rule)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=approve, args=(user,))
        for user in (people["it-pierre"], people["it-root"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["applied", "state"]
    assert AuditEvent.objects.filter(action="environment.update").count() == 1
    assert audit.verify().ok


def _form(policy: Policy, action: str) -> dict:
    return {
        "action": action,
        "source": policy.source,
        "enforcement": policy.enforcement,
        "description": policy.description,
        "environments": [e.name for e in policy.environments.all()],
        "test_cases": json.dumps(policy.test_cases),
        "enabled": "on",
        "days": "30",
    }

"""The access snapshot: who could approve / override each protected environment at a date,
reconstructed from role.* and permission.* audit events when they explain the current state,
else the current state with a note."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone
from guardian.models import GroupObjectPermission
from guardian.shortcuts import assign_perm

from governance.models import AuditEvent, Environment, Tier

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    api_for,
    make_user,
    people_fixture,
    split_trailer,
)

URL = "/api/v1/reports/access"


def snapshot(user, **params):
    response = api_for(user).get(URL, params)
    assert response.status_code == 200, response.content
    return response.content, json.loads(response.content)


def names(env: dict, key: str) -> dict:
    return {p["user"]: p["via"] for p in env[key]}


@pytest.fixture
def prod(people):
    env = Environment.objects.create(name="production", tier=Tier.PRODUCTION, protected=True)
    assign_perm("governance.approve_environment", Group.objects.get(name="sre"), env)
    assign_perm("governance.override_environment", people["oncall"], env)
    return env


def test_reconstructed_from_audit_events(people, prod):
    carl = people["compliance-manager"]
    before = timezone.now()
    late = make_user("late-joiner", "sre")
    people["approver2"].groups.remove(Group.objects.get(name="sre"))
    _, then = snapshot(carl, date=before.isoformat())
    _, now = snapshot(carl)
    assert then["header"]["basis"] == "reconstructed from audit events"
    (env_then,) = then["environments"]
    (env_now,) = now["environments"]
    assert env_then["environment"] == "production"
    approvers_then = names(env_then, "approvers")
    assert approvers_then["zoë.ångström"] == ["group sre"]
    assert "李雷" in approvers_then and "late-joiner" not in approvers_then
    assert approvers_then["admin"] == ["superuser"]
    approvers_now = names(env_now, "approvers")
    assert "late-joiner" in approvers_now and "李雷" not in approvers_now
    assert late.pk
    assert names(env_now, "overriders")["olga"] == ["user grant"]
    assert "dana" not in approvers_now and "carl" not in approvers_now


def test_unexplained_permissions_fall_back_to_the_current_state(people, prod):
    staging = Environment.objects.create(name="staging", protected=True)
    perm = Permission.objects.get(codename="approve_environment")
    # A grant made without signals (bulk): the audit trail cannot explain it.
    GroupObjectPermission.objects.bulk_create(
        [
            GroupObjectPermission(
                group=Group.objects.get(name="security"),
                permission=perm,
                content_type=ContentType.objects.get_for_model(Environment),
                object_pk=str(staging.pk),
            )
        ]
    )
    _, doc = snapshot(people["compliance-manager"], date=timezone.now().isoformat())
    assert doc["header"]["basis"] == "current state"
    assert "CURRENT state" in doc["header"]["notes"][0]
    staging_env = next(e for e in doc["environments"] if e["environment"] == "staging")
    assert names(staging_env, "approvers")["sofia"] == ["group security"]


def test_document_has_header_trailer_and_is_audited(people, prod):
    data, doc = snapshot(people["compliance-manager"], date="2026-01-31")
    body, last = split_trailer(data)
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    assert doc["header"]["filters"] == {"date": "2026-02-01T00:00:00Z"}
    assert doc["chain_verification"]["ok"] is True
    event = AuditEvent.objects.get(action="report.export")
    assert event.target_name == "access" and event.details["rows"] == {"environments": 1}


def test_bad_date_is_400(people):
    response = api_for(people["compliance-manager"]).get(URL, {"date": "31/01/2026"})
    assert response.status_code == 400 and response.json()["parameter"] == "date"


def test_access_page(client, people, prod):
    client.force_login(people["compliance-manager"])
    today = timezone.now().date().isoformat()
    html = client.get("/reports/access/", {"date": today}).content.decode()
    assert "Could approve" in html and "zoë.ångström" in html and "reconstructed" in html
    assert client.get("/reports/access/", {"date": "nope"}).status_code == 400

"""Fixtures for the hardening tests: one small world with a person for every role, built once
per module and rolled back at its end.

`build_world()` drives the real code (orchestrator.actions, the engine, gate checks with a
real policy evaluation) the way tests/conftest.py does, but without pytest fixtures, so that a
module-scoped fixture can call it: the permission matrix sends about a thousand requests and
must not rebuild the world for each role. Every request of the matrix runs in its own
savepoint that is rolled back (see test_permission_matrix.call), so the world stays the same
for every role and every route.

Roles (usernames as in the demo where there is one):
    anonymous            nobody signed in
    viewer               vic: viewer role (view every pipeline)
    developer            dana: developer of team-payments, which owns payments-api
    rival                omar: developer of team-platform (owns platform-infra, not payments-api)
    outsider             olga: signed in, no role, no team
    approver             sam: approver role + sre (approves and overrides production)
    policy_admin         paula: policy-admin role
    compliance_manager   carl: compliance-manager role
    superuser            ada
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import transaction

from tests.conftest import DEFAULT_PIPELINE, build_environments

ANON = "anonymous"
ROLES = (
    ANON,
    "viewer",
    "developer",
    "rival",
    "outsider",
    "approver",
    "policy_admin",
    "compliance_manager",
    "superuser",
)

# The shared fixture pipeline (build → deploy-production), with its name as a placeholder.
PIPELINE_YAML = DEFAULT_PIPELINE.replace("name: Payments API", "name: {name}", 1)
assert PIPELINE_YAML != DEFAULT_PIPELINE

# Soft-mandatory and always denying: every production gate waits with a denial that the
# override permission can pass (so override is a real decision, not "nothing to override").
SOFT_DENY = """package clearway.window

deny contains "outside the change windows" if { true }
"""
# The unpublished draft denies outside the change windows only, so that it can have the
# denying and the passing test case that publishing needs (WINDOW_CASES).
SOFT_DENY_DRAFT = """package clearway.window

deny contains "outside the change windows (draft)" if { not input.environment.in_change_window }
"""


def window_cases() -> list[dict]:
    """A case that SOFT_DENY_DRAFT denies (outside the windows) and one it passes."""
    from governance import rego

    inside = copy.deepcopy(rego.demo_policies()[0]["tests"][0]["input"])
    inside["environment"]["in_change_window"] = True
    # Policies are readable by every role: the cases must not name a pipeline that some
    # role may not see (the matrix checks that no page shows one).
    inside["pipeline"].update({"name": "Example app", "slug": "example-app"})
    outside = copy.deepcopy(inside)
    outside["environment"]["in_change_window"] = False
    return [
        {"name": "outside the windows denies", "input": outside, "expect": {"deny": 1}},
        {"name": "inside the windows passes", "input": inside, "expect": {"deny": []}},
    ]


PEOPLE = {
    # role: (username, groups, extra fields)
    "viewer": ("vic", ["viewer"], {}),
    "developer": ("dana", ["developer", "team-payments"], {}),
    "rival": ("omar", ["developer", "team-platform"], {}),
    "outsider": ("olga", [], {}),
    "approver": ("sam", ["approver", "sre"], {}),
    "policy_admin": ("paula", ["policy-admin"], {}),
    "compliance_manager": ("carl", ["compliance-manager"], {}),
    "superuser": ("ada", [], {"is_staff": True, "is_superuser": True}),
}


@dataclass
class World:
    users: dict = field(default_factory=dict)  # role -> user (anonymous: None)
    tokens: dict = field(default_factory=dict)  # role -> API token key
    teams: dict = field(default_factory=dict)
    environments: dict = field(default_factory=dict)
    pipeline: object = None  # payments-api (team-payments)
    other_pipeline: object = None  # platform-infra (team-platform)
    run: object = None  # payments-api run waiting at its production gate
    gate: object = None
    other_run: object = None  # platform-infra run waiting at its production gate
    other_gate: object = None
    finished_run: object = None  # a canceled payments-api run (retry)
    step: object = None  # the finished build step of `run`
    artifact: object = None  # a stored artifact of `step`
    policy: object = None  # soft-mandatory, production, with an unpublished draft
    decision: object = None  # the policy's decision at `gate`
    job: object = None  # carl's finished PDF report job
    secret: object = None  # DB_PASSWORD of production (sre holds manage_secrets there)
    change_request: object = None  # pierre's pending proposal to scope `policy` to staging too
    delegation: object = None  # the approver's, to the viewer, a month ahead (not in force)
    audit_seq: int = 0


def _no_dispatch(step_id, attempt, countdown=0):
    """Steps are never sent to Celery while the world is built."""


def _finish_stage(run, name: str) -> None:
    """Play a worker that runs every step of the stage successfully."""
    from orchestrator import actions
    from orchestrator.models import StageRun, StepStatus

    stage = StageRun.objects.get(run=run, name=name)
    for _ in range(20):
        step = stage.steps.filter(status=StepStatus.QUEUED).order_by("position").first()
        if step is None:
            break
        actions.claim_step(step.pk, step.attempt, worker="hardening")
        actions.finish_step(step.pk, step.attempt, succeeded=True, exit_code=0)


def _at_gate(pipeline, actor):
    from governance.models import Gate
    from orchestrator import actions

    run = actions.trigger_run(pipeline, actor=actor, parameters={"version": "2.0.0"})
    _finish_stage(run, "build")
    run.refresh_from_db()
    return run, Gate.objects.get(stage_run__run=run)


def _policy(author, production):
    from governance.models import Policy, PolicyVersion

    policy = Policy.objects.create(
        name="change-window",
        source=SOFT_DENY,
        enforcement="soft-mandatory",
        tiers=[],
        enabled=True,
        updated_by=author,
    )
    policy.environments.set([production])
    version = PolicyVersion.objects.create(
        policy=policy,
        number=1,
        source=SOFT_DENY,
        sha256=hashlib.sha256(SOFT_DENY.encode()).hexdigest(),
        enforcement="soft-mandatory",
        author=author,
    )
    policy.current_version = version
    policy.save(update_fields=["current_version"])
    return policy


def _report_job(user):
    from django.conf import settings

    from governance.models import ReportJob

    body = b"%PDF-1.4\n% hardening test report\n"
    folder = Path(settings.MEDIA_ROOT) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hardening-matrix.pdf").write_bytes(body)
    return ReportJob.objects.create(
        requested_by=user,
        kind="changes",
        filters={},
        status=ReportJob.Status.DONE,
        progress=100,
        file="reports/hardening-matrix.pdf",
        sha256=hashlib.sha256(body).hexdigest(),
    )


def build_world(*, gates: bool = True) -> World:
    """Every role's user, two teams with a pipeline each, production with its approval rules,
    and (with `gates`) a soft-mandatory policy, runs waiting at their production gates, a
    canceled run, a webhook run, a never-published policy, a decision and a finished report
    job."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission

    from governance.models import AuditEvent, Policy, PolicyDecision
    from governance.roles import ROLES as SHIPPED_ROLES
    from governance.roles import ensure_roles
    from orchestrator import actions
    from orchestrator.models import StepRun, Team
    from tests.conftest import api_token

    ensure_roles(Group, Permission)
    groups = {
        name: Group.objects.get_or_create(name=name)[0]
        for name in [*SHIPPED_ROLES, "sre", "security", "team-payments", "team-platform"]
    }
    world = World()
    world.teams = {
        "payments": Team.objects.get_or_create(
            slug="payments", defaults={"name": "Payments", "group": groups["team-payments"]}
        )[0],
        "platform": Team.objects.get_or_create(
            slug="platform", defaults={"name": "Platform", "group": groups["team-platform"]}
        )[0],
    }
    User = get_user_model()
    world.users[ANON] = None
    for role, (username, names, extra) in PEOPLE.items():
        user, _ = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.test", **extra}
        )
        user.groups.add(*(groups[n] for n in names))
        world.users[role] = user
        world.tokens[role] = api_token(user)
    world.environments = build_environments(groups)
    users = world.users
    from guardian.shortcuts import assign_perm

    from governance import secrets

    assign_perm("governance.manage_secrets", groups["sre"], world.environments["production"])
    world.secret = secrets.set_secret(
        actor=users["superuser"],
        name="DB_PASSWORD",
        value="world-secret-value",
        environment=world.environments["production"],
    )
    from datetime import timedelta

    from django.utils import timezone

    from governance.delegation import create_delegation

    ahead = timezone.now() + timedelta(days=30)
    world.delegation = create_delegation(
        actor=users["approver"],
        delegate=users["viewer"],
        starts_at=ahead,
        ends_at=ahead + timedelta(days=7),
        reason="conference",
    )
    with actions.dispatching_to(_no_dispatch):
        world.pipeline = actions.create_pipeline(
            actor=users["developer"],
            slug="payments-api",
            definition=PIPELINE_YAML.format(name="Payments API"),
            team=world.teams["payments"],
        )
        world.other_pipeline = actions.create_pipeline(
            actor=users["rival"],
            slug="platform-infra",
            definition=PIPELINE_YAML.format(name="Platform infra"),
            team=world.teams["platform"],
        )
        if not gates:
            world.run = actions.trigger_run(world.pipeline, actor=users["developer"])
            world.other_run = actions.trigger_run(world.other_pipeline, actor=users["rival"])
            return world
        world.policy = _policy(users["policy_admin"], world.environments["production"])
        world.run, world.gate = _at_gate(world.pipeline, users["developer"])
        world.other_run, world.other_gate = _at_gate(world.other_pipeline, users["rival"])
        finished = actions.trigger_run(world.pipeline, actor=users["developer"])
        world.finished_run = actions.cancel_run(finished, actor=users["developer"])
        # Nobody triggered it (a signed webhook): the API shows triggered_by null.
        actions.trigger_run(world.pipeline, actor=None, trigger="webhook")
    # Created and never published (no current version), last edited by nobody.
    Policy.objects.create(
        name="draft-only", source=SOFT_DENY, enforcement="advisory", enabled=False
    )
    # An unpublished draft, so that publishing is a real change.
    world.policy.source = SOFT_DENY_DRAFT
    world.policy.test_cases = window_cases()
    world.policy.save(update_fields=["source", "test_cases"])
    world.step = StepRun.objects.get(stage__run=world.run, name="compile")
    world.artifact = _artifact(world.step)
    world.decision = PolicyDecision.objects.filter(gate=world.gate).order_by("pk").first()
    assert world.decision is not None, "the soft policy was not evaluated at the gate"
    assert world.gate.status == "waiting", world.gate.status
    world.job = _report_job(users["compliance_manager"])
    world.change_request = _change_request(world.policy)
    world.audit_seq = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True)[0]
    return world


def _change_request(policy):
    """A pending change request by pierre, a policy admin who holds no role of the matrix, so
    that every role is someone other than its proposer."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from governance import change_requests

    pierre, _ = get_user_model().objects.get_or_create(username="pierre")
    pierre.groups.add(Group.objects.get(name="policy-admin"))
    return change_requests.propose_policy_scope(policy, actor=pierre, tiers=["staging"])


def _artifact(step):
    """A stored artifact of the world's step (downloads follow the run's read rule)."""
    from datetime import timedelta

    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    from orchestrator.models import Artifact

    key = storages["artifacts"].save(f"matrix/{step.pk}/report.json", ContentFile(b"{}"))
    return Artifact.objects.create(
        stage_run=step.stage,
        step_run=step,
        name="report",
        path="report.json",
        size=2,
        sha256="44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        content_type="application/json",
        storage_key=key,
        expires_at=step.stage.run.created_at + timedelta(days=90),
    )


@contextlib.contextmanager
def world_in_transaction(django_db_blocker):
    """Build the world in a transaction that is rolled back when the block ends."""
    with django_db_blocker.unblock(), transaction.atomic():
        built = build_world()
        yield built
        transaction.set_rollback(True)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker) -> World:
    """The world, built once per module and rolled back at its end. Tests that use it also
    need the `db` fixture (their own savepoint). A module with transactional tests must use
    a class-scoped copy instead (see test_permission_matrix): pytest-django runs those last,
    and this transaction would still be open."""
    with world_in_transaction(django_db_blocker) as built:
        yield built


@pytest.fixture(scope="class")
def class_world(django_db_setup, django_db_blocker) -> World:
    """The same world, per test class: for modules that also have transactional tests."""
    with world_in_transaction(django_db_blocker) as built:
        yield built


@pytest.fixture(autouse=True)
def quiet_refusals():
    """Django logs every 403/404 with a traceback: thousands in the matrix. Errors (500s)
    are still logged."""
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)

"""Fixtures shared by the whole test suite.

People by role (usernames as in the demo): `developer` (dana, developer + team-payments),
`approver` and `second_approver` (sam and sara, approver + sre), `security_approver` (sofia,
approver + security), `outsider` (olga, no role, no team), `policy_admin` (paula),
`compliance_manager` (carl), `viewer` (vic), `superuser` (ada); `make_user` for anyone else.
`environments` seeds development / staging / production like the demo: production is
protected, needs 2 approvals from sre AND 1 from security, sre and security may approve it and
sre may override it. `team`, `make_pipeline`, `make_run`, `finish_stage`, `run_at_gate` drive
the real orchestration code (step dispatch is recorded by `dispatched`, never executed);
`make_policy` / `publish_version` write Policy + PolicyVersion rows directly.

PostgreSQL: transactional tests are flushed with TRUNCATE, which the audit table's trigger
refuses by design. tests/pg_flush.py (loaded by `-p tests.pg_flush` in pyproject.toml)
disables the triggers around that flush and re-seeds the roles and the audit chain head
(AuditChainHead pk=1; `audit.record` would recreate it anyway), so nothing here does it again.
Use your own database for integration runs, e.g.
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/clearway_gates .venv/bin/pytest -m integration`.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from guardian.shortcuts import assign_perm

DEFAULT_PIPELINE = textwrap.dedent(
    """\
    name: Payments API
    parameters:
      - name: version
        default: "1.0.0"
      - name: author
        description: Author of the change (may not approve it)
        default: ""
    stages:
      - name: build
        steps:
          - name: compile
            run: echo build
      - name: deploy-production
        needs: [build]
        environment: production
        steps:
          - name: rollout
            run: echo deploy
    """
)


def api_token(user, scopes=("read", "trigger", "approve", "policy", "admin"), **kwargs) -> str:
    """A live API token for `user` (governance.tokens.issue, no step-up: a test set-up), with
    every scope by default; the clear text, for `Authorization: Bearer …`. 24 h, the most an
    approve-scope token may live."""
    from datetime import timedelta

    from django.utils import timezone

    from governance import tokens

    kwargs.setdefault("expires_at", timezone.now() + timedelta(hours=23))
    return tokens.issue(user, name=kwargs.pop("name", "test"), scopes=list(scopes), **kwargs)[1]


# --- people -------------------------------------------------------------------------------


@pytest.fixture
def roles(db) -> dict[str, Group]:
    """The shipped role groups (viewer, developer, approver, policy-admin,
    compliance-manager) plus the approval groups sre and security."""
    from governance.roles import ROLES, ensure_roles

    ensure_roles(Group, Permission)
    names = [*ROLES, "sre", "security"]
    return {name: Group.objects.get_or_create(name=name)[0] for name in names}


@pytest.fixture
def make_user(roles) -> Callable:
    """make_user("name", "group", ..., **fields): an active user in those groups (created if
    missing), with email <name>@example.test."""
    User = get_user_model()

    def make(username: str, *groups: str, **fields):
        fields.setdefault("email", f"{username}@example.test")
        user, _ = User.objects.get_or_create(username=username, defaults=fields)
        for name in groups:
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        return user

    return make


@pytest.fixture
def developer(make_user, team):
    return make_user("dana", "developer", "team-payments", first_name="Dana")


@pytest.fixture
def approver(make_user):
    return make_user("sam", "approver", "sre", first_name="Sam")


@pytest.fixture
def second_approver(make_user):
    return make_user("sara", "approver", "sre", first_name="Sara")


@pytest.fixture
def sre_approver(approver):
    return approver


@pytest.fixture
def security_approver(make_user):
    return make_user("sofia", "approver", "security", first_name="Sofia")


@pytest.fixture
def outsider(make_user):
    return make_user("olga", first_name="Olga")


@pytest.fixture
def policy_admin(make_user):
    return make_user("paula", "policy-admin", first_name="Paula")


@pytest.fixture
def second_policy_admin(make_user):
    """paula's colleague: the second pair of eyes on policy and environment changes."""
    return make_user("pierre", "policy-admin", first_name="Pierre")


@pytest.fixture
def four_eyes(policy_admin, second_policy_admin):
    """Governance changes the four-eyes way (governance.change_requests): each helper
    proposes as `by` (paula) and approves as `approver` (pierre), returning the applied
    request. four_eyes.publish(policy), .scope(policy, enabled=False, …),
    .environment(env, settings=…, rules=…)."""
    from governance import change_requests

    class FourEyes:
        def _approve(self, proposed, approver):
            assert proposed is not None, "nothing to change"
            return change_requests.approve(proposed, actor=approver or second_policy_admin)

        def publish(self, policy, *, by=None, approver=None):
            proposed = change_requests.propose_policy_publish(policy, actor=by or policy_admin)
            return self._approve(proposed, approver)

        def scope(self, policy, *, by=None, approver=None, **changes):
            proposed = change_requests.propose_policy_scope(
                policy, actor=by or policy_admin, **changes
            )
            return self._approve(proposed, approver)

        def environment(self, env, *, by=None, approver=None, **changes):
            proposed = change_requests.propose_environment_update(
                env, actor=by or policy_admin, **changes
            )
            return self._approve(proposed, approver)

    return FourEyes()


@pytest.fixture
def compliance_manager(make_user):
    return make_user("carl", "compliance-manager", first_name="Carl")


@pytest.fixture
def viewer(make_user):
    return make_user("vic", "viewer", first_name="Vic")


@pytest.fixture
def superuser(make_user):
    user = make_user("ada", first_name="Ada", is_staff=True, is_superuser=True)
    return user


@pytest.fixture
def users(
    developer,
    approver,
    second_approver,
    security_approver,
    outsider,
    policy_admin,
    compliance_manager,
    viewer,
) -> dict:
    """Every role's user by role name (for permission tables)."""
    return {
        "developer": developer,
        "approver": approver,
        "second_approver": second_approver,
        "security_approver": security_approver,
        "outsider": outsider,
        "policy_admin": policy_admin,
        "compliance_manager": compliance_manager,
        "viewer": viewer,
    }


# --- teams, environments, pipelines, runs ---------------------------------------------------


@pytest.fixture
def team(roles):
    from orchestrator.models import Team

    group, _ = Group.objects.get_or_create(name="team-payments")
    return Team.objects.get_or_create(
        slug="payments", defaults={"name": "Payments", "group": group}
    )[0]


@pytest.fixture
def other_team(roles):
    from orchestrator.models import Team

    group, _ = Group.objects.get_or_create(name="team-platform")
    return Team.objects.get_or_create(
        slug="platform", defaults={"name": "Platform", "group": group}
    )[0]


@pytest.fixture
def environments(roles) -> dict:
    """development and staging (open), production (protected: 2 from sre AND 1 from security;
    sre and security approve, sre overrides; approvals last 24 h; reminders after 60 min)."""
    return build_environments(roles)


def build_environments(groups) -> dict:
    """The environments of the `environments` fixture, for worlds built outside a fixture."""
    from governance.models import ApprovalRule, Environment, Tier

    envs = {
        "development": Environment.objects.get_or_create(
            name="development", defaults={"tier": Tier.DEVELOPMENT}
        )[0],
        "staging": Environment.objects.get_or_create(
            name="staging", defaults={"tier": Tier.STAGING}
        )[0],
        "production": Environment.objects.get_or_create(
            name="production",
            defaults={
                "tier": Tier.PRODUCTION,
                "protected": True,
                "approval_ttl_hours": 24,
                "reminder_minutes": 60,
            },
        )[0],
    }
    prod = envs["production"]
    ApprovalRule.objects.get_or_create(
        environment=prod, group=groups["sre"], defaults={"required_count": 2}
    )
    ApprovalRule.objects.get_or_create(
        environment=prod, group=groups["security"], defaults={"required_count": 1}
    )
    for name in ("sre", "security"):
        assign_perm("governance.approve_environment", groups[name], prod)
    assign_perm("governance.override_environment", groups["sre"], prod)
    return envs


@pytest.fixture
def production(environments):
    return environments["production"]


@pytest.fixture
def staging(environments):
    return environments["staging"]


@pytest.fixture
def make_pipeline(team, environments, superuser) -> Callable:
    """make_pipeline(slug="payments-api", definition=DEFAULT_PIPELINE, team=team,
    actor=superuser): a pipeline created through orchestrator.actions (the team's group gets
    view/run/change on it; `actor` is the author of version 1)."""
    from orchestrator import actions

    def make(
        slug: str = "payments-api", *, definition: str = DEFAULT_PIPELINE, team=team, actor=None
    ):
        return actions.create_pipeline(
            actor=actor or superuser, slug=slug, definition=definition, team=team
        )

    return make


@pytest.fixture
def pipeline(make_pipeline):
    return make_pipeline()


@pytest.fixture
def dispatched(monkeypatch) -> list[tuple[int, int, float]]:
    """Records (step_id, attempt, countdown) handed to workers after commit, instead of
    sending them to Celery."""
    from orchestrator import actions

    calls: list[tuple[int, int, float]] = []
    monkeypatch.setattr(
        actions,
        "dispatch_step",
        lambda step_id, attempt, countdown=0: calls.append((step_id, attempt, countdown)),
    )
    return calls


@pytest.fixture
def make_run(pipeline, developer, dispatched) -> Callable:
    """make_run(pipeline=pipeline, actor=developer, parameters=None, now=None)."""
    from orchestrator import actions

    def make(pipeline=pipeline, *, actor=developer, parameters=None, now=None):
        return actions.trigger_run(pipeline, actor=actor, parameters=parameters, now=now)

    return make


@pytest.fixture
def finish_stage() -> Callable:
    """finish_stage(run, "build", succeeded=True, now=None): play a worker that runs every
    step of the stage (claim + finish, through orchestrator.actions). Returns the run."""
    from orchestrator import actions
    from orchestrator.models import StageRun, StepStatus

    def finish(run, name: str, *, succeeded: bool = True, now=None):
        stage = StageRun.objects.get(run=run, name=name)
        for _ in range(100):
            step = stage.steps.filter(status=StepStatus.QUEUED).order_by("position").first()
            if step is None:
                break
            actions.claim_step(step.pk, step.attempt, worker="test-worker")
            actions.finish_step(
                step.pk, step.attempt, succeeded=succeeded, exit_code=0 if succeeded else 1, now=now
            )
        run.refresh_from_db()
        return run

    return finish


@pytest.fixture
def run_at_gate(make_run, finish_stage) -> Callable:
    """run_at_gate(actor=developer, parameters=None, now=None, pipeline=...): trigger the
    default pipeline, finish its build stage; returns (run, gate) with the production gate
    checked once."""
    from governance.models import Gate

    def make(*, now=None, **kwargs):
        run = make_run(now=now, **kwargs)
        finish_stage(run, "build", now=now)
        return run, Gate.objects.select_related("environment", "stage_run").get(stage_run__run=run)

    return make


# --- policies -----------------------------------------------------------------------------


@pytest.fixture
def make_policy(superuser, production) -> Callable:
    """make_policy(name, source, enforcement="hard-mandatory", environments=[production],
    tiers=(), enabled=True): a Policy with a published version 1 (rows written directly)."""
    from governance.models import Policy, PolicyVersion

    def make(
        name: str,
        source: str,
        enforcement: str = "hard-mandatory",
        *,
        environments=None,
        tiers=(),
        enabled: bool = True,
    ):
        policy = Policy.objects.create(
            name=name,
            source=source,
            enforcement=enforcement,
            tiers=list(tiers),
            enabled=enabled,
            updated_by=superuser,
        )
        policy.environments.set([production] if environments is None else environments)
        version = PolicyVersion.objects.create(
            policy=policy,
            number=1,
            source=source,
            sha256=hashlib.sha256(source.encode()).hexdigest(),
            enforcement=enforcement,
            author=superuser,
        )
        policy.current_version = version
        policy.save(update_fields=["current_version"])
        return policy

    return make


@pytest.fixture
def publish_version(superuser) -> Callable:
    """publish_version(policy, source=None, enforcement=None): a new current version."""
    from governance.models import PolicyVersion

    def publish(policy, source: str | None = None, enforcement: str | None = None):
        source = source if source is not None else policy.source
        enforcement = enforcement or policy.enforcement
        number = policy.versions.count() + 1
        version = PolicyVersion.objects.create(
            policy=policy,
            number=number,
            source=source,
            sha256=hashlib.sha256(source.encode()).hexdigest(),
            enforcement=enforcement,
            author=superuser,
        )
        policy.source, policy.enforcement, policy.current_version = source, enforcement, version
        policy.save(update_fields=["source", "enforcement", "current_version"])
        return version

    return publish


# --- clients and workers ------------------------------------------------------------------


@pytest.fixture
def api() -> Callable:
    """api(user): a DRF APIClient authenticated as `user` (None: anonymous). axes refuses
    client.login() without a request, so tests authenticate with force_authenticate."""
    from rest_framework.test import APIClient

    def make(user=None):
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def celery_eager():
    """Run Celery tasks in-process when they are sent (retries included, countdowns
    ignored); failures are not re-raised, as in a worker."""
    from orchestrator.celery import app

    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


@pytest.fixture
def artifact_storage(settings, tmp_path):
    """STORAGES["artifacts"] in a directory of this test (Django resets its storages)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "artifacts")},
        },
    }
    from django.core.files.storage import storages

    return storages["artifacts"]

"""Seeds the demo through the product's own actions."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from secrets import token_urlsafe

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group
from django.db import transaction
from guardian.shortcuts import assign_perm

from governance import secrets
from governance.models import ApprovalRule, Environment, Secret, Tier
from orchestrator import actions
from orchestrator.models import Pipeline, Team

from .history import seed_history
from .policies import seed_change_request, seed_policies

HERE = Path(__file__).resolve().parent

USERS = [
    # username, full name, groups
    ("dana", "Dana Whitfield", ["developer", "team-payments"]),
    ("omar", "Omar Haddad", ["developer", "team-platform"]),
    ("sam", "Sam Okafor", ["approver", "sre"]),
    ("sara", "Sara Lindqvist", ["approver", "sre"]),
    ("sofia", "Sofia Marquez", ["approver", "security"]),
    ("paula", "Paula Brenner", ["policy-admin"]),
    ("pierre", "Pierre Laurent", ["policy-admin"]),
    ("carl", "Carl Jensen", ["compliance-manager"]),
    ("vic", "Vic Novak", ["viewer"]),
]

TEAMS = [("payments", "Payments", "team-payments"), ("platform", "Platform", "team-platform")]

PIPELINES = [
    ("payments-api", "payments"),
    ("claims-service", "payments"),
    ("infra-network", "platform"),
]


def _year_end_freeze(today: date) -> dict:
    start_year = today.year if today.month >= 2 else today.year - 1
    return {
        "start": f"{start_year}-12-20T00:00:00+00:00",
        "end": f"{start_year + 1}-01-03T23:59:59+00:00",
        "reason": "Year-end change freeze",
    }


def seed_people() -> dict:
    User = get_user_model()
    password = settings.CLEARWAY.get("DEMO_PASSWORD")
    # Hash once: every demo user shares the published demo password.
    hashed = make_password(password) if password else make_password(None)
    for name in ("sre", "security"):
        Group.objects.get_or_create(name=name)
    teams = {}
    for slug, name, group_name in TEAMS:
        group, _ = Group.objects.get_or_create(name=group_name)
        teams[slug], _ = Team.objects.get_or_create(
            slug=slug, defaults={"name": name, "group": group}
        )
    users = {}
    for username, full_name, groups in USERS:
        first, last = full_name.split(" ", 1)
        user, created = User.objects.get_or_create(
            username=username,
            defaults={
                "first_name": first,
                "last_name": last,
                "email": f"{username}@northwind.example",
            },
        )
        if created:
            user.password = hashed
            user.save(update_fields=["password"])
            user.groups.set(Group.objects.filter(name__in=groups))
        users[username] = user
    admin, created = User.objects.get_or_create(
        username="admin",
        defaults={
            "is_staff": True,
            "is_superuser": True,
            "email": "admin@northwind.example",
            "first_name": "Ada",
            "last_name": "Admin",
        },
    )
    if created:
        admin.password = hashed
        admin.save(update_fields=["password"])
    users["admin"] = admin
    return {"users": users, "teams": teams}


def seed_environments(today: date) -> dict[str, Environment]:
    envs = {}
    for name, tier, protected in (
        ("development", Tier.DEVELOPMENT, False),
        ("staging", Tier.STAGING, False),
        ("production", Tier.PRODUCTION, True),
    ):
        envs[name], _ = Environment.objects.get_or_create(
            name=name, defaults={"tier": tier, "protected": protected}
        )
    prod = envs["production"]
    if not prod.change_windows:
        prod.timezone = "Europe/Berlin"
        prod.freeze_windows = [_year_end_freeze(today)]
        prod.change_windows = [{"days": [0, 1, 2, 3], "start": "08:00", "end": "18:00"}]
        prod.approval_ttl_hours = 24
        prod.save()
    sre, security = Group.objects.get(name="sre"), Group.objects.get(name="security")
    ApprovalRule.objects.get_or_create(environment=prod, group=sre, defaults={"required_count": 2})
    ApprovalRule.objects.get_or_create(
        environment=prod, group=security, defaults={"required_count": 1}
    )
    for group in (sre, security):
        assign_perm("governance.approve_environment", group, prod)
    assign_perm("governance.override_environment", sre, prod)
    return envs


def seed_secrets(admin) -> None:
    """sre manages production's secrets; payments-api's production rollout asks for the
    database password (a random value: the run page shows it masked)."""
    prod = Environment.objects.get(name="production")
    assign_perm("governance.manage_secrets", Group.objects.get(name="sre"), prod)
    if not Secret.objects.filter(name="PAYMENTS_DB_PASSWORD", environment=prod).exists():
        secrets.set_secret(
            actor=admin,
            name="PAYMENTS_DB_PASSWORD",
            value=token_urlsafe(24),
            environment=prod,
        )


def seed_pipelines(admin, teams, *, now=None) -> dict[str, Pipeline]:
    result = {}
    for slug, team in PIPELINES:
        pipeline = Pipeline.objects.filter(slug=slug).first()
        if pipeline is None:
            definition = (HERE / f"{slug}.yaml").read_text()
            pipeline = actions.create_pipeline(
                actor=admin, slug=slug, definition=definition, team=teams[team], now=now
            )
        result[slug] = pipeline
    return result


def seed(*, history: bool = True, days: int = 60, out=None) -> str:
    out = out or sys.stdout
    from django.utils import timezone

    now = timezone.now()
    with transaction.atomic():
        people = seed_people()
        seed_environments(now.date())
    policies = _seed_policies(people["users"]["paula"], now=now)
    seed_secrets(people["users"]["admin"])
    pipelines = seed_pipelines(
        people["users"]["admin"], people["teams"], now=now - timezone.timedelta(days=days + 1)
    )
    runs = 0
    if history:
        runs = seed_history(people["users"], pipelines, days=days, out=out)
    seed_change_request(people["users"]["paula"])
    return (
        f"{len(people['users'])} users, {len(pipelines)} pipelines, {policies} policies, "
        f"{runs} historical runs"
    )


def _seed_policies(author, *, now) -> int:
    return seed_policies(author, now=now)

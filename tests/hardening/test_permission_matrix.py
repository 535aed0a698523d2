"""The complete permission matrix: every URL of the URL configuration (pages, API, exports,
hooks) and every websocket route, for every role.

The list of URLs is not written here: it is collected by walking `django.urls.get_resolver()`
(and the websocket router of orchestrator.asgi). `ROUTES` below says, for each URL name, how to
build its arguments from the world's objects and what every role gets. A URL without an entry
makes `test_every_route_has_an_entry` fail with its name, so a new endpoint cannot ship
without a decision about who may use it. Only the prefixes in `EXCLUDED` are left out, each
with its reason.

How to read an entry: `Check(method, allowed=..., ok=..., hidden=...)` means roles in
`allowed` get `ok`; roles in `hidden` cannot see the object and get 404; other signed-in roles
get 403; anonymous visitors are sent to the login page (pages) or get 401 (API). `codes`
pins the exceptions, each with its reason. For every request by a role outside `allowed`,
nothing may change: row counts, statuses, drafts and successful audit events are compared
before and after (a refused gate decision does record a *denied* audit event, by design).
And no response — list, count, export, form or error message — may name a pipeline the role
cannot see, unless the request itself did. Every request runs in a savepoint that is rolled
back, so allowed requests change nothing for the next ones and the world is the same for
every role and route.

Adding an endpoint: add its URL name to ROUTES with its kwargs and at least one Check per
method it accepts; allowed requests should do the real thing (a valid body), so that the
permission decision — not a 400 for a missing field — is what the table pins.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from .conftest import (
    ANON,
    PIPELINE_YAML,
    ROLES,
    SOFT_DENY,
    SOFT_DENY_DRAFT,
    World,
    build_world,
    window_cases,
)

LOGIN = "login"  # a redirect to the login page

EVERYONE = frozenset(ROLES)
SIGNED_IN = EVERYONE - {ANON}
# payments-api: the roles with the global view_pipeline permission (viewer, approver,
# policy-admin, compliance-manager), its team (developer) and superusers.
SEES = frozenset(
    {"viewer", "developer", "approver", "policy_admin", "compliance_manager", "superuser"}
)
HIDDEN = SIGNED_IN - SEES  # rival (another team), outsider (no role)
# platform-infra, the rival team's pipeline: the same, with the teams swapped.
SEES_OTHER = (SEES - {"developer"}) | {"rival"}
HIDDEN_OTHER = SIGNED_IN - SEES_OTHER
RUNS = frozenset({"developer", "superuser"})  # run / change payments-api
RUNS_OTHER = frozenset({"rival", "superuser"})
CREATORS = frozenset({"developer", "rival", "superuser"})  # add_pipeline + a team
APPROVERS = frozenset({"approver", "superuser"})  # approve/override production (sre)
EDITORS = frozenset({"policy_admin", "superuser"})  # change policies and environments
AUDITORS = frozenset({"compliance_manager", "superuser"})  # read the audit log
EXPORTERS = AUDITORS  # export reports
KEEPERS = frozenset({"approver", "superuser"})  # manage_secrets on production (sre)
NOBODY = frozenset()

# Left out of the matrix, each with its reason. Everything else must be in ROUTES.
EXCLUDED = {
    "admin/": "Django admin: staff only, guarded by the admin site itself (and tested below "
    "in TestMatrix.test_admin_is_for_staff_only); its URLs are Django's, not ours",
}
# There are no static or debug routes in the URL configuration: static files are served by
# WhiteNoise's middleware (no URL pattern), and no debug toolbar is installed.


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    method: str = "get"
    allowed: frozenset = SIGNED_IN
    ok: int | str = 200
    hidden: frozenset = NOBODY
    query: str = ""  # appended to the URL; formatted with the world (`{w.step.pk}`)
    data: object = None  # a dict, or a callable(world) returning one
    htmx: bool = False
    codes: Mapping = field(default_factory=dict)  # role -> code: the exceptions
    kwargs: Callable | None = None  # URL kwargs other than the route's (another object)
    headers: Callable | None = None  # callable(world, body) -> extra headers
    raw: bool = False  # send `data` as the raw JSON body (webhooks)

    def expected(self, role: str, api: bool) -> int | str:
        if role in self.codes:
            return self.codes[role]
        if role in self.allowed:
            return self.ok
        if role == ANON:
            return 401 if api else LOGIN
        if role in self.hidden:
            return 404
        return 403


@dataclass(frozen=True)
class Route:
    kwargs: Callable = lambda w: {}  # noqa: E731
    checks: tuple = ()


def _new_definition(name: str = "Payments API") -> str:
    return PIPELINE_YAML.format(name=name).replace('"1.0.0"', '"1.1.0"')


def _period() -> dict:
    """A delegation period from now for two days (ISO, UTC)."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return {
        "starts_at": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "ends_at": (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _policy_form(action: str, **extra) -> dict:
    return {
        "action": action,
        "description": "Deploys only inside the change windows.",
        "enforcement": "soft-mandatory",
        "environments": ["production"],
        "enabled": "on",
        "source": SOFT_DENY.replace("windows", "windows!"),
        "test_cases": "[]",
        "days": "30",
        **extra,
    }


def _environment_form(w: World) -> dict:
    """The production settings form as the page posts it, with the TTL changed."""
    from governance.models import ApprovalRule

    rules = list(ApprovalRule.objects.filter(environment__name="production").order_by("pk"))
    data = {
        "env-tier": "production",
        "env-protected": "on",
        "env-timezone": "UTC",
        "env-approval_ttl_hours": "12",
        "env-reminder_minutes": "60",
        "env-notify_webhook_url": "",
        "rules-TOTAL_FORMS": str(len(rules)),
        "rules-INITIAL_FORMS": str(len(rules)),
        "freeze-TOTAL_FORMS": "0",
        "freeze-INITIAL_FORMS": "0",
        "change-TOTAL_FORMS": "0",
        "change-INITIAL_FORMS": "0",
    }
    for i, rule in enumerate(rules):
        data[f"rules-{i}-id"] = str(rule.pk)
        data[f"rules-{i}-group"] = str(rule.group_id)
        data[f"rules-{i}-required_count"] = str(rule.required_count)
    return data


def _signed(w: World, body: bytes) -> dict:
    from orchestrator.actions import sign

    w.pipeline.refresh_from_db()
    return {"X-Clearway-Signature": sign(w.pipeline.webhook_secret, body)}


JUSTIFICATION = {"justification": "INC-4711: hotfix agreed with the on-call lead, window closed."}

run_kwargs = lambda w: {"pk": w.run.pk}  # noqa: E731
slug = lambda w: {"slug": w.pipeline.slug}  # noqa: E731
run_id = lambda w: {"run_id": w.run.pk}  # noqa: E731
other_run_id = lambda w: {"run_id": w.other_run.pk}  # noqa: E731
gate_pk = lambda w: {"pk": w.gate.pk}  # noqa: E731
policy_pk = lambda w: {"pk": w.policy.pk}  # noqa: E731
job_pk = lambda w: {"pk": w.job.pk}  # noqa: E731
cr_pk = lambda w: {"pk": w.change_request.pk}  # noqa: E731
# A report job is its requester's alone: even a superuser gets 404 for carl's job.
OWN_JOB = {"superuser": 404}

ROUTES: dict[str, Route] = {
    # --- outside the app: health, accounts, API schema and docs, webhook -----------------
    "healthz": Route(checks=(Check(allowed=EVERYONE),)),
    "login": Route(checks=(Check(allowed=EVERYONE),)),
    "logout": Route(
        checks=(
            Check(allowed=EVERYONE, ok=405),  # GET never logs out (Django 5: POST only)
            Check("post", allowed=EVERYONE, ok=LOGIN),
        )
    ),
    "password_change": Route(checks=(Check(), Check("post", data={}))),
    "password_change_done": Route(checks=(Check(),)),
    # Public by design: the schema and its viewer describe shapes, never data.
    "schema": Route(checks=(Check(allowed=EVERYONE),)),
    "api-docs": Route(checks=(Check(allowed=EVERYONE),)),
    # Credentials in the body, not a session or token: a 400 for an empty body, for anyone.
    "api-token": Route(
        checks=(Check(allowed=EVERYONE, ok=405), Check("post", data={}, allowed=EVERYONE, ok=400))
    ),
    # Authenticated by the HMAC signature only: unsigned is 403 for everyone (a session or a
    # token is no signature); signed triggers a run whoever sends it.
    "webhook": Route(
        slug,
        (
            Check("post", data={"parameters": {}}, raw=True, allowed=NOBODY, codes={ANON: 403}),
            Check(
                "post", data={"parameters": {}}, raw=True, headers=_signed, allowed=EVERYONE, ok=201
            ),
        ),
    ),
    # --- API: pipelines and runs -----------------------------------------------------------
    "api-root": Route(checks=(Check(),)),
    "pipeline-list": Route(
        checks=(
            Check(),
            Check(
                "post",
                data={
                    "slug": "matrix-new",
                    "definition": _new_definition("Matrix API"),
                    "team": "payments",
                },
                allowed=frozenset({"developer", "superuser"}),
                ok=201,
                # A developer of another team may create pipelines, but not for this team.
                codes={"rival": 400},
            ),
        )
    ),
    "pipeline-detail": Route(
        slug,
        (
            Check(allowed=SEES, hidden=HIDDEN),
            Check(
                kwargs=lambda w: {"slug": w.other_pipeline.slug},
                allowed=SEES_OTHER,
                hidden=HIDDEN_OTHER,
            ),
            Check("put", data={"definition": _new_definition()}, allowed=RUNS, hidden=HIDDEN),
        ),
    ),
    "pipeline-runs": Route(
        slug,
        (
            Check(allowed=SEES, hidden=HIDDEN),
            Check("post", data={"parameters": {}}, allowed=RUNS, ok=201, hidden=HIDDEN),
            Check(
                "post",
                data={"parameters": {}},
                kwargs=lambda w: {"slug": w.other_pipeline.slug},
                allowed=RUNS_OTHER,
                ok=201,
                hidden=HIDDEN_OTHER,
            ),
        ),
    ),
    "pipeline-versions": Route(slug, (Check(allowed=SEES, hidden=HIDDEN),)),
    "run-list": Route(checks=(Check(),)),
    "run-detail": Route(
        run_kwargs,
        (
            Check(allowed=SEES, hidden=HIDDEN),
            Check(kwargs=lambda w: {"pk": w.other_run.pk}, allowed=SEES_OTHER, hidden=HIDDEN_OTHER),
        ),
    ),
    "run-cancel": Route(
        run_kwargs,
        (
            Check("post", allowed=RUNS, hidden=HIDDEN),
            Check(
                "post",
                kwargs=lambda w: {"pk": w.other_run.pk},
                allowed=RUNS_OTHER,
                hidden=HIDDEN_OTHER,
            ),
        ),
    ),
    "run-log": Route(run_kwargs, (Check(query="?step={w.step.pk}", allowed=SEES, hidden=HIDDEN),)),
    # A run's artifacts and their downloads: whoever sees the run, like its logs.
    "run-artifacts": Route(run_kwargs, (Check(allowed=SEES, hidden=HIDDEN),)),
    "run-artifact-download": Route(
        lambda w: {"pk": w.run.pk, "artifact_id": w.artifact.pk},
        (Check(allowed=SEES, hidden=HIDDEN),),
    ),
    "run-retry": Route(
        lambda w: {"pk": w.finished_run.pk}, (Check("post", allowed=RUNS, ok=201, hidden=HIDDEN),)
    ),
    # --- API: gates and environments -------------------------------------------------------
    "gate-list": Route(checks=(Check(), Check(query="?status=waiting"))),
    "gate-detail": Route(
        gate_pk,
        (
            Check(allowed=SEES, hidden=HIDDEN),
            Check(
                kwargs=lambda w: {"pk": w.other_gate.pk}, allowed=SEES_OTHER, hidden=HIDDEN_OTHER
            ),
        ),
    ),
    # A superuser holds every permission but is in no approval group: the rules name sre
    # and security, so the approval would count for nothing and is refused (403, eligibility).
    "gate-approve": Route(
        gate_pk,
        (
            Check(
                "post",
                data={"comment": "ok"},
                allowed=frozenset({"approver"}),
                hidden=HIDDEN,
                codes={"superuser": 403},
            ),
        ),
    ),
    "gate-reject": Route(
        gate_pk,
        (
            Check(
                "post",
                data={"comment": "not now"},
                allowed=frozenset({"approver"}),
                hidden=HIDDEN,
                codes={"superuser": 403},
            ),
        ),
    ),
    "gate-override": Route(
        gate_pk, (Check("post", data=JUSTIFICATION, allowed=APPROVERS, hidden=HIDDEN),)
    ),
    # --- API: managed secrets (names and versions; values go in, never out) -------------
    "secret-list": Route(
        checks=(
            Check(),
            Check(
                "post",
                data={"name": "API_KEY", "value": "v-1", "environment": "production"},
                allowed=KEEPERS,
                ok=201,
            ),
        )
    ),
    "secret-detail": Route(
        lambda w: {"pk": w.secret.pk},
        (
            Check(),
            Check("put", data={"value": "v-2"}, allowed=KEEPERS),
            Check("patch", data={"value": "v-3"}, allowed=KEEPERS),
            Check("delete", allowed=KEEPERS, ok=204),
        ),
    ),
    "secret-rotate": Route(lambda w: {"pk": w.secret.pk}, (Check("post", allowed=KEEPERS),)),
    # Write-only: nobody reads a value back, not even a superuser (403, audited).
    "secret-value": Route(lambda w: {"pk": w.secret.pk}, (Check(allowed=NOBODY),)),
    # --- API: delegations (out of office; the rules are governance.delegation's) -----------
    # Creating: whoever approves somewhere; the others have nothing to delegate (400).
    "delegation-list": Route(
        checks=(
            Check(),
            Check(
                "post",
                data=lambda w: {"delegate": w.users["compliance_manager"].username, **_period()},
                allowed=APPROVERS,
                ok=201,
                codes=dict.fromkeys(SIGNED_IN - APPROVERS, 400),
            ),
        )
    ),
    # The approver's delegation to the viewer: the viewer (the delegate) sees it but may not
    # revoke it; nobody else sees it.
    "delegation-revoke": Route(
        lambda w: {"pk": w.delegation.pk},
        (Check("post", allowed=APPROVERS, hidden=SIGNED_IN - APPROVERS - {"viewer"}),),
    ),
    "environment-list": Route(checks=(Check(),)),
    "environment-detail": Route(lambda w: {"name": "production"}, (Check(),)),
    # --- API: policies and decisions -------------------------------------------------------
    "policy-list": Route(
        checks=(
            Check(),
            Check(
                "post",
                data={
                    "name": "matrix-policy",
                    "source": SOFT_DENY,
                    "enforcement": "advisory",
                    "scope": {"environments": ["production"]},
                },
                allowed=EDITORS,
                ok=201,
            ),
        )
    ),
    "policy-detail": Route(
        policy_pk,
        (
            Check(),
            Check("put", data={"source": SOFT_DENY.replace("windows", "hours")}, allowed=EDITORS),
            Check("patch", data={"description": "changed"}, allowed=EDITORS),
            Check("delete", allowed=EDITORS, ok=202),  # proposes disabling (four eyes)
        ),
    ),
    "policy-dry-run": Route(policy_pk, (Check("post", data={"days": 7}, allowed=EDITORS),)),
    "policy-evaluate": Route(
        policy_pk,
        (
            Check("post", data={"input": {}}),  # the draft, for everyone who reads policies
            # A caller's own source runs code in the evaluators: editors only.
            Check("post", data={"input": {}, "source": SOFT_DENY}, allowed=EDITORS),
        ),
    ),
    "policy-publish": Route(policy_pk, (Check("post", allowed=EDITORS, ok=202),)),  # proposes
    # --- API: governance change requests (four eyes): reviewers are those who may make the
    # change; the proposer (pierre, no role here) alone may withdraw; a superuser may apply
    # alone. Others cannot see the request (404) but list their own (none).
    "changerequest-list": Route(checks=(Check(),)),
    "changerequest-detail": Route(cr_pk, (Check(allowed=EDITORS, hidden=SIGNED_IN - EDITORS),)),
    "changerequest-approve": Route(
        cr_pk,
        (Check("post", data={"comment": "ok"}, allowed=EDITORS, hidden=SIGNED_IN - EDITORS),),
    ),
    "changerequest-reject": Route(
        cr_pk,
        (Check("post", data={"comment": "no"}, allowed=EDITORS, hidden=SIGNED_IN - EDITORS),),
    ),
    "changerequest-withdraw": Route(
        cr_pk, (Check("post", allowed=NOBODY, hidden=SIGNED_IN - EDITORS),)
    ),
    "changerequest-apply-alone": Route(
        cr_pk,
        (
            Check(
                "post",
                data=JUSTIFICATION,
                allowed=frozenset({"superuser"}),
                hidden=SIGNED_IN - EDITORS,
            ),
        ),
    ),
    "policy-test": Route(
        policy_pk,
        (Check("post", data={}), Check("post", data={"source": SOFT_DENY}, allowed=EDITORS)),
    ),
    "policy-version": Route(lambda w: {"pk": w.policy.pk, "number": 1}, (Check(),)),
    "policy-versions": Route(policy_pk, (Check(),)),
    "policydecision-list": Route(checks=(Check(),)),
    "policydecision-detail": Route(
        lambda w: {"pk": w.decision.pk}, (Check(allowed=SEES, hidden=HIDDEN),)
    ),
    # --- API: audit log and reports --------------------------------------------------------
    "auditevent-list": Route(checks=(Check(allowed=AUDITORS),)),
    "auditevent-verify": Route(checks=(Check(allowed=AUDITORS),)),
    "auditevent-checkpoints": Route(checks=(Check(allowed=AUDITORS),)),
    "auditevent-detail": Route(lambda w: {"seq": w.audit_seq}, (Check(allowed=AUDITORS),)),
    "report-changes": Route(
        checks=(
            Check(query="?format=json", allowed=EXPORTERS),
            Check(query="?format=csv", allowed=EXPORTERS),
        )
    ),
    "report-audit": Route(checks=(Check(query="?format=ndjson", allowed=EXPORTERS),)),
    "report-access": Route(checks=(Check(query="?date=2026-01-31", allowed=EXPORTERS),)),
    "report-pdf-list": Route(
        checks=(Check(allowed=EXPORTERS), Check("post", data={}, allowed=EXPORTERS, ok=202))
    ),
    "report-pdf": Route(job_pk, (Check(allowed={"compliance_manager"}, codes=OWN_JOB),)),
    "report-pdf-download": Route(job_pk, (Check(allowed={"compliance_manager"}, codes=OWN_JOB),)),
    # --- pages: reports --------------------------------------------------------------------
    "governance:reports": Route(
        checks=(
            Check(allowed=EXPORTERS),
            Check("post", data={"export": "json"}, allowed=EXPORTERS, ok=302),
        )
    ),
    "governance:reports-export": Route(checks=(Check(query="?format=csv", allowed=EXPORTERS),)),
    "governance:report-jobs": Route(checks=(Check(allowed=EXPORTERS),)),
    "governance:report-download": Route(
        job_pk, (Check(allowed={"compliance_manager"}, codes=OWN_JOB),)
    ),
    "governance:reports-access": Route(checks=(Check(allowed=EXPORTERS),)),
    # --- pages: policies, environments, audit log ------------------------------------------
    "governance:policies": Route(checks=(Check(),)),
    "governance:policy-new": Route(
        checks=(
            Check(allowed=EDITORS),
            Check("post", data=_policy_form("save", name="matrix-page"), allowed=EDITORS, ok=302),
        )
    ),
    "governance:policy": Route(
        policy_pk,
        (
            Check(),
            Check("post", data=_policy_form("save"), allowed=EDITORS, ok=302),
            Check(
                "post",
                # publishing needs a denying and a passing case
                data=lambda w: _policy_form(
                    "publish",
                    source=SOFT_DENY_DRAFT.replace("windows", "windows!"),
                    test_cases=json.dumps(window_cases()),
                ),
                allowed=EDITORS,
                ok=302,
            ),
            Check("post", data=_policy_form("test"), htmx=True, allowed=EDITORS),
        ),
    ),
    "governance:policy-versions": Route(policy_pk, (Check(),)),
    "governance:policy-revert": Route(
        policy_pk, (Check("post", data={"version": "1"}, allowed=EDITORS, ok=302),)
    ),
    "governance:change-requests": Route(checks=(Check(),)),
    "governance:change-request": Route(
        cr_pk,
        (
            Check(allowed=EDITORS, hidden=SIGNED_IN - EDITORS),
            Check(
                "post",
                data={"action": "approve"},
                allowed=EDITORS,
                hidden=SIGNED_IN - EDITORS,
                ok=302,
            ),
        ),
    ),
    "governance:environments": Route(checks=(Check(),)),
    "governance:environment-secrets": Route(
        lambda w: {"name": "production"},
        (
            Check("post", data={"name": "API_KEY", "value": "v-1"}, allowed=KEEPERS, ok=302),
            Check("post", data=lambda w: {"delete": w.secret.pk}, allowed=KEEPERS, ok=302),
        ),
    ),
    "governance:environment": Route(
        lambda w: {"name": "production"},
        (Check(), Check("post", data=_environment_form, allowed=EDITORS, ok=302)),
    ),
    "governance:audit": Route(checks=(Check(allowed=AUDITORS),)),
    "governance:audit-verify": Route(checks=(Check(allowed=AUDITORS, htmx=True),)),
    "governance:notification-preferences": Route(
        checks=(Check(), Check("post", data={"email": "on", "events": ["open"]}, ok=302))
    ),
    "governance:delegation-create": Route(
        checks=(
            Check(
                "post",
                data=lambda w: {
                    "delegate": w.users["compliance_manager"].username,
                    **{k: v[:16] for k, v in _period().items()},
                },
                allowed=APPROVERS,
                ok=302,
                codes=dict.fromkeys(SIGNED_IN - APPROVERS, 400),
            ),
        )
    ),
    "governance:delegation-revoke": Route(
        lambda w: {"pk": w.delegation.pk},
        (Check("post", allowed=APPROVERS, ok=302, hidden=SIGNED_IN - APPROVERS),),
    ),
    # --- pages: dashboard ------------------------------------------------------------------
    "dashboard:overview": Route(checks=(Check(),)),
    "dashboard:board": Route(checks=(Check(),)),
    "dashboard:pipelines": Route(checks=(Check(),)),
    "dashboard:pipeline_new": Route(
        checks=(
            Check(allowed=CREATORS),
            Check(
                "post",
                data=lambda w: {
                    "slug": "matrix-page",
                    "team": str(w.teams["payments"].pk),
                    "definition": _new_definition("Matrix"),
                },
                allowed=frozenset({"developer", "superuser"}),
                ok=302,
                # The form offers a developer only their own teams: another team is an
                # invalid choice (the page again, with the error; nothing is created).
                codes={"rival": 200},
            ),
        )
    ),
    "dashboard:pipeline": Route(
        slug,
        (
            Check(allowed=SEES, hidden=HIDDEN),
            Check(
                kwargs=lambda w: {"slug": w.other_pipeline.slug},
                allowed=SEES_OTHER,
                hidden=HIDDEN_OTHER,
            ),
        ),
    ),
    "dashboard:pipeline_trigger": Route(
        slug, (Check("post", data={"version": "2.0.0"}, allowed=RUNS, ok=302, hidden=HIDDEN),)
    ),
    "dashboard:pipeline_edit": Route(
        slug,
        (
            Check(allowed=RUNS, hidden=HIDDEN),
            Check(
                "post",
                data={"definition": _new_definition()},
                allowed=RUNS,
                ok=302,
                hidden=HIDDEN,
            ),
        ),
    ),
    "dashboard:pipeline_versions": Route(slug, (Check(allowed=SEES, hidden=HIDDEN),)),
    # A step's raw log: whoever sees the run.
    "dashboard:step_log_raw": Route(
        lambda w: {"run_id": w.run.pk, "step_id": w.step.pk},
        (Check(allowed=SEES, hidden=HIDDEN),),
    ),
    "dashboard:artifact_download": Route(
        lambda w: {"run_id": w.run.pk, "artifact_id": w.artifact.pk},
        (Check(allowed=SEES, hidden=HIDDEN),),
    ),
    "dashboard:step_log_window": Route(
        lambda w: {"run_id": w.run.pk, "step_id": w.step.pk},
        (Check(query="?before=1", allowed=SEES, hidden=HIDDEN),),
    ),
    # The webhook page and "rotate the secret": those who may change the pipeline.
    "dashboard:pipeline_webhook": Route(
        slug,
        (
            Check(allowed=RUNS, hidden=HIDDEN),
            Check("post", data={"action": "rotate"}, allowed=RUNS, ok=302, hidden=HIDDEN),
        ),
    ),
    "dashboard:pipeline_diff": Route(
        slug, (Check(query="?from=1&to=1", allowed=SEES, hidden=HIDDEN),)
    ),
    "dashboard:run": Route(
        run_id,
        (
            Check(allowed=SEES, hidden=HIDDEN),
            Check(kwargs=other_run_id, allowed=SEES_OTHER, hidden=HIDDEN_OTHER),
        ),
    ),
    "dashboard:run_gate_panel": Route(run_id, (Check(allowed=SEES, hidden=HIDDEN),)),
    "dashboard:run_cancel": Route(
        run_id,
        (
            Check("post", allowed=RUNS, ok=302, hidden=HIDDEN),
            Check("post", kwargs=other_run_id, allowed=RUNS_OTHER, ok=302, hidden=HIDDEN_OTHER),
        ),
    ),
    "dashboard:run_retry": Route(
        lambda w: {"run_id": w.finished_run.pk},
        (Check("post", allowed=RUNS, ok=302, hidden=HIDDEN),),
    ),
    # The panel answers with itself (htmx): a refusal by the rules (a superuser is in no
    # approval group) is a message in the panel; the permission decision is 403 / 404.
    "dashboard:gate_decide": Route(
        lambda w: {"run_id": w.run.pk, "gate_id": w.gate.pk},
        (
            Check(
                "post",
                data={"decision": "approve", "comment": "ok"},
                htmx=True,
                allowed=APPROVERS,
                hidden=HIDDEN,
            ),
            Check(
                "post",
                data={"decision": "reject", "comment": "not now"},
                htmx=True,
                allowed=APPROVERS,
                hidden=HIDDEN,
            ),
        ),
    ),
    "dashboard:gate_override": Route(
        lambda w: {"run_id": w.run.pk, "gate_id": w.gate.pk},
        (Check("post", data=JUSTIFICATION, htmx=True, allowed=APPROVERS, hidden=HIDDEN),),
    ),
    # The link in approval notifications: a redirect to the gate on its run page.
    "dashboard:gate": Route(
        lambda w: {"gate_id": w.gate.pk},
        (
            Check(allowed=SEES, ok=302, hidden=HIDDEN),
            Check(
                kwargs=lambda w: {"gate_id": w.other_gate.pk},
                allowed=SEES_OTHER,
                ok=302,
                hidden=HIDDEN_OTHER,
            ),
        ),
    ),
    "dashboard:approvals": Route(checks=(Check(),)),
    "dashboard:approvals_count": Route(checks=(Check(),)),
    "dashboard:tokens": Route(checks=(Check(), Check("post", data={"action": "create"}))),
}

# Websocket routes (orchestrator.asgi's router). The test is test_websocket_subscriptions.
WEBSOCKET_ROUTES = {
    "ws/events/": "signed-in users only (4401 otherwise); {'subscribe': 'run'} answers "
    "'subscribed' for a run the user may view and 'not found' for any other; events of "
    "pipelines and runs the user may not view never arrive",
}


# --- collecting the URL configuration ----------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    key: str  # the URL name (with its namespace), or the route when it has none
    route: str
    has_format: bool  # a DRF format-suffix variant (`.json`)


def url_patterns() -> list[Pattern]:
    """Every URL pattern of the root URL configuration, with its full route."""
    found: list[Pattern] = []

    def walk(resolver: URLResolver, prefix: str, namespace: str | None) -> None:
        for entry in resolver.url_patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                ns = entry.namespace
                walk(entry, route, f"{namespace}:{ns}" if namespace and ns else ns or namespace)
            elif isinstance(entry, URLPattern):
                name = entry.name
                key = (f"{namespace}:{name}" if namespace else name) if name else route
                has_format = "format" in entry.pattern.regex.groupindex
                found.append(Pattern(key, route, has_format))

    walk(get_resolver(), "", None)
    return found


def excluded(pattern: Pattern) -> bool:
    return any(pattern.route.startswith(prefix) for prefix in EXCLUDED)


def websocket_routes() -> list[str]:
    """The routes of the websocket router behind orchestrator.asgi's middleware."""
    from orchestrator.asgi import application

    app = application.application_mapping["websocket"]
    for _ in range(10):
        if hasattr(app, "routes"):
            return [str(route.pattern) for route in app.routes]
        app = getattr(app, "application", None) or getattr(app, "inner", None)
    raise AssertionError("no URLRouter found behind the websocket middleware")


def test_every_route_has_an_entry():
    patterns = url_patterns()
    missing = sorted(
        {f"{p.key!r} (route {p.route!r})" for p in patterns if not excluded(p)}
        - {f"{p.key!r} (route {p.route!r})" for p in patterns if p.key in ROUTES}
    )
    assert not missing, (
        "URL patterns without an entry in the permission matrix (tests/hardening/"
        "test_permission_matrix.py ROUTES) — say who may use them:\n  " + "\n  ".join(missing)
    )
    keys = {p.key for p in patterns}
    stale = sorted(set(ROUTES) - keys)
    assert not stale, f"ROUTES entries for URLs that no longer exist: {stale}"
    unused = [prefix for prefix in EXCLUDED if not any(excluded(p) for p in patterns)]
    assert not unused, f"EXCLUDED prefixes that match nothing: {unused}"
    ws = websocket_routes()
    assert sorted(set(ws) - set(WEBSOCKET_ROUTES)) == [], "websocket routes without an entry"
    assert sorted(set(WEBSOCKET_ROUTES) - set(ws)) == [], "stale websocket entries"


# --- the token scopes --------------------------------------------------------------------

# The scope an API token needs, for every API route and method of the table above. The
# matrix runs with tokens that hold every scope; TestTokenScopes runs every API check again
# as the superuser with a token of one scope only: the needed scope gets what the superuser
# gets, any other scope 403 (audited, nothing changed). An API route without an entry here
# fails test_every_api_check_has_a_scope.
R, T, A, P, ADM = "read", "trigger", "approve", "policy", "admin"
TOKEN_SCOPES: dict[str, dict[str, str]] = {
    "api-root": {"get": R},
    "pipeline-list": {"get": R, "post": ADM},
    "pipeline-detail": {"get": R, "put": ADM},
    "pipeline-runs": {"get": R, "post": T},
    "pipeline-versions": {"get": R},
    "run-list": {"get": R},
    "run-detail": {"get": R},
    "run-cancel": {"post": T},
    "run-log": {"get": R},
    "run-retry": {"post": T},
    "gate-list": {"get": R},
    "gate-detail": {"get": R},
    "gate-approve": {"post": A},
    "gate-reject": {"post": A},
    "gate-override": {"post": A},
    # Secrets: even their names and metadata need admin.
    "secret-list": {"get": ADM, "post": ADM},
    "secret-detail": {"get": ADM, "put": ADM, "patch": ADM, "delete": ADM},
    "secret-rotate": {"post": ADM},
    "secret-value": {"get": ADM},
    "environment-list": {"get": R},
    "environment-detail": {"get": R},
    "policy-list": {"get": R, "post": P},
    "policy-detail": {"get": R, "put": P, "patch": P, "delete": P},
    "policy-dry-run": {"post": P},
    "policy-evaluate": {"post": P},
    "policy-publish": {"post": P},
    "policy-test": {"post": P},
    "policy-version": {"get": R},
    "policy-versions": {"get": R},
    "policydecision-list": {"get": R},
    "policydecision-detail": {"get": R},
    "auditevent-list": {"get": R},
    "auditevent-verify": {"get": R},
    "auditevent-checkpoints": {"get": R},
    "auditevent-detail": {"get": R},
    "report-changes": {"get": R},
    "report-audit": {"get": R},
    "report-access": {"get": R},
    "report-pdf-list": {"get": R, "post": R},  # requesting an export reads
    "report-pdf": {"get": R},
    "report-pdf-download": {"get": R},
    "run-artifacts": {"get": R},
    "run-artifact-download": {"get": R},
    "delegation-list": {"get": R, "post": A},
    "delegation-revoke": {"post": A},
    "changerequest-list": {"get": R},
    "changerequest-detail": {"get": R},
    "changerequest-approve": {"post": ADM},
    "changerequest-reject": {"post": ADM},
    "changerequest-withdraw": {"post": ADM},
    "changerequest-apply-alone": {"post": ADM},
}
# Outside the scopes: public (schema, docs) or credentials in the body (the token endpoint).
NOT_SCOPED = {"schema", "api-docs", "api-token"}


def api_checks(world: World):
    """(URL name, check, url) for every check of an API route in ROUTES."""
    for pattern in url_patterns():
        if excluded(pattern) or pattern.key not in ROUTES or pattern.key in NOT_SCOPED:
            continue
        route = ROUTES[pattern.key]
        for check in route.checks:
            url = build_url(pattern, check, route, world)
            if is_api(url):
                yield pattern.key, check, url


# --- running the matrix ------------------------------------------------------------------


def _counted_models() -> list:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from governance.models import (
        ApiToken,
        Approval,
        ApprovalRule,
        Environment,
        Gate,
        Override,
        Policy,
        PolicyDecision,
        PolicyVersion,
        ReportJob,
    )
    from orchestrator.models import Pipeline, PipelineVersion, Run, StageRun, StepRun, Team

    return [
        Pipeline,
        PipelineVersion,
        Run,
        StageRun,
        StepRun,
        Gate,
        Approval,
        Override,
        PolicyDecision,
        Policy,
        PolicyVersion,
        Environment,
        ApprovalRule,
        ReportJob,
        ApiToken,
        Team,
        get_user_model(),
        Group,
        UserObjectPermission,
        GroupObjectPermission,
    ]


def fingerprint() -> tuple:
    """What a refused request must not change: row counts of everything a request can
    create or delete (one query), the statuses and drafts it can change, and successful
    audit events."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from governance.models import ApiToken, AuditEvent, Environment, Gate, Policy
    from orchestrator.models import Pipeline, Run, StageRun

    quote = connection.ops.quote_name
    tables = [quote(m._meta.db_table) for m in _counted_models()]  # names from the models
    counts = ", ".join(f"(SELECT COUNT(*) FROM {table})" for table in tables)  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {counts}")
        row = cursor.fetchone()
    return (
        tuple(row),
        tuple(Run.objects.order_by("pk").values_list("pk", "status")),
        tuple(StageRun.objects.order_by("pk").values_list("pk", "status")),
        tuple(Gate.objects.order_by("pk").values_list("pk", "status")),
        tuple(Pipeline.objects.order_by("pk").values_list("pk", "current_version", "name")),
        tuple(
            Policy.objects.order_by("pk").values_list(
                "pk", "source", "enforcement", "enabled", "description", "current_version"
            )
        ),
        tuple(tuple(sorted(e.items())) for e in Environment.objects.order_by("pk").values()),
        tuple(get_user_model().objects.order_by("pk").values_list("pk", "password")),
        tuple(ApiToken.objects.order_by("pk").values_list("pk", "revoked_at", "scopes")),
        AuditEvent.objects.exclude(outcome="denied").count(),
    )


class Clients:
    """One session client (pages) and one token client (API) per role."""

    def __init__(self, world: World, role: str):
        user = world.users[role]
        self.pages = Client()
        self.api = Client()
        if user is not None:
            self.pages.force_login(user)
            self.api.defaults["HTTP_AUTHORIZATION"] = f"Bearer {world.tokens[role]}"

    def for_url(self, api: bool) -> Client:
        return self.api if api else self.pages


def is_api(url: str) -> bool:
    return url.startswith("/api/")


def build_url(pattern: Pattern, check: Check, route: Route, world: World) -> str:
    kwargs = dict((check.kwargs or route.kwargs)(world))
    if pattern.has_format:
        kwargs["format"] = "json"
    url = reverse(pattern.key, kwargs=kwargs or None)
    if pattern.has_format and ".json" not in url:
        raise AssertionError(f"{pattern.route}: reversed to {url}, not the .json variant")
    return url + check.query.format(w=world)


def call(client: Client, check: Check, url: str, world: World, *, watch: bool = True):
    """Send the check's request in a savepoint that is rolled back. Returns (status or
    LOGIN or the exception, whether the fingerprint changed — when `watch` —, the body)."""
    data = check.data(world) if callable(check.data) else check.data
    headers = {"HX-Request": "true"} if check.htmx else {}
    kwargs: dict = {}
    if check.method != "get":
        if check.raw or is_api(url):
            body = json.dumps(data if data is not None else {}).encode()
            kwargs = {"data": body, "content_type": "application/json"}
            if check.headers:
                headers.update(check.headers(world, body))
        else:
            kwargs = {"data": data or {}}
    cookies = copy.deepcopy(client.cookies)
    with transaction.atomic():
        before = fingerprint() if watch else None
        try:
            response = getattr(client, check.method)(url, headers=headers, **kwargs)
        except Exception as exc:  # noqa: BLE001 — reported as a failure of the matrix
            got: int | str = f"500 {exc!r}"[:200]
            content = b""
        else:
            got = response.status_code
            # Streamed exports read the database as they go: read them inside the savepoint.
            content = (
                b"".join(response.streaming_content) if response.streaming else response.content
            )
            location = response.get("Location", "")
            if got == 302 and location.startswith(reverse("login") + "?next="):
                got = LOGIN
            elif got == 302 and location == reverse("login"):
                got = LOGIN
        changed = watch and fingerprint() != before
        transaction.set_rollback(True)
    client.cookies = cookies  # a logout or a new session must not leak into the next request
    return got, changed, content.decode(errors="replace")


def secrets_of(role: str, world: World) -> set[str]:
    """Names only the roles that see a pipeline may read anywhere (lists, counts, exports,
    error messages, forms)."""
    names = set()
    if role in HIDDEN or role == ANON:
        names |= {world.pipeline.slug, world.pipeline.name}
    if role in HIDDEN_OTHER or role == ANON:
        names |= {world.other_pipeline.slug, world.other_pipeline.name}
    return names


@pytest.fixture
def matrix_world(class_world, db):
    # Class-scoped (conftest): rolled back before the transactional websocket test, which
    # pytest-django runs after every other database test of the session.
    return class_world


class TestMatrix:
    @pytest.mark.parametrize("role", ROLES)
    def test_role(self, role, matrix_world):
        """Every URL pattern and check of the table for one role: the status the role gets,
        that nothing changed when the role was refused, and that no response names a
        pipeline the role may not see (unless the request itself did)."""
        world = matrix_world
        clients = Clients(world, role)
        secrets = secrets_of(role, world)
        mismatches, leaks, seen = [], [], 0
        for pattern in url_patterns():
            if excluded(pattern) or pattern.key not in ROUTES:
                continue  # the second case fails test_every_route_has_an_entry
            route = ROUTES[pattern.key]
            assert route.checks, f"{pattern.key}: no checks"
            for check in route.checks:
                url = build_url(pattern, check, route, world)
                api = is_api(url)
                wanted = check.expected(role, api)
                watch = role not in check.allowed  # allowed requests may change things
                got, changed, body = call(clients.for_url(api), check, url, world, watch=watch)
                seen += 1
                sent = url + json.dumps(check.data(world) if callable(check.data) else check.data)
                for name in secrets:
                    if name in body and name not in sent:
                        leaks.append(f"{check.method.upper()} {url} (got {got}) shows {name!r}")
                if got != wanted:
                    mismatches.append(f"{check.method.upper()} {url}: expected {wanted}, got {got}")
                if changed:
                    leaks.append(f"{check.method.upper()} {url} (got {got}) changed the database")
        assert seen > 100
        problems = mismatches + leaks
        assert not problems, f"role {role}:\n  " + "\n  ".join(problems)

    def test_admin_is_for_staff_only(self, matrix_world):
        """The excluded admin site: only staff get in (everyone else to the admin login)."""
        for role in ROLES:
            client = Clients(matrix_world, role).pages
            response = client.get("/admin/")
            if role == "superuser":
                assert response.status_code == 200
            else:
                assert response.status_code == 302, role
                assert response["Location"].startswith("/admin/login/"), role


class TestTokenScopes:
    """The scope column of the matrix: a token may do what its user may, within its scopes."""

    def test_every_api_check_has_a_scope(self, matrix_world):
        missing = [
            f"{name} {check.method}"
            for name, check, _ in api_checks(matrix_world)
            if check.method not in TOKEN_SCOPES.get(name, {})
        ]
        assert not missing, "add to TOKEN_SCOPES: " + ", ".join(missing)

    @pytest.mark.parametrize("scope", ["read", "trigger", "approve", "policy", "admin"])
    def test_scope(self, scope, matrix_world):
        from tests.conftest import api_token

        world = matrix_world
        key = api_token(world.users["superuser"], scopes=[scope], name=f"only {scope}")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        mismatches, seen = [], 0
        for name, check, url in api_checks(world):
            needed = TOKEN_SCOPES[name][check.method]
            wanted = check.expected("superuser", True) if needed == scope else 403
            got, changed, body = call(client, check, url, world, watch=needed != scope)
            seen += 1
            if got != wanted:
                mismatches.append(f"{check.method.upper()} {url}: expected {wanted}, got {got}")
            if needed != scope:
                if f"needs the {needed!r} scope" not in body:
                    mismatches.append(f"{check.method.upper()} {url}: unclear 403: {body[:200]}")
                if changed:
                    mismatches.append(f"{check.method.upper()} {url} changed the database")
        assert seen > 40
        assert not mismatches, f"scope {scope}:\n  " + "\n  ".join(mismatches)

    def test_a_refused_scope_is_audited(self, matrix_world):
        from governance.models import AuditEvent
        from tests.conftest import api_token

        key = api_token(matrix_world.users["superuser"], scopes=["read"], name="reader")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        url = reverse("gate-approve", kwargs={"pk": matrix_world.gate.pk})
        response = client.post(url, {}, content_type="application/json")
        assert response.status_code == 403
        event = AuditEvent.objects.filter(action="token.scope_denied").latest("seq")
        assert event.outcome == "denied" and event.details["needed"] == "approve"
        assert event.target_name == "reader (cw_" + key.split("_")[1] + "…)"


# --- websocket subscriptions -------------------------------------------------------------


def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def _ws_role(role: str, world: World) -> dict:
    """Connect as `role`, subscribe to both runs, publish events of both, and report what
    the connection saw."""
    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from orchestrator import events
    from orchestrator.asgi import application

    headers = [(b"origin", b"http://localhost")]
    user = world.users[role]
    if user is not None:
        headers.append((b"cookie", await database_sync_to_async(_session_cookie)(user)))
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, code = await communicator.connect()
    if not connected:
        return {"connected": False, "code": code}
    seen: dict = {"connected": True, "hello": await communicator.receive_json_from()}
    for name, run in (("run", world.run), ("other_run", world.other_run)):
        await communicator.send_json_to({"subscribe": "run", "id": run.pk})
        seen[name] = (await communicator.receive_json_from())["type"]

    def publish() -> None:
        from orchestrator.models import Run, StepRun

        for run in (world.run, world.other_run):
            fresh = Run.objects.get(pk=run.pk)
            step = StepRun.objects.filter(stage__run=fresh).order_by("pk").first()
            events.publish_run(fresh)
            events.publish_log(step, fresh.pk, 0, ["<b>secret</b> line"])

    await database_sync_to_async(publish)()
    received = []
    while not await communicator.receive_nothing(timeout=0.3):
        received.append(await communicator.receive_json_from())
    seen["events"] = sorted({(e["type"], e["run"]) for e in received})
    await communicator.disconnect()
    return seen


@pytest.mark.django_db(transaction=True)
def test_websocket_subscriptions():
    """For every role: who gets in, which runs they may subscribe to, and that the events of
    what they may not see never reach them (published to both runs after subscribing)."""
    from channels.layers import get_channel_layer

    from orchestrator import events

    world = build_world(gates=False)
    run, other = world.run.pk, world.other_run.pk
    visible = {"run": SEES, "other_run": SEES_OTHER}

    async def main() -> dict:
        layer = get_channel_layer()
        await layer.flush()
        events.bind_loop(asyncio.get_running_loop())
        try:
            return {role: await _ws_role(role, world) for role in ROLES}
        finally:
            events.sender.unbind()
            await layer.flush()

    results = asyncio.run(main())
    problems = []
    for role, seen in results.items():
        if role == ANON:
            if seen != {"connected": False, "code": 4401}:
                problems.append(f"{role}: {seen}")
            continue
        wanted_pipelines = sorted(
            pk
            for name, pk in (("run", world.pipeline.pk), ("other_run", world.other_pipeline.pk))
            if role in visible[name]
        )
        wanted_events = sorted(
            (kind, pk)
            for name, pk in (("run", run), ("other_run", other))
            if role in visible[name]
            for kind in ("log", "run.updated")
        )
        wanted = {
            "connected": True,
            "hello": {"type": "hello", "pipelines": wanted_pipelines},
            "run": "subscribed" if role in visible["run"] else "error",
            "other_run": "subscribed" if role in visible["other_run"] else "error",
            "events": wanted_events,
        }
        seen = {**seen, "events": [tuple(e) for e in seen["events"]]}
        if seen != wanted:
            problems.append(f"{role}: expected {wanted}, got {seen}")
    assert not problems, "\n".join(problems)

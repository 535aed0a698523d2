"""The one place that decides what a user may see or do.

`restrict(queryset, user, action)` — also `Model.objects.restrict(user, action)` on every
domain model — filters any queryset of the domain by what `user` may do;
pages, API, websocket subscriptions and exports all call it, so nothing leaks through a list,
a count, an export or an event. `can(user, action, obj)` is the same decision for one object.

Pipelines carry object permissions (django-guardian) granted to team groups: view, run and
change. A global (model-level) permission, e.g. the viewer and approver roles' view_pipeline,
applies to every pipeline. Runs, stages, steps, gates and versions follow their pipeline.
Environments carry approve / override object permissions.
"""

from __future__ import annotations

from django.db.models import Model, Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from orchestrator.kernel import restrict as restricted
from orchestrator.models import (
    Artifact,
    LogArchive,
    LogChunk,
    Pipeline,
    PipelineVersion,
    Run,
    StageRun,
    StepRun,
)

from .models import (
    Approval,
    AuditEvent,
    Environment,
    Gate,
    Policy,
    PolicyDecision,
    PolicyVersion,
    ReportJob,
    Secret,
)

PIPELINE_ACTIONS = ("view", "run", "change")


def _active(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def pipelines(user, action: str = "view") -> QuerySet:
    return restrict(Pipeline.objects.all(), user, action)


def restrict(qs: QuerySet, user, action: str = "view") -> QuerySet:
    """`qs` narrowed to what `user` may `action`. Unknown combinations allow nothing. Also
    reached as `Model.objects.restrict(user, action)` (kernel.restrict)."""
    if not _active(user):
        return qs.none()
    model = qs.model
    if user.is_superuser:
        return qs
    if model is Pipeline:
        if action not in PIPELINE_ACTIONS:
            return qs.none()
        return get_objects_for_user(
            user, f"orchestrator.{action}_pipeline", klass=qs, accept_global_perms=True
        )
    # Everything that belongs to a pipeline follows it.
    pipeline_path = {
        PipelineVersion: "pipeline",
        Run: "pipeline",
        StageRun: "run__pipeline",
        StepRun: "stage__run__pipeline",
        LogChunk: "step__stage__run__pipeline",
        LogArchive: "step__stage__run__pipeline",
        Artifact: "stage_run__run__pipeline",
        Gate: "stage_run__run__pipeline",
        Approval: "gate__stage_run__run__pipeline",
        PolicyDecision: "gate__stage_run__run__pipeline",
    }.get(model)
    if model is Gate and action in ("approve", "override"):
        envs = restrict(Environment.objects.all(), user, action)
        return qs.filter(environment__in=envs, stage_run__run__pipeline__in=pipelines(user))
    if pipeline_path:
        pipeline_action = action if action in PIPELINE_ACTIONS else None
        if pipeline_action is None:
            return qs.none()
        return qs.filter(**{f"{pipeline_path}__in": pipelines(user, pipeline_action)})
    if model is Environment:
        if action == "view":
            return qs
        if action == "change":
            return qs if user.has_perm("governance.change_environment") else qs.none()
        if action in ("approve", "override"):
            return get_objects_for_user(
                user, f"governance.{action}_environment", klass=qs, accept_global_perms=True
            )
        if action == "manage_secrets":
            return get_objects_for_user(
                user, "governance.manage_secrets", klass=qs, accept_global_perms=True
            )
        return qs.none()
    if model is Secret:
        # Names, scopes and versions (never values): an environment's secrets to everyone
        # who may see the environment, a team's to those who may see the team's pipelines;
        # "manage" as governance.secrets.can_manage decides.
        teams = pipelines(user).values("team")
        if action == "view":
            return qs.filter(Q(environment__isnull=False) | Q(team__in=teams))
        if action == "manage":
            envs = restrict(Environment.objects.all(), user, "manage_secrets")
            own = (
                Q(team__group__in=user.groups.all())
                if user.has_perm("orchestrator.add_pipeline")
                else Q(pk__in=[])
            )
            return qs.filter(Q(environment__in=envs) | own)
        return qs.none()
    if model in (Policy, PolicyVersion):
        if action == "view":
            return qs
        if action in ("change", "publish"):
            return qs if user.has_perm("governance.change_policy") else qs.none()
        return qs.none()
    if model is AuditEvent:
        if action == "view" and user.has_perm("governance.view_auditevent"):
            return qs
        # The audit log is exported whole or not at all: its events concern users, roles,
        # policies and environments as well as pipelines, and a chain with holes cannot be
        # verified. So export rights alone are not enough: the installation-wide audit
        # permission is required too (can_export_audit; docs/reports.md).
        if action == "export" and can_export_audit(user):
            return qs
        return qs.none()
    if model is ReportJob:
        if user.has_perm("governance.export_reports"):
            return qs.filter(requested_by=user)
        return qs.none()
    return qs.none()


restricted.register(restrict)


def can(user, action: str, obj: Model) -> bool:
    """May `user` do `action` on `obj`? The same decision as restrict(), for one object."""
    if not _active(user):
        return False
    return restrict(type(obj)._default_manager.filter(pk=obj.pk), user, action).exists()


def can_export(user) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm("governance.export_reports"))


def can_export_audit(user) -> bool:
    """Export rights plus the installation-wide audit permission (see restrict)."""
    return can_export(user) and (user.is_superuser or user.has_perm("governance.view_auditevent"))


def can_edit_policies(user) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm("governance.change_policy"))


def can_view_audit(user) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm("governance.view_auditevent"))

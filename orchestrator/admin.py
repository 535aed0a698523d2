"""Django admin for pipelines and runs.

A window for administrators, like governance/admin.py: every list goes through
governance.permissions.restrict; runs and versions are history (read-only); pipelines are
created and changed through their verbs (the dashboard's editor), so here they are read-only
too, with one action: rotate the webhook secret (orchestrator.actions.rotate_webhook_secret,
audited). The secret itself is never a column, a field or a filter; a rotation shows the new
secret once, on the action's own answer page.
"""

from __future__ import annotations

from django.contrib import admin
from django.template.response import TemplateResponse

from governance import admin as governance_admin
from governance.permissions import can, restrict

from . import actions
from .models import Pipeline, PipelineVersion, Run, StageRun


class ReadOnlyAdmin(governance_admin.ReadOnlyAdmin):
    """governance's read-only admin, narrowed to what the user may view, and never showing
    a pipeline's webhook secret."""

    hidden_fields = frozenset({"webhook_secret"})

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")


@admin.register(Pipeline)
class PipelineAdmin(ReadOnlyAdmin):
    list_display = ("slug", "name", "team", "current_version", "created_at", "updated_at")
    list_filter = ("team",)
    search_fields = ("slug", "name")
    actions = ["rotate_webhook_secret"]

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

    @admin.action(description="Rotate the webhook secret (shown once)")
    def rotate_webhook_secret(self, request, queryset):
        rotated, refused = [], []
        for pipeline in queryset.order_by("slug"):
            if not can(request.user, "change", pipeline):
                refused.append(pipeline.slug)
                continue
            secret = actions.rotate_webhook_secret(pipeline, actor=request.user)
            rotated.append({"slug": pipeline.slug, "secret": secret})
        context = {
            **self.admin_site.each_context(request),
            "title": "New webhook secrets",
            "rotated": rotated,
            "refused": refused,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/orchestrator/rotated_secrets.html", context)


@admin.register(PipelineVersion)
class PipelineVersionAdmin(ReadOnlyAdmin):
    list_display = ("pipeline", "number", "author", "created_at")
    list_filter = ("pipeline",)


class StageRunInline(admin.TabularInline):
    model = StageRun
    extra = 0
    can_delete = False
    fields = ("position", "name", "environment", "status", "reason", "started_at", "finished_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "status", "trigger", "triggered_by", "created_at", "finished_at")
    list_filter = ("status", "trigger", "pipeline")
    search_fields = ("pipeline__slug",)
    date_hierarchy = "created_at"
    list_select_related = ("pipeline", "triggered_by")
    inlines = [StageRunInline]

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_staff

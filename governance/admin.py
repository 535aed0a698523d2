"""Django admin for the governance models.

The admin is a window, not a back door: history (audit events, policy versions, decisions,
gates, approvals, overrides, reports) is read-only here, policies are saved through the
policy verbs (compiled, audited, versioned only by publishing), environment changes are
audited, and every list goes through governance.permissions.restrict.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.utils.html import format_html

from . import actions, audit, change_requests, notifications, policies, rego, secrets, siem
from .models import (
    Approval,
    ApprovalRule,
    AuditChainHead,
    AuditCheckpoint,
    AuditEvent,
    AuditStreamCursor,
    Delegation,
    Environment,
    Gate,
    NotificationChannel,
    NotificationDelivery,
    NotificationPreference,
    Override,
    Policy,
    PolicyDecision,
    PolicyVersion,
    ReportJob,
    Secret,
    SecretVersion,
    Tier,
)
from .permissions import can_edit_policies, restrict
from .rego import PolicyCompileError


def _all_fields(model, hidden=frozenset()) -> list[str]:
    return [f.name for f in model._meta.fields if f.name not in hidden]


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is never edited: no add, change or delete, every field read-only. Fields in
    `hidden_fields` (credentials) are not shown at all."""

    hidden_fields: frozenset[str] = frozenset()

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_readonly_fields(self, request, obj=None):
        return _all_fields(self.model, self.hidden_fields) + [
            f.name for f in self.model._meta.many_to_many
        ]

    def get_fields(self, request, obj=None):
        if not self.hidden_fields:
            return super().get_fields(request, obj)
        return self.get_readonly_fields(request, obj)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- audit -------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Strictly read-only: the only writer of the audit log is governance.audit.record."""

    list_display = ("seq", "at", "actor_name", "action", "target", "outcome", "short_hash")
    list_filter = ("outcome", "target_type")
    search_fields = ("action", "actor_name", "target_name", "target_id", "request_id")
    date_hierarchy = "at"
    ordering = ("-seq",)
    fields = _all_fields(AuditEvent)
    actions = None
    list_per_page = 100
    show_full_result_count = False  # a COUNT(*) over the whole log on every page is waste

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")

    @admin.display(description="target")
    def target(self, event: AuditEvent) -> str:
        if not event.target_type:
            return ""
        name = f" {event.target_name}" if event.target_name else ""
        return f"{event.target_type}:{event.target_id}{name}"

    @admin.display(description="hash")
    def short_hash(self, event: AuditEvent) -> str:
        return event.hash[:12]


@admin.register(AuditChainHead)
class AuditChainHeadAdmin(ReadOnlyAdmin):
    list_display = ("seq", "hash")


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    """The signed checkpoints (governance.checkpoints) and which sinks took each one."""

    list_display = ("seq", "at", "key_id", "short_hash", "sinks_state")
    ordering = ("-seq",)
    actions = None

    @admin.display(description="hash")
    def short_hash(self, cp: AuditCheckpoint) -> str:
        return cp.hash[:12]

    @admin.display(description="sinks")
    def sinks_state(self, cp: AuditCheckpoint) -> str:
        return ", ".join(f"{k}: {v}" for k, v in cp.sinks.items()) or "none configured"


@admin.register(AuditStreamCursor)
class AuditStreamCursorAdmin(ReadOnlyAdmin):
    """Each SIEM destination: what it acknowledged and how far behind the head it is."""

    list_display = (
        "name",
        "acked_seq",
        "lag_events",
        "lag_seconds",
        "acked_at",
        "failures",
        "last_error",
    )
    actions = None

    def changelist_view(self, request, extra_context=None):
        self._lag = {row["name"]: row for row in siem.lag()}
        for name in self._lag:  # a destination not yet delivered to is listed too
            AuditStreamCursor.objects.get_or_create(name=name)
        return super().changelist_view(request, extra_context)

    def _row(self, cursor: AuditStreamCursor) -> dict:
        return getattr(self, "_lag", {}).get(cursor.name, {})

    @admin.display(description="events behind")
    def lag_events(self, cursor: AuditStreamCursor):
        return self._row(cursor).get("lag_events", "not configured")

    @admin.display(description="oldest unsent (s)")
    def lag_seconds(self, cursor: AuditStreamCursor):
        return self._row(cursor).get("lag_seconds", "")


# --- policies ----------------------------------------------------------------------------


class PolicyAdminForm(forms.ModelForm):
    """Compiles the source in clean(): a compile error is shown on the source field with its
    line and column, and nothing is saved."""

    tiers = forms.MultipleChoiceField(
        choices=Tier.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    test_cases = forms.JSONField(required=False, initial=list)
    source = forms.CharField(
        strip=False,
        widget=forms.Textarea(
            attrs={"rows": 24, "cols": 100, "spellcheck": "false", "class": "vLargeTextField"}
        ),
    )

    class Meta:
        model = Policy
        fields = [
            "name",
            "description",
            "enforcement",
            "environments",
            "tiers",
            "enabled",
            "source",
            "test_cases",
        ]

    def clean_source(self):
        # Browsers submit textareas with CRLF line ends; the source is stored with LF.
        source = (self.cleaned_data.get("source") or "").replace("\r\n", "\n")
        if self.instance.pk and source == self.instance.source:
            return source  # unchanged drafts were compiled when they were saved
        try:
            rego.compile_policy(source)
        except PolicyCompileError as exc:
            raise forms.ValidationError([str(e) for e in exc.errors])
        return source

    def clean_test_cases(self):
        try:
            return policies.validate_test_cases(self.cleaned_data.get("test_cases") or [])
        except policies.PolicyInvalid as exc:
            raise forms.ValidationError(exc.message)


class PolicyVersionInline(ReadOnlyInline):
    model = PolicyVersion
    fields = ("number", "sha256", "enforcement", "author", "created_at")
    readonly_fields = fields
    ordering = ("-number",)


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    form = PolicyAdminForm
    list_display = ("name", "enforcement", "enabled", "published", "draft_state", "updated_at")
    list_filter = ("enforcement", "enabled")
    search_fields = ("name", "description")
    inlines = [PolicyVersionInline]
    actions = ["publish_selected", "disable_selected"]

    def get_readonly_fields(self, request, obj=None):
        # Renaming would break every reference by name (reports, decisions, the API).
        return ("name",) if obj is not None else ()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # disable instead: history keeps pointing at its versions

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("current_version")
        return restrict(qs, request.user, "view")

    @admin.display(description="published")
    def published(self, policy: Policy) -> str:
        return f"v{policy.current_version.number}" if policy.current_version else "—"

    @admin.display(description="draft")
    def draft_state(self, policy: Policy) -> str:
        return "unpublished changes" if policy.has_unpublished_changes else "published"

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        common = {
            "description": data.get("description", ""),
            "environments": list(data.get("environments") or []),
            "tiers": data.get("tiers") or [],
            "test_cases": data.get("test_cases") or [],
            "enabled": data.get("enabled", True),
            "enforcement": data["enforcement"],
        }
        if change:
            scope = {k: common.pop(k) for k in ("environments", "tiers", "enabled")}
            policies.save_draft(obj, actor=request.user, source=data["source"], **common)
            # Scope and `enabled` apply at once: a change request (four eyes).
            proposed = change_requests.propose_policy_scope(obj, actor=request.user, **scope)
            if proposed is not None:
                self.message_user(request, _waits(proposed, "policy admin"), messages.WARNING)
        else:
            created = policies.create_policy(
                actor=request.user, name=data["name"], source=data["source"], **common
            )
            obj.pk = created.pk
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        # The verbs set the environments (audited); form.save_m2m() would set them again.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    @admin.action(description="Publish selected policies (runs their test cases)")
    def publish_selected(self, request, queryset):
        if not policies_editable(request):
            self.message_user(request, "you may not publish policies", messages.ERROR)
            return
        for policy in queryset:
            try:
                proposed = change_requests.propose_policy_publish(policy, actor=request.user)
            except (
                policies.PolicyActionError,
                PolicyCompileError,
                change_requests.ChangeRequestError,
            ) as exc:
                self.message_user(request, f"{policy.name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{policy.name}: {_waits(proposed, 'policy admin')}")

    @admin.action(description="Disable selected policies")
    def disable_selected(self, request, queryset):
        if not policies_editable(request):
            self.message_user(request, "you may not change policies", messages.ERROR)
            return
        proposed = 0
        for policy in queryset:
            if change_requests.propose_policy_scope(policy, actor=request.user, enabled=False):
                proposed += 1
        self.message_user(
            request,
            f"proposed disabling {proposed} polic(ies): each waits for a second policy admin",
        )


def policies_editable(request) -> bool:
    return can_edit_policies(request.user)


def _waits(row, role: str) -> str:
    return f"your change waits for a second {role} (change request {row.pk}: {row.summary})"


@admin.register(PolicyVersion)
class PolicyVersionAdmin(ReadOnlyAdmin):
    list_display = ("policy", "number", "enforcement", "sha256", "author", "created_at")
    list_filter = ("enforcement",)
    search_fields = ("policy__name", "sha256")
    formfield_overrides = {models.TextField: {"widget": forms.Textarea}}


@admin.register(PolicyDecision)
class PolicyDecisionAdmin(ReadOnlyAdmin):
    list_display = ("id", "gate", "policy_version", "enforcement", "result", "current", "at")
    list_filter = ("result", "enforcement", "current")
    list_select_related = ("policy_version__policy", "gate")

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")

    @admin.display(description="at", ordering="created_at")
    def at(self, decision: PolicyDecision):
        return decision.created_at


# --- environments --------------------------------------------------------------------------


class ApprovalRuleInline(admin.TabularInline):
    model = ApprovalRule
    extra = 0


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    """Environments are configuration: editable by holders of change_environment, and every
    change is audited in the transaction of the admin save."""

    list_display = ("name", "tier", "protected", "timezone", "approval_ttl_hours")
    list_filter = ("tier", "protected")
    search_fields = ("name",)
    inlines = [ApprovalRuleInline]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # gates, runs and reports refer to environments

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj is not None else ()

    def save_model(self, request, obj, form, change):
        # Through the one writer of environments (governance.actions): one transaction, one
        # audit row with the same detail schema as the environment page's.
        data = form.cleaned_data
        settings = {name: data[name] for name in Environment.SETTINGS if name in data}
        windows = {
            name: data[name] for name in ("freeze_windows", "change_windows") if name in data
        }
        if change:
            # Proposed with the rules in save_formset: one change request (four eyes).
            request._environment_change = {"settings": settings, **windows}
        else:
            settings.update(windows)
            obj.pk = actions.create_environment(
                actor=request.user, name=data["name"], settings=settings
            ).pk
        obj.refresh_from_db()

    def save_formset(self, request, form, formset, change):
        # The approval rules as the inline leaves them, written by the same verb.
        wanted = {}
        for inline in formset.forms:
            data = getattr(inline, "cleaned_data", None) or {}
            if not data or data.get("DELETE") or data.get("group") is None:
                continue
            wanted[data["group"]] = {f: data.get(f) for f in actions.RULE_FIELDS}
        pending = getattr(request, "_environment_change", None)
        if pending is None:  # a new environment: created by create_environment
            actions.update_environment(form.instance, actor=request.user, rules=wanted)
            return
        proposed = change_requests.propose_environment_update(
            form.instance, actor=request.user, rules=wanted, **pending
        )
        if proposed is not None:
            self.message_user(request, _waits(proposed, "environment admin"), messages.WARNING)


# --- gates and what hangs off them --------------------------------------------------------


class DecisionInline(ReadOnlyInline):
    model = PolicyDecision
    fields = ("policy_version", "enforcement", "result", "deny", "warn", "current", "created_at")
    readonly_fields = fields


class ApprovalInline(ReadOnlyInline):
    model = Approval
    fields = ("user", "decision", "comment", "attributed_group", "void", "created_at")
    readonly_fields = fields


class OverrideInline(ReadOnlyInline):
    model = Override
    fields = ("user", "justification", "policies", "created_at")
    readonly_fields = fields


@admin.register(Gate)
class GateAdmin(ReadOnlyAdmin):
    """Gates change only through governance.gates / governance.actions (locked, audited)."""

    list_display = ("id", "run", "environment", "status", "created_at", "decided_at")
    list_filter = ("status", "environment")
    list_select_related = ("environment", "stage_run__run__pipeline")
    inlines = [DecisionInline, ApprovalInline, OverrideInline]

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")

    @admin.display(description="run")
    def run(self, gate: Gate) -> str:
        return format_html("{} / {}", gate.stage_run.run, gate.stage_run.name)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ("id", "gate", "user", "on_behalf_of", "decision", "void", "created_at")
    list_filter = ("decision", "void")

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")


@admin.register(Override)
class OverrideAdmin(ReadOnlyAdmin):
    list_display = ("id", "gate", "user", "created_at")

    def get_queryset(self, request):
        gates = restrict(Gate.objects.all(), request.user, "view")
        return super().get_queryset(request).filter(gate__in=gates)


@admin.register(ReportJob)
class ReportJobAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "requested_by", "status", "progress", "created_at")
    list_filter = ("status", "kind")

    def get_queryset(self, request):
        return restrict(super().get_queryset(request), request.user, "view")


# --- notifications -----------------------------------------------------------------------


class NotificationChannelForm(forms.ModelForm):
    class Meta:
        model = NotificationChannel
        fields = ["name", "environment", "url", "events", "enabled"]

    def clean_url(self):
        url = self.cleaned_data["url"].strip()
        if not notifications.valid_url(url):
            raise forms.ValidationError(
                f"{notifications.mask(url)} is not an apprise URL: use e.g. "
                "slack://TokenA/TokenB/TokenC, workflows://host/workflow/signature (Teams), "
                "mailto://user:pass@example.org or jsons://host/path"
            )
        return url

    def clean_events(self):
        events = self.cleaned_data["events"] or []
        unknown = [e for e in events if e not in notifications.KINDS]
        if not isinstance(events, list) or unknown:
            raise forms.ValidationError(
                f"unknown kinds {unknown}; use a list of {', '.join(notifications.KINDS)}"
            )
        return events


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    """Apprise channels per environment. The list shows URLs masked (they hold tokens)."""

    form = NotificationChannelForm
    list_display = ("name", "environment", "masked_url", "events", "enabled")
    list_filter = ("enabled", "environment")

    @admin.display(description="URL")
    def masked_url(self, channel: NotificationChannel) -> str:
        return notifications.mask(channel.url)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit.record(
            request.user,
            "notification.channel_update" if change else "notification.channel_create",
            obj,
            environment=obj.environment.name if obj.environment else None,
            url=notifications.mask(obj.url),
            events=obj.events,
            enabled=obj.enabled,
        )


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "email", "events")


@admin.register(Delegation)
class DelegationAdmin(ReadOnlyAdmin):
    """Delegations (out of office), read-only: they are set and revoked through
    governance.delegation (the preferences page, the API), which audits them."""

    list_display = ("delegator", "delegate", "starts_at", "ends_at", "revoked_at", "reason")
    list_filter = ("revoked_at",)
    search_fields = ("delegator__username", "delegate__username")
    ordering = ("-starts_at",)


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(ReadOnlyAdmin):
    """Every channel message and its outcome; failed ones are what admins act on."""

    list_display = ("created_at", "kind", "gate", "target", "status", "attempts", "last_error")
    list_filter = ("status", "kind")
    ordering = ("-created_at",)
    actions = None


class SecretAdminForm(forms.ModelForm):
    """The value is write-only: an empty field on every page, never the stored value."""

    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        strip=False,
        required=False,
        help_text="Write-only. Set it to create a new version; leave empty to keep the value.",
    )

    class Meta:
        model = Secret
        fields = ["name", "environment", "team"]

    def clean(self):
        data = super().clean()
        name = data.get("name") or getattr(self.instance, "name", "")
        value = data.get("value") or ""
        if not self.instance.pk and not value:
            raise forms.ValidationError("A new secret needs a value.")
        problem = secrets.validate(name, value or None)
        if problem:
            raise forms.ValidationError(problem[1])
        return data


class SecretVersionInline(ReadOnlyInline):
    model = SecretVersion
    fields = ["number", "key_id", "created_by", "created_at"]
    readonly_fields = fields


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    """Secrets through governance.secrets (audited, permission-checked); values go in only."""

    form = SecretAdminForm
    list_display = ["name", "environment", "team", "version", "updated_at", "updated_by"]
    list_filter = ["environment"]
    search_fields = ["name"]
    inlines = [SecretVersionInline]

    def get_readonly_fields(self, request, obj=None):
        return ["name", "environment", "team", "version"] if obj else ["version"]

    def save_model(self, request, obj, form, change):
        value = form.cleaned_data.get("value") or ""
        if not value:
            if not change:
                messages.error(request, "A new secret needs a value.")
            return
        scope_source = Secret.objects.get(pk=obj.pk) if change else obj
        try:
            saved = secrets.set_secret(
                actor=request.user,
                name=scope_source.name,
                value=value,
                environment=scope_source.environment,
                team=scope_source.team,
            )
        except secrets.SecretRefused as exc:
            messages.error(request, str(exc))
            return
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        secrets.delete_secret(actor=request.user, secret=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

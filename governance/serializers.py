"""Serializers of the governance API.

Gates are rendered from plain dicts built by `gate_detail` (the same data the pages use), so
the OpenAPI schema of these serializers is exactly what clients receive."""

from __future__ import annotations

from rest_framework import serializers

from . import gates, plans
from .models import ApprovalDecision, Enforcement, Environment, Gate, GateStatus
from .permissions import can

# --- gates --------------------------------------------------------------------------------


class RunRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.IntegerField()
    pipeline = serializers.CharField(help_text="pipeline slug")
    status = serializers.CharField()
    version = serializers.IntegerField(required=False, help_text="pipeline version number")
    triggered_by = serializers.CharField(allow_null=True, required=False)
    parameters = serializers.DictField(required=False)


class GateSerializer(serializers.Serializer):
    """A gate in a list."""

    id = serializers.IntegerField()
    status = serializers.ChoiceField(GateStatus.choices)
    environment = serializers.CharField()
    run = RunRefSerializer()
    stage = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    overridden = serializers.BooleanField(help_text="an override (break-glass) was used")
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)


class DecisionSerializer(serializers.Serializer):
    policy = serializers.CharField()
    version = serializers.IntegerField()
    enforcement = serializers.ChoiceField(Enforcement.choices)
    result = serializers.ChoiceField(["pass", "warn", "deny", "error"])
    messages = serializers.ListField(child=serializers.CharField())
    deny = serializers.ListField(child=serializers.CharField())
    warn = serializers.ListField(child=serializers.CharField())
    overridden = serializers.BooleanField()
    duration_ms = serializers.FloatField()


class ApprovalSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    user = serializers.CharField(help_text="who decided (a delegate, for on_behalf_of)")
    on_behalf_of = serializers.CharField(
        allow_null=True, help_text="the approver a delegate decided for (a delegation), or null"
    )
    decision = serializers.ChoiceField(ApprovalDecision.choices)
    comment = serializers.CharField(allow_blank=True)
    at = serializers.DateTimeField()
    group = serializers.CharField(
        allow_null=True, help_text="the approval rule (group) this approval was counted for"
    )
    expires_at = serializers.DateTimeField(allow_null=True)
    void = serializers.BooleanField()
    void_reason = serializers.CharField(allow_blank=True)


class RequiredSerializer(serializers.Serializer):
    group = serializers.CharField()
    count = serializers.IntegerField()
    given = serializers.IntegerField()


class OverrideSerializer(serializers.Serializer):
    user = serializers.CharField()
    justification = serializers.CharField()
    policies = serializers.ListField(child=serializers.DictField())
    at = serializers.DateTimeField()


class ExclusionSerializer(serializers.Serializer):
    user = serializers.CharField()
    reason = serializers.CharField()


class PlanSummarySerializer(serializers.Serializer):
    format_version = serializers.CharField()
    tool_version = serializers.CharField(allow_blank=True)
    headline = serializers.CharField(help_text='"3 to add, 1 to change, 1 to destroy"')
    counts = serializers.DictField(
        child=serializers.IntegerField(), help_text="add, change, destroy, replace, forget"
    )
    resources = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="the resource addresses by kind of change",
    )


class PlanSerializer(serializers.Serializer):
    artifact = serializers.CharField()
    stage = serializers.CharField()
    path = serializers.CharField()
    sha256 = serializers.CharField()
    summary = PlanSummarySerializer(allow_null=True)
    error = serializers.CharField(allow_blank=True, help_text="why the plan cannot be used")


class GateDetailSerializer(GateSerializer):
    """A gate with everything an approver needs to decide."""

    decisions = DecisionSerializer(many=True)
    approvals = ApprovalSerializer(many=True)
    required = RequiredSerializer(many=True)
    overrides = OverrideSerializer(many=True)
    excluded = ExclusionSerializer(
        many=True, help_text="who may not approve this run (separation of duties)"
    )
    seen_hash = serializers.CharField(
        allow_blank=True, help_text="pass it back when approving to refuse a stale approval"
    )
    input_hash = serializers.CharField(allow_blank=True)
    input = serializers.DictField(help_text="the last policy input document (policy-input.md)")
    plans = PlanSerializer(
        many=True, help_text="the terraform plans among the policy-input artifacts, summarised"
    )
    can_approve = serializers.BooleanField()
    can_reject = serializers.BooleanField()
    can_override = serializers.BooleanField()
    cannot_approve_reason = serializers.CharField(allow_null=True)


ON_BEHALF_HELP = (
    "the username of an approver you stand in for (a delegation in force); when left out, "
    "your own rights are used, or the first delegator's whose rights let you decide"
)


class ApproveRequestSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=4000)
    seen_hash = serializers.CharField(required=False, allow_blank=True, max_length=64)
    on_behalf_of = serializers.CharField(
        required=False, allow_blank=True, max_length=150, help_text=ON_BEHALF_HELP
    )


class RejectRequestSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=4000)
    on_behalf_of = serializers.CharField(
        required=False, allow_blank=True, max_length=150, help_text=ON_BEHALF_HELP
    )


class OverrideRequestSerializer(serializers.Serializer):
    justification = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=4000
    )


class GateErrorSerializer(serializers.Serializer):
    message = serializers.CharField()
    rule = serializers.CharField(required=False, help_text="the rule that refused")
    errors = serializers.DictField(required=False, help_text="field errors of a bad request")


def _run_ref(run, full: bool = False) -> dict:
    ref = {
        "id": run.pk,
        "number": run.number,
        "pipeline": run.pipeline.slug,
        "status": run.status,
    }
    if full:
        ref["version"] = run.version.number
        ref["triggered_by"] = run.triggered_by.get_username() if run.triggered_by else None
        ref["parameters"] = run.parameters or {}
    return ref


def gate_summary(gate: Gate) -> dict:
    overridden = getattr(gate, "has_override", None)
    if overridden is None:
        overridden = gate.overrides.exists()
    return {
        "id": gate.pk,
        "status": gate.status,
        "environment": gate.environment.name,
        "run": _run_ref(gate.stage_run.run),
        "stage": gate.stage_run.name,
        "reason": gate.reason,
        "overridden": bool(overridden) or gate.status == GateStatus.OVERRIDDEN,
        "created_at": gate.created_at,
        "decided_at": gate.decided_at,
    }


def gate_detail(gate: Gate, user) -> dict:
    """Everything about a gate that `user` (who may view it) may see, and what they may do."""
    run = gate.stage_run.run
    env = gate.environment
    decisions = list(
        gate.decisions.filter(current=True)
        .select_related("policy_version__policy")
        .order_by("policy_version__policy__name")
    )
    approvals = list(
        gate.approvals.select_related("user", "on_behalf_of").order_by("created_at", "pk")
    )
    overrides = list(gate.overrides.select_related("user").order_by("created_at", "pk"))
    live = [a for a in approvals if not a.void]
    progress = gates.approval_progress(env, live, gates.escalated_groups(gate))
    covered = gate.overridden_policies(overrides)
    decision_rows = [
        {
            "policy": d.policy_version.policy.name,
            "version": d.policy_version.number,
            "enforcement": d.enforcement,
            "result": d.result,
            "messages": d.messages,
            "deny": list(d.deny),
            "warn": list(d.warn),
            "overridden": (d.policy_version.policy.name, d.policy_version.number) in covered,
            "duration_ms": d.duration_ms,
        }
        for d in decisions
    ]
    excluded = []
    seen_users = set()
    for candidate in filter(None, [run.triggered_by, run.version.author]):
        reason = gates.sod_violation(run, candidate)
        if reason and candidate.pk not in seen_users:
            seen_users.add(candidate.pk)
            excluded.append({"user": candidate.get_username(), "reason": reason})
    author = (run.parameters or {}).get("author")
    if isinstance(author, str) and author.strip():
        names = {e["user"].lower() for e in excluded}
        if author.strip().lower() not in names:
            excluded.append(
                {
                    "user": author.strip(),
                    "reason": "separation of duties: the author of the change may not approve it",
                }
            )
    problem = gates.approve_problem(gate, run, user)
    can_reject = (
        gates.eligibility_problem(gate, user) is None and gates.state_problem(gate, run) is None
    )
    if can_reject:
        mine = next((a for a in live if a.user_id == user.pk), None)
        can_reject = mine is None or mine.decision == ApprovalDecision.APPROVE
    soft_open = bool(gate.open_soft_denials(decisions, overrides))
    can_override = (
        soft_open and gates.state_problem(gate, run) is None and can(user, "override", gate)
    )
    return {
        **gate_summary(gate),
        "run": _run_ref(run, full=True),
        "overridden": bool(overrides) or gate.status == GateStatus.OVERRIDDEN,
        "decisions": decision_rows,
        "approvals": [
            {
                "id": a.pk,
                "user": a.user.get_username(),
                "on_behalf_of": a.on_behalf_of.get_username() if a.on_behalf_of else None,
                "decision": a.decision,
                "comment": a.comment,
                "at": a.created_at,
                "group": a.attributed_group or None,
                "expires_at": a.expires_at,
                "void": a.void,
                "void_reason": a.void_reason,
            }
            for a in approvals
        ],
        "required": progress.summary(),
        "overrides": [
            {
                "user": o.user.get_username(),
                "justification": o.justification,
                "policies": o.policies,
                "at": o.created_at,
            }
            for o in overrides
        ],
        "excluded": excluded,
        "seen_hash": gate.seen_hash,
        "input_hash": gate.input_hash,
        "input": gate.input or {},
        "plans": [
            {
                "artifact": p["name"],
                "stage": p["stage"],
                "path": p["path"],
                "sha256": p["sha256"],
                "summary": p["summary"].as_dict() if p["summary"] else None,
                "error": p["error"],
            }
            for p in plans.gate_plans(gate.input)
        ],
        "can_approve": problem is None,
        "can_reject": can_reject,
        "can_override": can_override,
        "cannot_approve_reason": str(problem) if problem else None,
    }


# --- environments -------------------------------------------------------------------------


class RuleSerializer(serializers.Serializer):
    group = serializers.CharField(source="group.name")
    count = serializers.IntegerField(source="required_count")


class EnvironmentSerializer(serializers.ModelSerializer):
    rules = RuleSerializer(source="approval_rules", many=True, read_only=True)
    notifications = serializers.SerializerMethodField(
        help_text="whether a chat webhook is configured (its URL is a secret)"
    )
    can_approve = serializers.SerializerMethodField()
    can_override = serializers.SerializerMethodField()

    class Meta:
        model = Environment
        fields = [
            "id",
            "name",
            "tier",
            "protected",
            "timezone",
            "freeze_windows",
            "change_windows",
            "approval_ttl_hours",
            "reminder_minutes",
            "rules",
            "notifications",
            "can_approve",
            "can_override",
        ]

    def get_notifications(self, env) -> bool:
        return bool(env.notify_webhook_url)

    def get_can_approve(self, env) -> bool:
        return env.pk in self.context.get("approve_ids", ())

    def get_can_override(self, env) -> bool:
        return env.pk in self.context.get("override_ids", ())

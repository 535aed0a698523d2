"""REST API v1 for policies, their versions and the decision log.

Anyone signed in may read policies (they are the rules every deploy is held to); only holders
of permissions.can_edit_policies may create, change, disable, publish or dry-run them. All
changes go through the verbs in governance.policies. Decisions follow their pipeline:
governance.permissions.restrict decides which ones a user sees.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response

from . import change_requests, policies, rego
from .api_change_requests import created, refused
from .filters import DecisionFilter, PolicyFilter
from .models import Enforcement, Policy, PolicyDecision, PolicyVersion, Tier
from .permissions import can_edit_policies, restrict

# --- serializers -------------------------------------------------------------------------


class ScopeSerializer(serializers.Serializer):
    environments = serializers.ListField(child=serializers.SlugField(), required=False)
    tiers = serializers.ListField(child=serializers.ChoiceField(Tier.choices), required=False)


class VersionSummarySerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = PolicyVersion
        fields = ["number", "sha256", "enforcement", "author", "created_at"]


class PolicyVersionSerializer(serializers.ModelSerializer):
    policy = serializers.SlugRelatedField(slug_field="name", read_only=True)
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = PolicyVersion
        fields = [
            "policy",
            "number",
            "source",
            "sha256",
            "enforcement",
            "test_results",
            "coverage",
            "author",
            "created_at",
        ]


class PolicySerializer(serializers.ModelSerializer):
    scope = serializers.SerializerMethodField()
    current_version = VersionSummarySerializer(read_only=True, allow_null=True)
    version = serializers.IntegerField(
        source="current_version.number", read_only=True, allow_null=True
    )
    has_unpublished_changes = serializers.BooleanField(read_only=True)
    updated_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Policy
        fields = [
            "id",
            "name",
            "description",
            "source",
            "enforcement",
            "scope",
            "enabled",
            "test_cases",
            "version",
            "current_version",
            "has_unpublished_changes",
            "updated_by",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(ScopeSerializer)
    def get_scope(self, policy: Policy) -> dict:
        return {
            "environments": sorted(e.name for e in policy.environments.all()),
            "tiers": list(policy.tiers),
        }


class PolicyWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    source = serializers.CharField(max_length=200_000, trim_whitespace=False, required=False)
    enforcement = serializers.ChoiceField(Enforcement.choices, required=False)
    scope = ScopeSerializer(required=False)
    description = serializers.CharField(allow_blank=True, required=False)
    test_cases = serializers.ListField(child=serializers.DictField(), required=False)
    enabled = serializers.BooleanField(required=False)


class DecisionOutSerializer(serializers.Serializer):
    result = serializers.ChoiceField(["pass", "warn", "deny", "error"])
    allowed = serializers.BooleanField()
    deny = serializers.ListField(child=serializers.CharField())
    warn = serializers.ListField(child=serializers.CharField())
    duration_ms = serializers.FloatField()
    error = serializers.CharField(allow_null=True)
    evaluated = serializers.CharField(help_text='"draft", "source" or "v<number>"')
    enforcement = serializers.CharField()
    input_hash = serializers.CharField()


class EvaluateSerializer(serializers.Serializer):
    input = serializers.JSONField(
        help_text="any JSON document (object, array, ...); gates pass the documented object"
    )
    source = serializers.CharField(max_length=200_000, trim_whitespace=False, required=False)
    version = serializers.CharField(
        required=False, help_text='"draft" (default), "current" or a version number'
    )


class TestRequestSerializer(serializers.Serializer):
    source = serializers.CharField(max_length=200_000, trim_whitespace=False, required=False)
    test_cases = serializers.ListField(child=serializers.DictField(), required=False)


class TestCaseResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    passed = serializers.BooleanField()
    deny = serializers.ListField(child=serializers.CharField())
    warn = serializers.ListField(child=serializers.CharField())
    message = serializers.CharField()
    result = serializers.CharField()
    covered = serializers.ListField(child=serializers.IntegerField())
    prints = serializers.ListField(child=serializers.CharField())


class CoverageSerializer(serializers.Serializer):
    covered = serializers.ListField(child=serializers.IntegerField())
    not_covered = serializers.ListField(child=serializers.IntegerField())
    percent = serializers.FloatField()


class TestReportSerializer(serializers.Serializer):
    passed = serializers.BooleanField()
    total = serializers.IntegerField()
    failed = serializers.IntegerField()
    results = TestCaseResultSerializer(many=True)
    coverage = CoverageSerializer(allow_null=True, help_text="OPA's coverage over all cases")


class DryRunRequestSerializer(serializers.Serializer):
    source = serializers.CharField(max_length=200_000, trim_whitespace=False, required=False)
    days = serializers.IntegerField(
        min_value=1, max_value=policies.DRY_RUN_MAX_DAYS, required=False, default=30
    )
    enforcement = serializers.ChoiceField(Enforcement.choices, required=False)


class DryRunChangeSerializer(serializers.Serializer):
    gate = serializers.IntegerField()
    run = serializers.IntegerField()
    run_number = serializers.IntegerField()
    pipeline = serializers.CharField()
    stage = serializers.CharField()
    environment = serializers.CharField()
    at = serializers.DateTimeField()
    before = serializers.CharField(allow_null=True)
    after = serializers.CharField()
    messages = serializers.ListField(child=serializers.CharField())


class DryRunSerializer(serializers.Serializer):
    policy = serializers.CharField(allow_null=True)
    enforcement = serializers.CharField()
    days = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    gates = serializers.IntegerField()
    would_block = serializers.IntegerField()
    would_warn = serializers.IntegerField()
    errors = serializers.IntegerField()
    changed_count = serializers.IntegerField()
    changed = DryRunChangeSerializer(many=True)
    summary = serializers.CharField()


class PolicyDecisionSerializer(serializers.ModelSerializer):
    policy = serializers.CharField(source="policy_version.policy.name", read_only=True)
    version = serializers.IntegerField(source="policy_version.number", read_only=True)
    messages = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = PolicyDecision
        fields = [
            "id",
            "gate",
            "policy",
            "version",
            "enforcement",
            "result",
            "deny",
            "warn",
            "messages",
            "input_hash",
            "duration_ms",
            "current",
            "created_at",
        ]


ErrorSerializer = inline_serializer(
    "PolicyError",
    {
        "message": serializers.CharField(),
        # Absent when the body is not JSON at all (then the message says why).
        "errors": serializers.ListField(
            required=False,
            child=inline_serializer(
                "PolicyErrorItem",
                {
                    "message": serializers.CharField(),
                    "file": serializers.CharField(required=False, allow_null=True),
                    "line": serializers.IntegerField(allow_null=True),
                    "column": serializers.IntegerField(allow_null=True),
                    "path": serializers.CharField(),
                },
            ),
        ),
    },
)


# --- errors ------------------------------------------------------------------------------

# Verb field names → the request's field paths.
_FIELD_PATHS = {"environments": "scope.environments", "tiers": "scope.tiers"}


def _error(message: str, errors: list[dict], code: int = status.HTTP_400_BAD_REQUEST, **extra):
    return Response({"message": message, "errors": errors, **extra}, status=code)


def _flatten(detail, path: str = "") -> list[dict]:
    """DRF validation errors as the API's error list."""
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            if isinstance(key, int):  # ListField errors are keyed by position
                sub_path = f"{path}[{key}]"
            elif key == "non_field_errors":
                sub_path = path
            else:
                sub_path = f"{path}.{key}" if path else str(key)
            out += _flatten(value, sub_path)
        return out
    if isinstance(detail, list) and detail and all(not isinstance(d, dict | list) for d in detail):
        return [{"message": str(d), "line": None, "column": None, "path": path} for d in detail]
    if isinstance(detail, list):
        out = []
        for index, value in enumerate(detail):
            out += _flatten(value, f"{path}[{index}]")
        return out
    return [{"message": str(detail), "line": None, "column": None, "path": path}]


def _validate(serializer_class, data):
    body = serializer_class(data=data)
    if not body.is_valid():
        errors = _flatten(body.errors)
        first = errors[0] if errors else {"message": "invalid request", "path": ""}
        message = f"{first['path']}: {first['message']}" if first["path"] else first["message"]
        return None, _error(message, errors)
    return body.validated_data, None


def _refused(exc: policies.PolicyActionError):
    if isinstance(exc, policies.PolicyInvalid):
        path = _FIELD_PATHS.get(exc.field, exc.field)
        return _error(
            f"{path}: {exc.message}",
            [{"message": exc.message, "line": None, "column": None, "path": path}],
        )
    if isinstance(exc, policies.PolicyTestsMissing):
        return _error(
            str(exc),
            [{"message": str(exc), "line": None, "column": None, "path": "test_cases"}],
            missing=exc.missing,
        )
    if isinstance(exc, policies.PolicyTestFailure):
        errors = [
            {
                "message": f"{r['name']}: {r['message']}",
                "line": None,
                "column": None,
                "path": f"test_cases[{i}]",
            }
            for i, r in enumerate(exc.results)
            if not r["passed"]
        ]
        return _error(str(exc), errors, results=exc.results)
    return Response({"message": str(exc)}, status=status.HTTP_409_CONFLICT)


def _require_editor(user) -> None:
    if not can_edit_policies(user):
        raise PermissionDenied("you may not change policies (policy-admin role required)")


def _scope_kwargs(data: dict) -> dict:
    scope = data.get("scope")
    if scope is None:
        return {}
    out = {}
    if "environments" in scope:
        out["environments"] = scope["environments"]
    if "tiers" in scope:
        out["tiers"] = scope["tiers"]
    return out


# --- viewsets ----------------------------------------------------------------------------


class PolicyViewSet(viewsets.GenericViewSet):
    """Policies as code: the draft lives on the policy; publishing creates an immutable
    version, which is what gates evaluate."""

    serializer_class = PolicySerializer
    queryset = Policy.objects.none()
    filterset_class = PolicyFilter
    # The API token scope each request needs (governance/api_auth.py).
    token_scopes = {"unsafe": "policy"}  # create, change, publish, delete, test, dry-run

    def get_queryset(self):
        qs = Policy.objects.select_related(
            "current_version__author", "updated_by"
        ).prefetch_related("environments")
        qs = restrict(qs, self.request.user, "view")
        return qs.order_by("name")

    def _reload(self, policy: Policy) -> Policy:
        return self.get_queryset().get(pk=policy.pk)

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(PolicySerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(PolicySerializer(self.get_object()).data)

    @extend_schema(
        request=PolicyWriteSerializer,
        responses={201: PolicySerializer, 400: ErrorSerializer},
    )
    def create(self, request):
        _require_editor(request.user)
        data, error = _validate(PolicyWriteSerializer, request.data)
        if error:
            return error
        missing = [f for f in ("name", "source", "enforcement") if f not in data]
        if missing:
            errors = [
                {"message": "This field is required.", "line": None, "column": None, "path": f}
                for f in missing
            ]
            return _error(f"{', '.join(missing)}: this field is required", errors)
        try:
            policy = policies.create_policy(
                actor=request.user,
                name=data["name"],
                source=data["source"],
                enforcement=data["enforcement"],
                description=data.get("description", ""),
                test_cases=data.get("test_cases", ()),
                enabled=data.get("enabled", True),
                **_scope_kwargs(data),
            )
        except policies.PolicyActionError as exc:
            return _refused(exc)
        return Response(PolicySerializer(self._reload(policy)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=PolicyWriteSerializer,
        responses={200: PolicySerializer, 400: ErrorSerializer},
        description="Save the draft. Gates keep using the published version until /publish/.",
    )
    def update(self, request, pk=None):
        policy = self.get_object()
        _require_editor(request.user)
        data, error = _validate(PolicyWriteSerializer, request.data)
        if error:
            return error
        if "name" in data and data["name"] != policy.name:
            message = "a policy cannot be renamed; create a new one and disable this one"
            return _error(
                f"name: {message}",
                [{"message": message, "line": None, "column": None, "path": "name"}],
            )
        try:
            policies.save_draft(
                policy,
                actor=request.user,
                source=data.get("source"),
                enforcement=data.get("enforcement"),
                description=data.get("description"),
                test_cases=data.get("test_cases"),
            )
            # Scope and `enabled` apply at once: they become a change request (four eyes).
            proposed = change_requests.propose_policy_scope(
                policy, actor=request.user, enabled=data.get("enabled"), **_scope_kwargs(data)
            )
        except policies.PolicyActionError as exc:
            return _refused(exc)
        except change_requests.ChangeRequestError as exc:
            return refused(exc)
        body = PolicySerializer(self._reload(policy)).data
        if proposed is None:
            return Response(body)
        return Response(
            {**body, "change_request": created(proposed).data["change_request"]},
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=PolicyWriteSerializer, responses={200: PolicySerializer})
    def partial_update(self, request, pk=None):
        return self.update(request, pk=pk)

    @extend_schema(
        responses={202: None, 204: None},
        description="Propose disabling the policy (202 with the change request; 204 when it "
        "is disabled already). Policies and their versions are never deleted.",
    )
    def destroy(self, request, pk=None):
        policy = self.get_object()
        _require_editor(request.user)
        try:
            proposed = change_requests.propose_policy_scope(
                policy, actor=request.user, enabled=False
            )
        except change_requests.ChangeRequestError as exc:
            return refused(exc)
        if proposed is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return created(proposed)

    @extend_schema(
        request=None,
        responses={
            202: None,
            400: ErrorSerializer,
            409: inline_serializer("PolicyConflict", {"message": serializers.CharField()}),
        },
        description="Compile the draft, run its test cases and its dry run and, if all pass, "
        "propose publishing it (202 with the change request: a second policy admin approves "
        "it at /change-requests/{id}/approve/). Test cases without one that denies and one that "
        "passes refuse publishing (400, `missing`), and so does a failing test case (400, with "
        "`results`).",
    )
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        policy = self.get_object()
        _require_editor(request.user)
        try:
            proposed = change_requests.propose_policy_publish(policy, actor=request.user)
        except policies.PolicyActionError as exc:
            return _refused(exc)
        except change_requests.ChangeRequestError as exc:
            return refused(exc)
        return created(proposed)

    @extend_schema(responses=PolicyVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, pk=None):
        policy = self.get_object()
        qs = restrict(policy.versions.all(), request.user, "view")
        qs = qs.select_related("policy", "author").order_by("-number")
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(PolicyVersionSerializer(page, many=True).data)

    @extend_schema(responses=PolicyVersionSerializer)
    @action(detail=True, methods=["get"], url_path=r"versions/(?P<number>[0-9]+)")
    def version(self, request, pk=None, number=None):
        policy = self.get_object()
        qs = restrict(policy.versions.select_related("policy", "author"), request.user, "view")
        return Response(PolicyVersionSerializer(get_object_or_404(qs, number=number)).data)

    def _pick_source(self, request, policy: Policy, data: dict) -> tuple[str, str, str]:
        """(source, label, enforcement) to evaluate; a caller-supplied source needs the editor
        role (it runs arbitrary code in the evaluators)."""
        if data.get("source") is not None:
            _require_editor(request.user)
            rego.compile_policy(data["source"])  # a 400 with line/column
            return data["source"], "source", policy.enforcement
        wanted = str(data.get("version") or "draft")
        if wanted == "draft":
            return policy.source, "draft", policy.enforcement
        if wanted == "current":
            version = policy.current_version
            if version is None:
                raise NotFound(f"{policy.name} has no published version yet")
        elif wanted.removeprefix("v").isdigit():
            version = policy.versions.filter(number=int(wanted.removeprefix("v"))).first()
            if version is None:
                raise NotFound(f"{policy.name} has no version {wanted}")
        else:
            raise NotFound(f'unknown version "{wanted}": use draft, current or a number')
        return version.source, f"v{version.number}", version.enforcement

    @extend_schema(
        request=EvaluateSerializer,
        responses={200: DecisionOutSerializer, 400: ErrorSerializer},
        description="Evaluate the draft (default), the current version, a version number, or "
        "(policy admins) a given source against an input document. Nothing is recorded.",
    )
    @action(detail=True, methods=["post"])
    def evaluate(self, request, pk=None):
        policy = self.get_object()
        data, error = _validate(EvaluateSerializer, request.data)
        if error:
            return error
        source, label, enforcement = self._pick_source(request, policy, data)
        decision = rego.evaluate(source, data["input"], name=policy.name)
        return Response(
            {
                "result": decision.result,
                "allowed": decision.allowed,
                "deny": decision.deny,
                "warn": decision.warn,
                "duration_ms": decision.duration_ms,
                "error": decision.error,
                "evaluated": label,
                "enforcement": enforcement,
                "input_hash": rego.input_hash(data["input"]),
            }
        )

    @extend_schema(
        request=TestRequestSerializer,
        responses={200: TestReportSerializer, 400: ErrorSerializer},
        description="Run the draft's test cases. Policy admins may send a `source` and/or "
        "`test_cases` to try before saving.",
    )
    @action(detail=True, methods=["post"])
    def test(self, request, pk=None):
        policy = self.get_object()
        data, error = _validate(TestRequestSerializer, request.data or {})
        if error:
            return error
        source, cases = policy.source, policy.test_cases
        if "source" in data or "test_cases" in data:
            _require_editor(request.user)
        if "source" in data:
            source = data["source"]
            rego.compile_policy(source)
        if "test_cases" in data:
            try:
                cases = policies.validate_test_cases(data["test_cases"])
            except policies.PolicyInvalid as exc:
                return _refused(exc)
        suite = rego.run_test_suite(source, cases) if cases else {"results": [], "coverage": None}
        results = suite["results"]
        failed = sum(1 for r in results if not r["passed"])
        return Response(
            {
                "passed": failed == 0,
                "total": len(results),
                "failed": failed,
                "results": results,
                "coverage": suite["coverage"],
            }
        )

    @extend_schema(
        request=DryRunRequestSerializer,
        responses={200: DryRunSerializer, 400: ErrorSerializer},
        description="Replay the draft (or a given source) against the recorded inputs of the "
        "gates of the last `days` days in the policy's scope, and compare with what the "
        "policy decided then. Nothing is recorded except an audit event.",
    )
    @action(detail=True, methods=["post"], url_path="dry-run")
    def dry_run(self, request, pk=None):
        policy = self.get_object()
        _require_editor(request.user)
        data, error = _validate(DryRunRequestSerializer, request.data or {})
        if error:
            return error
        try:
            report = policies.dry_run(
                data.get("source", policy.source),
                days=data["days"],
                enforcement=data.get("enforcement", policy.enforcement),
                policy=policy,
                actor=request.user,
            )
        except policies.PolicyActionError as exc:
            return _refused(exc)
        return Response(report)


class PolicyDecisionViewSet(viewsets.ReadOnlyModelViewSet):
    """The decision log: every evaluation of a policy version at a gate. Decisions follow
    their pipeline's view permission."""

    serializer_class = PolicyDecisionSerializer
    queryset = PolicyDecision.objects.none()
    token_scopes: dict = {}  # read-only: every request needs "read"
    filterset_class = DecisionFilter

    def get_queryset(self):
        qs = PolicyDecision.objects.select_related("policy_version__policy")
        qs = restrict(qs, self.request.user, "view")
        return qs.order_by("-created_at", "-id")


def register(router) -> None:
    router.register("policies", PolicyViewSet, basename="policy")
    router.register("decisions", PolicyDecisionViewSet, basename="policydecision")

"""REST API v1 for gates (list, detail, approve, reject, override) and environments.

Gates a user may not view are 404; a visible gate the user may not decide answers 403 with
the rule that refused. Decisions go through the verbs in governance.actions.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import actions, gates
from .api_auth import request_token
from .filters import GateFilter
from .models import ApprovalRule, Environment, Gate, GateStatus, Override
from .permissions import restrict
from .serializers import (
    ApproveRequestSerializer,
    EnvironmentSerializer,
    GateDetailSerializer,
    GateErrorSerializer,
    GateSerializer,
    OverrideRequestSerializer,
    RejectRequestSerializer,
    gate_detail,
    gate_summary,
)

_ERRORS = {
    400: OpenApiResponse(GateErrorSerializer, description="incomplete request"),
    403: OpenApiResponse(GateErrorSerializer, description="not allowed; says which rule"),
    404: OpenApiResponse(GateErrorSerializer, description="no such gate (or not visible)"),
    409: OpenApiResponse(GateErrorSerializer, description="the gate takes no such decision now"),
}


def _error(exc: gates.GateError) -> Response:
    return Response({"message": exc.message, "rule": exc.rule}, status=exc.status_code)


def _named(username: str | None):
    """The user `on_behalf_of` names (None when not given). An unknown name is refused like
    a name that gave no delegation: the verb audits and answers 403 either way."""
    name = (username or "").strip()
    if not name:
        return None
    User = get_user_model()
    return User.objects.filter(username=name).first() or User(username=name, pk=-1)


class GateViewSet(viewsets.GenericViewSet):
    """Gates in front of stages that deploy to protected environments."""

    serializer_class = GateSerializer
    queryset = Gate.objects.none()
    filterset_class = GateFilter
    # The API token scope each request needs (governance/api_auth.py).
    token_scopes = {"approve": "approve", "reject": "approve", "override": "approve"}

    def _base(self):
        return Gate.objects.select_related(
            "environment",
            "stage_run__run__pipeline",
            "stage_run__run__version",
            "stage_run__run__triggered_by",
        ).annotate(has_override=Exists(Override.objects.filter(gate=OuterRef("pk"))))

    def get_queryset(self):
        if self.action == "list" and self.request.query_params.get("status") == GateStatus.WAITING:
            return self._base().decidable_by(self.request.user)
        return restrict(self._base(), self.request.user, "view")

    @extend_schema(responses={200: GateSerializer(many=True), 400: _ERRORS[400]})
    def list(self, request):
        qs = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(qs.order_by("-created_at", "-pk"))
        data = GateSerializer([gate_summary(g) for g in page], many=True).data
        return self.get_paginated_response(data)

    @extend_schema(responses={200: GateDetailSerializer, 404: _ERRORS[404]})
    def retrieve(self, request, pk=None):
        return self._detail(self.get_object())

    def _detail(self, gate: Gate) -> Response:
        gate = self.get_queryset().get(pk=gate.pk)
        return Response(GateDetailSerializer(gate_detail(gate, self.request.user)).data)

    @extend_schema(
        request=ApproveRequestSerializer, responses={200: GateDetailSerializer, **_ERRORS}
    )
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        gate = self.get_object()
        body = ApproveRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            actions.approve_gate(
                gate,
                actor=request.user,
                comment=body.validated_data["comment"],
                seen_hash=body.validated_data.get("seen_hash") or None,
                on_behalf_of=_named(body.validated_data.get("on_behalf_of")),
                token=request_token(request),
            )
        except gates.GateError as exc:
            return _error(exc)
        return self._detail(gate)

    @extend_schema(
        request=RejectRequestSerializer, responses={200: GateDetailSerializer, **_ERRORS}
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        gate = self.get_object()
        body = RejectRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            actions.reject_gate(
                gate,
                actor=request.user,
                comment=body.validated_data["comment"],
                on_behalf_of=_named(body.validated_data.get("on_behalf_of")),
            )
        except gates.GateError as exc:
            return _error(exc)
        return self._detail(gate)

    @extend_schema(
        request=OverrideRequestSerializer, responses={200: GateDetailSerializer, **_ERRORS}
    )
    @action(detail=True, methods=["post"])
    def override(self, request, pk=None):
        gate = self.get_object()
        body = OverrideRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            actions.override_gate(
                gate, actor=request.user, justification=body.validated_data["justification"]
            )
        except gates.GateError as exc:
            return _error(exc)
        return self._detail(gate)


class EnvironmentViewSet(viewsets.ReadOnlyModelViewSet):
    """Deployment targets with their approval rules, freeze and change windows."""

    serializer_class = EnvironmentSerializer
    queryset = Environment.objects.none()
    token_scopes: dict = {}  # read-only: every request needs "read"
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    def get_queryset(self):
        rules = ApprovalRule.objects.select_related("group").order_by("group__name")
        qs = Environment.objects.prefetch_related(Prefetch("approval_rules", rules))
        return restrict(qs.order_by("name"), self.request.user, "view")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        user = self.request.user
        everything = Environment.objects.all()
        context["approve_ids"] = set(
            restrict(everything, user, "approve").values_list("pk", flat=True)
        )
        context["override_ids"] = set(
            restrict(everything, user, "override").values_list("pk", flat=True)
        )
        return context


def register(router) -> None:
    router.register("gates", GateViewSet, basename="gate")
    router.register("environments", EnvironmentViewSet, basename="environment")

"""REST API v1 for delegations (out of office), through governance.delegation.

- GET /api/v1/delegations/: the caller's delegations, given and held (a superuser: all).
- POST /api/v1/delegations/ {"delegate", "starts_at", "ends_at", "reason"}: delegate the
  caller's approvals to a colleague for that period. A superuser may name a "delegator".
- POST /api/v1/delegations/{id}/revoke/: end it now (the delegator or a superuser).
Refusals answer with {"message", "rule"} and are audited.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Q
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import delegation
from .models import Delegation


class DelegationSerializer(serializers.ModelSerializer):
    delegator = serializers.CharField(source="delegator.username")
    delegate = serializers.CharField(source="delegate.username")
    created_by = serializers.CharField(source="created_by.username")
    revoked_by = serializers.CharField(source="revoked_by.username", allow_null=True, default=None)
    in_force = serializers.SerializerMethodField()

    class Meta:
        model = Delegation
        fields = [
            "id",
            "delegator",
            "delegate",
            "starts_at",
            "ends_at",
            "reason",
            "created_by",
            "created_at",
            "revoked_at",
            "revoked_by",
            "in_force",
        ]

    def get_in_force(self, obj) -> bool:
        return obj.in_force()


class DelegationWriteSerializer(serializers.Serializer):
    delegate = serializers.CharField(max_length=150, help_text="the colleague's username")
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=200)
    delegator = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=150,
        help_text="superusers only: whose approvals are delegated (default: the caller)",
    )  # fmt: skip


class DelegationErrorSerializer(serializers.Serializer):
    message = serializers.CharField()
    rule = serializers.CharField(required=False)


_ERRORS = {
    400: OpenApiResponse(DelegationErrorSerializer, description="refused; says which rule"),
    403: OpenApiResponse(DelegationErrorSerializer, description="not allowed"),
    404: OpenApiResponse(DelegationErrorSerializer, description="no such delegation"),
    409: OpenApiResponse(DelegationErrorSerializer, description="already revoked or ended"),
}


def _error(exc: delegation.DelegationError) -> Response:
    return Response({"message": exc.message, "rule": exc.rule}, status=exc.status_code)


class DelegationViewSet(viewsets.GenericViewSet):
    """Out of office: who decides gates in whose place, and when."""

    # A delegation hands on the right to approve: creating or revoking one needs the approve
    # scope (short-lived, made after a step-up), like approving itself.
    token_scopes = {"unsafe": "approve"}

    serializer_class = DelegationSerializer
    queryset = Delegation.objects.none()

    def get_queryset(self):
        user = self.request.user
        qs = Delegation.objects.select_related(
            "delegator", "delegate", "created_by", "revoked_by"
        ).order_by("-starts_at", "-pk")
        if user.is_superuser:
            return qs
        return qs.filter(Q(delegator=user) | Q(delegate=user))

    @extend_schema(responses={200: DelegationSerializer(many=True)})
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DelegationSerializer(page, many=True).data)

    @extend_schema(
        request=DelegationWriteSerializer,
        responses={201: DelegationSerializer, 400: _ERRORS[400], 403: _ERRORS[403]},
    )
    def create(self, request):
        body = DelegationWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        User = get_user_model()
        delegate = User.objects.filter(username=data["delegate"], is_active=True).first()
        if delegate is None:
            return Response(
                {
                    "message": f"no active user is called {data['delegate'][:60]!r}",
                    "rule": "delegate",
                },
                status=400,
            )
        delegator = request.user
        if data.get("delegator"):
            delegator = User.objects.filter(username=data["delegator"]).first()
            if delegator is None:
                return Response(
                    {
                        "message": f"no user is called {data['delegator'][:60]!r}",
                        "rule": "delegator",
                    },
                    status=400,
                )
        try:
            row = delegation.create_delegation(
                actor=request.user,
                delegator=delegator,
                delegate=delegate,
                starts_at=data["starts_at"],
                ends_at=data["ends_at"],
                reason=data["reason"],
            )
        except delegation.DelegationError as exc:
            return _error(exc)
        return Response(DelegationSerializer(self.get_queryset().get(pk=row.pk)).data, status=201)

    @extend_schema(request=None, responses={200: DelegationSerializer, **_ERRORS})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        row = self.get_object()
        try:
            delegation.revoke_delegation(row, actor=request.user)
        except delegation.DelegationError as exc:
            return _error(exc)
        return Response(DelegationSerializer(self.get_queryset().get(pk=row.pk)).data)


def register(router) -> None:
    router.register("delegations", DelegationViewSet, basename="delegation")

"""REST API v1 for governance change requests (four eyes; governance/change_requests.py).

GET /api/v1/change-requests/ lists what the user may see (`?status=pending`, `?waiting=1`:
only those waiting for them); POST …/{id}/approve/ (comment), …/reject/ (comment),
…/withdraw/ and …/apply-alone/ (a superuser, with a justification) decide. Refusals answer
403 (permission, own request), 409 (not pending, stale) or 400 (bad input) with a message,
and are audited. Visibility and decisions are governance.permissions' (restrict).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import change_requests
from .models import ChangeRequest, ChangeRequestStatus
from .permissions import restrict


class ChangeRequestSerializer(serializers.ModelSerializer):
    proposed_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    decided_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    policy = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    environment = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)

    class Meta:
        model = ChangeRequest
        fields = [
            "id",
            "kind",
            "policy",
            "environment",
            "summary",
            "status",
            "payload",
            "diff",
            "checks",
            "proposed_by",
            "proposed_at",
            "decided_by",
            "decided_at",
            "comment",
            "justification",
            "exception",
            "applied_at",
            "error",
        ]


CommentSerializer = inline_serializer(
    "ChangeRequestComment", {"comment": serializers.CharField(required=False, allow_blank=True)}
)
JustificationSerializer = inline_serializer(
    "ChangeRequestJustification", {"justification": serializers.CharField()}
)


def refused(exc: change_requests.ChangeRequestError) -> Response:
    code = status.HTTP_409_CONFLICT
    if isinstance(exc, change_requests.ChangeRequestRefused):
        code = status.HTTP_403_FORBIDDEN
    elif isinstance(exc, change_requests.ChangeRequestInvalid):
        code = status.HTTP_400_BAD_REQUEST
    return Response({"message": exc.message, "rule": exc.rule}, status=code)


def created(row: ChangeRequest) -> Response:
    """A change that became a request: 202, it waits for a second person."""
    return Response(
        {
            "message": "the change waits for a second person's approval",
            "change_request": ChangeRequestSerializer(row).data,
        },
        status=status.HTTP_202_ACCEPTED,
    )


class ChangeRequestViewSet(viewsets.ReadOnlyModelViewSet):
    """Governance change requests the user may see: reviewers see those of what they may
    change, everyone their own."""

    serializer_class = ChangeRequestSerializer
    queryset = ChangeRequest.objects.none()
    # Deciding on a change to a control (approve, reject, withdraw, apply alone) needs the
    # admin scope, whatever the kind of change; reading needs read.
    token_scopes = {"unsafe": "admin"}

    def get_queryset(self):
        user = self.request.user
        qs = ChangeRequest.objects.select_related(
            "policy", "environment", "proposed_by", "decided_by"
        )
        if self.request.query_params.get("waiting"):
            qs = change_requests.pending_for(user).select_related(
                "policy", "environment", "proposed_by", "decided_by"
            )
        else:
            qs = restrict(qs, user, "view")
        wanted = self.request.query_params.get("status")
        if wanted in ChangeRequestStatus.values:
            qs = qs.filter(status=wanted)
        return qs.order_by("-proposed_at", "-id")

    def _answer(self, verb, **kwargs) -> Response:
        row = self.get_object()
        try:
            done = verb(row, actor=self.request.user, **kwargs)
        except change_requests.ChangeRequestError as exc:
            return refused(exc)
        return Response(ChangeRequestSerializer(done).data)

    @extend_schema(request=CommentSerializer, responses={200: ChangeRequestSerializer})
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        return self._answer(change_requests.approve, comment=request.data.get("comment", ""))

    @extend_schema(request=CommentSerializer, responses={200: ChangeRequestSerializer})
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        return self._answer(change_requests.reject, comment=request.data.get("comment", ""))

    @extend_schema(request=None, responses={200: ChangeRequestSerializer})
    @action(detail=True, methods=["post"])
    def withdraw(self, request, pk=None):
        return self._answer(change_requests.withdraw)

    @extend_schema(request=JustificationSerializer, responses={200: ChangeRequestSerializer})
    @action(detail=True, methods=["post"], url_path="apply-alone")
    def apply_alone(self, request, pk=None):
        return self._answer(
            change_requests.apply_alone_as_superuser,
            justification=str(request.data.get("justification", "")),
        )


def register(router) -> None:
    router.register("change-requests", ChangeRequestViewSet, basename="changerequest")

"""REST API v1 for the audit log: a filtered, paginated read of the chain (newest first) and a
verification of the whole chain. Only users for whom permissions.can_view_audit holds may use
it; everyone else gets 403 (the log's existence is no secret, its content is)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import permissions as drf_permissions
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from . import audit, checkpoints
from .api_auth import TokenScope
from .filters import AuditEventFilter
from .models import AuditCheckpoint, AuditEvent
from .permissions import can_view_audit, restrict


class CanViewAudit(drf_permissions.BasePermission):
    message = "you may not view the audit log (compliance-manager role required)"

    def has_permission(self, request, view) -> bool:
        return can_view_audit(request.user)


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "at",
            "actor",
            "actor_id",
            "action",
            "target_type",
            "target_id",
            "target_name",
            "outcome",
            "details",
            "request_id",
            "ip",
            "prev_hash",
            "hash",
        ]


VerifySerializer = inline_serializer(
    "AuditVerify",
    {
        "ok": serializers.BooleanField(),
        "checked": serializers.IntegerField(),
        "head": inline_serializer(
            "AuditHead", {"seq": serializers.IntegerField(), "hash": serializers.CharField()}
        ),
        "first_broken_seq": serializers.IntegerField(allow_null=True),
        "problem": serializers.CharField(),
        "since_seq": serializers.IntegerField(),
    },
)


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The hash-chained audit log, newest first."""

    serializer_class = AuditEventSerializer
    permission_classes = [drf_permissions.IsAuthenticated, TokenScope, CanViewAudit]
    token_scopes: dict = {}  # read-only: every request needs "read"
    queryset = AuditEvent.objects.none()
    lookup_field = "seq"
    lookup_value_regex = "[0-9]+"
    filterset_class = AuditEventFilter

    def get_queryset(self):
        qs = restrict(AuditEvent.objects.all(), self.request.user, "view")
        if self.action != "list":
            return qs
        return qs.order_by("-seq")

    @extend_schema(responses=VerifySerializer)
    @action(detail=False, methods=["get"])
    def verify(self, request):
        """Recompute the chain from the latest signed checkpoint (`since_seq`; from the first
        row with `?full=true`); `ok` is false and `first_broken_seq` names the first row that
        does not match when the log was altered."""
        if self.request.query_params.get("full") in ("1", "true", "yes"):
            return Response(audit.verify().as_dict())
        return Response(checkpoints.verify().as_dict())

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=False, methods=["get"])
    def checkpoints(self, request):
        """The public key that verifies the signed checkpoints (PEM, and its key_id) and the
        latest 20 checkpoints as written to the sinks (docs/audit.md)."""
        try:
            key = checkpoints.load_public_key()
        except checkpoints.CheckpointError as exc:
            return Response({"message": str(exc)}, status=503)
        latest = AuditCheckpoint.objects.order_by("-seq")[:20]
        return Response(
            {
                "public_key": checkpoints.public_pem(key) if key else None,
                "key_id": checkpoints.key_id(key) if key else None,
                "checkpoints": [checkpoints.Checkpoint.from_row(r).document() for r in latest],
            }
        )


def register(router) -> None:
    router.register("audit-events", AuditEventViewSet, basename="auditevent")

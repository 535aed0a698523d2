"""REST API v1 for managed secrets: names, scopes and versions — never a value.

- GET /api/v1/secrets/ and /api/v1/secrets/{id}/: metadata of what the caller may see.
- POST /api/v1/secrets/ {"name", "value", "environment" | "team"}: create, or a new
  version when it exists. PUT/PATCH /api/v1/secrets/{id}/ {"value"}: a new version.
  DELETE /api/v1/secrets/{id}/. POST /api/v1/secrets/{id}/rotate/: re-encrypt with the
  primary key. All through governance.secrets (audited; refusals too).
- GET /api/v1/secrets/{id}/value/: always 403 — values are write-only. Audited.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from orchestrator.models import Team

from . import secrets
from .models import Environment, Secret
from .permissions import restrict


class SecretSerializer(serializers.ModelSerializer):
    environment = serializers.CharField(source="environment.name", allow_null=True, default=None)
    team = serializers.CharField(source="team.slug", allow_null=True, default=None)
    updated_by = serializers.CharField(source="updated_by.username", allow_null=True, default=None)
    versions = serializers.SerializerMethodField()

    class Meta:
        model = Secret
        fields = [
            "id",
            "name",
            "environment",
            "team",
            "version",
            "updated_at",
            "updated_by",
            "versions",
        ]

    def get_versions(self, obj) -> list[dict]:
        return [
            {"number": v.number, "created_at": v.created_at, "key_id": v.key_id}
            for v in obj.versions.all()
        ]


class SecretWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    value = serializers.CharField(trim_whitespace=False, allow_blank=True, write_only=True)
    environment = serializers.CharField(required=False, allow_null=True, default=None)
    team = serializers.CharField(required=False, allow_null=True, default=None)


class SecretValueSerializer(serializers.Serializer):
    value = serializers.CharField(trim_whitespace=False, allow_blank=True, write_only=True)


class SecretErrorSerializer(serializers.Serializer):
    message = serializers.CharField()
    rule = serializers.CharField(required=False)
    name = serializers.CharField(required=False)


def _refused(exc: secrets.SecretRefused) -> Response:
    status = 403 if exc.rule in ("permission", "write-only") else 400
    return Response({"message": str(exc), "rule": exc.rule, "name": exc.name}, status=status)


_ERRORS = {
    400: OpenApiResponse(SecretErrorSerializer, description="bad name or value; says which rule"),
    403: OpenApiResponse(SecretErrorSerializer, description="not allowed; says which rule"),
    404: OpenApiResponse(SecretErrorSerializer, description="no such secret (or not visible)"),
}


class SecretViewSet(viewsets.GenericViewSet):
    """Managed secrets. Values go in and never come out."""

    serializer_class = SecretSerializer
    queryset = Secret.objects.none()
    # The API token scope each request needs (governance/api_auth.py).
    token_scopes = {"safe": "admin", "unsafe": "admin"}

    def get_queryset(self):
        qs = Secret.objects.select_related("environment", "team", "updated_by").prefetch_related(
            "versions"
        )
        return restrict(qs, self.request.user, "view")

    @extend_schema(responses={200: SecretSerializer(many=True)})
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(SecretSerializer(page, many=True).data)

    @extend_schema(responses={200: SecretSerializer, 404: _ERRORS[404]})
    def retrieve(self, request, pk=None):
        return Response(SecretSerializer(self.get_object()).data)

    @extend_schema(
        request=SecretWriteSerializer,
        responses={201: SecretSerializer, 400: _ERRORS[400], 403: _ERRORS[403]},
    )
    def create(self, request):
        body = SecretWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        environment = team = None
        if data.get("environment"):
            environment = Environment.objects.filter(name=data["environment"]).first()
            if environment is None:
                return Response(
                    {"message": f'unknown environment "{data["environment"][:60]}"'}, status=400
                )
        if data.get("team"):
            team = Team.objects.filter(slug=data["team"]).first()
            if team is None:
                return Response({"message": f'unknown team "{data["team"][:60]}"'}, status=400)
        try:
            secret = secrets.set_secret(
                actor=request.user,
                name=data["name"],
                value=data["value"],
                environment=environment,
                team=team,
            )
        except secrets.SecretRefused as exc:
            return _refused(exc)
        return Response(SecretSerializer(self.get_queryset().get(pk=secret.pk)).data, status=201)

    @extend_schema(
        request=SecretValueSerializer,
        responses={200: SecretSerializer, 400: _ERRORS[400], 403: _ERRORS[403], 404: _ERRORS[404]},
    )
    def update(self, request, pk=None):
        secret = self.get_object()
        body = SecretValueSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            secrets.set_secret(
                actor=request.user,
                name=secret.name,
                value=body.validated_data["value"],
                environment=secret.environment,
                team=secret.team,
            )
        except secrets.SecretRefused as exc:
            return _refused(exc)
        return Response(SecretSerializer(self.get_queryset().get(pk=secret.pk)).data)

    partial_update = update

    @extend_schema(responses={204: None, 403: _ERRORS[403], 404: _ERRORS[404]})
    def destroy(self, request, pk=None):
        try:
            secrets.delete_secret(actor=request.user, secret=self.get_object())
        except secrets.SecretRefused as exc:
            return _refused(exc)
        return Response(status=204)

    @extend_schema(
        request=None, responses={200: SecretSerializer, 403: _ERRORS[403], 404: _ERRORS[404]}
    )
    @action(detail=True, methods=["post"])
    def rotate(self, request, pk=None):
        secret = self.get_object()
        try:
            secrets.rotate_secret(actor=request.user, secret=secret)
        except secrets.SecretRefused as exc:
            return _refused(exc)
        return Response(SecretSerializer(self.get_queryset().get(pk=secret.pk)).data)

    @extend_schema(responses={403: _ERRORS[403], 404: _ERRORS[404]})
    @action(detail=True, methods=["get"])
    def value(self, request, pk=None):
        return _refused(secrets.refuse_read(actor=request.user, secret=self.get_object()))


def register(router) -> None:
    router.register("secrets", SecretViewSet, basename="secret")

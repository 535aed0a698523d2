"""REST API v1 for pipelines and runs. Every queryset goes through
governance.permissions.restrict; objects a user may not see are 404."""

from __future__ import annotations

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response

from governance.permissions import can, restrict

from . import actions
from . import artifacts as artifact_store
from .filters import RunFilter
from .logarchive import read_log
from .models import Artifact, Pipeline, Run, StageRun, StepRun, Team
from .serializers import (
    ArtifactSerializer,
    LogSerializer,
    PipelineSerializer,
    PipelineVersionSerializer,
    PipelineWriteSerializer,
    RunDetailSerializer,
    RunSerializer,
    TriggerSerializer,
)


def _action_error(exc: actions.ActionError):
    return Response({"message": str(exc)}, status=status.HTTP_409_CONFLICT)


class PipelineViewSet(viewsets.GenericViewSet):
    serializer_class = PipelineSerializer
    lookup_field = "slug"
    # The API token scope each request needs (governance/api_auth.py).
    token_scopes = {"runs": "trigger", "create": "admin", "update": "admin"}
    queryset = Pipeline.objects.none()

    def get_queryset(self):
        qs = Pipeline.objects.select_related("team", "current_version").order_by("name")
        return restrict(qs, self.request.user, "view")

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(PipelineSerializer(page, many=True).data)

    def retrieve(self, request, slug=None):
        return Response(PipelineSerializer(self.get_object()).data)

    @extend_schema(request=PipelineWriteSerializer, responses={201: PipelineSerializer})
    def create(self, request):
        body = PipelineWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if "slug" not in data:
            raise ValidationError({"slug": ["This field is required."]})
        team = self._team_for(request.user, data.get("team"))
        try:
            pipeline = actions.create_pipeline(
                actor=request.user, slug=data["slug"], definition=data["definition"], team=team
            )
        except actions.ActionError as exc:
            return _action_error(exc)
        return Response(PipelineSerializer(pipeline).data, status=status.HTTP_201_CREATED)

    def _team_for(self, user, slug: str | None) -> Team:
        teams = Team.objects.all()
        if not user.is_superuser:
            if not user.has_perm("orchestrator.add_pipeline"):
                raise PermissionDenied("you may not create pipelines")
            teams = teams.filter(group__in=user.groups.all())
        if slug:
            team = teams.filter(slug=slug).first()
            if team is None:
                raise ValidationError({"team": [f'unknown team "{slug}" (or not yours)']})
            return team
        mine = list(teams[:2])
        if len(mine) != 1:
            raise ValidationError({"team": ["name the team that owns the pipeline"]})
        return mine[0]

    @extend_schema(request=PipelineWriteSerializer, responses={200: PipelineSerializer})
    def update(self, request, slug=None):
        pipeline = self.get_object()
        if not can(request.user, "change", pipeline):
            raise PermissionDenied("you may not change this pipeline")
        body = PipelineWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actions.update_pipeline(
            pipeline, actor=request.user, definition=body.validated_data["definition"]
        )
        pipeline.refresh_from_db()
        return Response(PipelineSerializer(pipeline).data)

    @extend_schema(responses=PipelineVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, slug=None):
        pipeline = self.get_object()
        qs = pipeline.versions.select_related("author").order_by("-number")
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(PipelineVersionSerializer(page, many=True).data)

    @extend_schema(
        request=TriggerSerializer, responses={200: RunSerializer(many=True), 201: RunSerializer}
    )
    @action(detail=True, methods=["get", "post"])
    def runs(self, request, slug=None):
        pipeline = self.get_object()
        if request.method == "GET":
            qs = _run_queryset(request).filter(pipeline=pipeline)
            page = self.paginate_queryset(qs)
            return self.get_paginated_response(RunSerializer(page, many=True).data)
        if not can(request.user, "run", pipeline):
            raise PermissionDenied("you may not run this pipeline")
        body = TriggerSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            run = actions.trigger_run(
                pipeline,
                actor=request.user,
                parameters=body.validated_data["parameters"],
                trigger="api",
            )
        except actions.ActionError as exc:
            return _action_error(exc)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


def _run_queryset(request):
    qs = Run.objects.select_related("pipeline", "version", "triggered_by")
    return restrict(qs, request.user, "view")


class RunViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = RunSerializer
    queryset = Run.objects.none()
    filterset_class = RunFilter
    # The API token scope each request needs (governance/api_auth.py).
    token_scopes = {"cancel": "trigger", "retry": "trigger"}

    def get_queryset(self):
        qs = _run_queryset(self.request)
        if self.action == "retrieve":
            steps = StepRun.objects.order_by("position")
            stages = StageRun.objects.select_related("environment", "gate").order_by("position")
            qs = qs.prefetch_related(Prefetch("stages", stages), Prefetch("stages__steps", steps))
        return qs

    def get_serializer_class(self):
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = self.get_object()
        if not can(request.user, "run", run.pipeline):
            raise PermissionDenied("you may not cancel runs of this pipeline")
        try:
            run = actions.cancel_run(run, actor=request.user)
        except actions.ActionError as exc:
            return _action_error(exc)
        return Response(RunSerializer(run).data)

    @extend_schema(request=None, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        run = self.get_object()
        if not can(request.user, "run", run.pipeline):
            raise PermissionDenied("you may not run this pipeline")
        try:
            new = actions.retry_run(run, actor=request.user)
        except actions.ActionError as exc:
            return _action_error(exc)
        return Response(RunSerializer(new).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter("step", int, required=True),
            OpenApiParameter("offset", int),
            OpenApiParameter("limit", int),
        ],
        responses=LogSerializer,
    )
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        run = self.get_object()
        try:
            step_id = int(request.query_params.get("step", ""))
            offset = int(request.query_params.get("offset", 0))
            limit = min(max(int(request.query_params.get("limit", 5000)), 1), 20000)
        except ValueError:
            raise ValidationError({"step": ["step, offset and limit must be integers"]})
        if offset < 0:
            raise ValidationError({"offset": ["must be >= 0"]})
        step = (
            StepRun.objects.filter(pk=step_id, stage__run=run).select_related("log_archive").first()
        )
        if step is None:
            raise NotFound(f"run {run.pk} has no step {step_id}")
        lines, next_offset = read_log(step, offset, limit)
        complete = step.is_terminal and next_offset >= step.log_lines
        return Response({"lines": lines, "next_offset": next_offset, "complete": complete})

    @extend_schema(responses=ArtifactSerializer(many=True))
    @action(detail=True, methods=["get"])
    def artifacts(self, request, pk=None):
        """The run's artifacts with their digests, in run order."""
        run = self.get_object()
        page = self.paginate_queryset(artifact_store.for_run(run))
        return self.get_paginated_response(ArtifactSerializer(page, many=True).data)

    @extend_schema(
        parameters=[OpenApiParameter("artifact_id", int, OpenApiParameter.PATH)],
        responses={(200, "application/octet-stream"): bytes},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"artifacts/(?P<artifact_id>[0-9]+)/download",
        url_name="artifact-download",
    )
    def artifact_download(self, request, pk=None, artifact_id=None):
        run = self.get_object()  # a run this user may not view: 404
        row = (
            Artifact.objects.filter(stage_run__run=run, pk=int(artifact_id))
            .select_related("stage_run__run__pipeline")
            .first()
        )
        if row is None:
            raise NotFound(f"run {run.pk} has no artifact {artifact_id}")
        if row.purged_at is not None:
            raise NotFound(f"artifact {row.pk} was removed after its retention period")
        return artifact_store.download_response(row)


def get_pipeline_or_404(request, slug):
    return get_object_or_404(restrict(Pipeline.objects.all(), request.user, "view"), slug=slug)

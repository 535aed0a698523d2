from __future__ import annotations

from rest_framework import serializers

from .models import Pipeline, PipelineVersion, Run, StageRun, StepRun


class PipelineVersionSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = PipelineVersion
        fields = ["number", "definition", "spec", "author", "created_at"]


class PipelineSerializer(serializers.ModelSerializer):
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.IntegerField(source="current_version.number", read_only=True)
    definition = serializers.CharField(source="current_version.definition", read_only=True)
    spec = serializers.JSONField(source="current_version.spec", read_only=True)

    class Meta:
        model = Pipeline
        fields = [
            "slug",
            "name",
            "description",
            "team",
            "version",
            "definition",
            "spec",
            "created_at",
            "updated_at",
        ]


class PipelineWriteSerializer(serializers.Serializer):
    slug = serializers.SlugField(max_length=100, required=False)
    team = serializers.SlugField(required=False)
    definition = serializers.CharField(max_length=300_000, trim_whitespace=False)


class TriggerSerializer(serializers.Serializer):
    parameters = serializers.DictField(child=serializers.JSONField(), required=False, default=dict)


class ReleasedSecretSerializer(serializers.Serializer):
    """A secret released to a step: its name, version and scope — never its value."""

    name = serializers.CharField()
    version = serializers.IntegerField()
    scope = serializers.CharField()


class StepSerializer(serializers.ModelSerializer):
    secrets = ReleasedSecretSerializer(many=True, read_only=True)

    class Meta:
        model = StepRun
        fields = [
            "id",
            "name",
            "kind",
            "status",
            "attempt",
            "max_attempts",
            "exit_code",
            "error",
            "started_at",
            "finished_at",
            "log_lines",
            "secrets",
            "log_truncated",
        ]


class GateRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()


class StageSerializer(serializers.ModelSerializer):
    environment = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    steps = StepSerializer(many=True, read_only=True)
    gate = serializers.SerializerMethodField()

    class Meta:
        model = StageRun
        fields = [
            "id",
            "name",
            "status",
            "reason",
            "needs",
            "environment",
            "gate",
            "started_at",
            "finished_at",
            "steps",
        ]

    def get_gate(self, stage) -> dict | None:
        gate = getattr(stage, "gate", None)
        return {"id": gate.pk, "status": gate.status} if gate else None


class RunSerializer(serializers.ModelSerializer):
    pipeline = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    triggered_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Run
        fields = [
            "id",
            "number",
            "pipeline",
            "version",
            "status",
            "reason",
            "trigger",
            "triggered_by",
            "parameters",
            "created_at",
            "started_at",
            "finished_at",
            "event_seq",
        ]


class RunDetailSerializer(RunSerializer):
    stages = StageSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["stages"]


class LogSerializer(serializers.Serializer):
    lines = serializers.ListField(child=serializers.CharField())
    next_offset = serializers.IntegerField()
    complete = serializers.BooleanField()


class ArtifactSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    path = serializers.CharField()
    stage = serializers.CharField(source="stage_run.name")
    step = serializers.CharField(source="step_run.name")
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    content_type = serializers.CharField()
    policy_input = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    purged_at = serializers.DateTimeField(allow_null=True)

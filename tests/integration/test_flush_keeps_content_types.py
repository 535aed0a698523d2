"""The flush after each transactional test keeps content types and permissions with their
ids (tests/pg_flush.py): processes started once per session cache them. Two tests in
order: the first notes the ids, the second finds the same rows."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType

from orchestrator.models import Pipeline

pytestmark = pytest.mark.integration

_seen: dict[str, int] = {}


def test_first_notes_the_ids(live_db):
    content_type = ContentType.objects.get_for_model(Pipeline)
    _seen["content_type"] = content_type.pk
    _seen["permission"] = Permission.objects.get(
        content_type=content_type, codename="run_pipeline"
    ).pk


def test_then_they_are_still_there(live_db):
    assert _seen, "runs after test_first_notes_the_ids"
    content_type = ContentType.objects.get(pk=_seen["content_type"])
    assert (content_type.app_label, content_type.model) == ("orchestrator", "pipeline")
    assert Permission.objects.get(pk=_seen["permission"]).codename == "run_pipeline"

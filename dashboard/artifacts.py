"""Artifact downloads from the run page: `/runs/<run>/artifacts/<artifact>/` streams the
stored file as an attachment. The same read rule as the run page and its logs (a run you
may not see is a 404), and the same for an artifact whose file was purged (retention)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from governance.permissions import restrict
from orchestrator import artifacts
from orchestrator.models import Artifact


def visible_artifact_or_404(user, run_id: int, artifact_id: int) -> Artifact:
    rows = restrict(Artifact.objects.select_related("stage_run__run__pipeline"), user)
    row = get_object_or_404(rows, pk=artifact_id, stage_run__run_id=run_id)
    if row.purged_at is not None:
        raise Http404("this artifact was removed after its retention period")
    return row


@login_required
@require_GET
def artifact_download(request, run_id: int, artifact_id: int):
    return artifacts.download_response(visible_artifact_or_404(request.user, run_id, artifact_id))

"""A step's log as a plain-text download, streamed chunk by chunk (flat memory for any
length): `/runs/<run>/steps/<step>/log.txt`. The same read rule as the run page (a run you
may not see is a 404)."""

from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth.decorators import login_required
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from governance.permissions import restrict
from orchestrator.models import LogChunk, StepRun

CHUNKS_PER_READ = 200


def _lines(step: StepRun) -> Iterator[bytes]:
    chunks = (
        LogChunk.objects.filter(step=step)
        .order_by("offset")
        .values_list("text", flat=True)
        .iterator(chunk_size=CHUNKS_PER_READ)
    )
    for text in chunks:
        yield (text + "\n").encode("utf-8")


@login_required
@require_GET
def step_log_raw(request, run_id: int, step_id: int):
    steps = restrict(StepRun.objects.select_related("stage__run__pipeline"), request.user)
    step = get_object_or_404(steps, pk=step_id, stage__run_id=run_id)
    run = step.stage.run
    name = f"{run.pipeline.slug}-{run.number}-{step.stage.name}-{step.name}.log"
    response = StreamingHttpResponse(_lines(step), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response

"""Logs on the run page, in windows, and as a download.

- `tail_windows(run)`: the last WINDOW lines (whole chunks) of every step, in one query; the
  page renders those, so its weight does not grow with the log (100,000 lines weigh what
  3,000 do). live.js appends what comes after, as before.
- `/runs/<run>/steps/<step>/log/?before=N`: the WINDOW lines before line offset N, rendered
  by the same template tag as the page (one renderer), for "Show earlier lines".
- `/runs/<run>/steps/<step>/log.txt`: the whole log as plain text, streamed chunk by chunk
  (flat memory for any length).

The same read rule as the run page everywhere (a run you may not see is a 404)."""

from __future__ import annotations

from collections.abc import Iterator

from django.contrib.auth.decorators import login_required
from django.db.models import F
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from governance.permissions import restrict
from orchestrator import logarchive
from orchestrator.models import LogArchive, LogChunk, Run, StepRun

from .templatetags.dashboard_tags import log_lines

CHUNKS_PER_READ = 200
WINDOW = 1000  # lines per window: rendered with the page, and per "Show earlier lines"


def line_parts(line: str) -> dict:
    """Split the executor's line prefix ("<UTC timestamp> [stderr] ") from the text."""
    stamp, _, rest = line.partition(" ")
    if len(stamp) >= 20 and stamp[:4].isdigit() and stamp.endswith("Z") and "T" in stamp:
        stderr = rest.startswith("[stderr] ")
        return {"time": stamp, "text": rest[9:] if stderr else rest, "stderr": stderr}
    return {"time": "", "text": line, "stderr": False}


def tail_windows(run: Run) -> dict[int, tuple[int, list[dict]]]:
    """{step id: (offset of the first line shown, lines)}: each step's last WINDOW lines, in
    whole chunks, in one query."""
    chunks = (
        LogChunk.objects.filter(step__stage__run=run)
        .alias(end=F("offset") + F("line_count"))
        .filter(end__gt=F("step__log_lines") - WINDOW)
        .order_by("step", "offset")
        .values_list("step_id", "offset", "text")
    )
    out: dict[int, tuple[int, list[dict]]] = {}
    for step_id, offset, text in chunks:
        first, lines = out.setdefault(step_id, (offset, []))
        if offset != first + len(lines):  # offsets are dense; never show lines out of place
            continue
        lines.extend(line_parts(line) for line in text.split("\n"))
    # Archived logs (an ended run): the last window from storage, one ranged read each.
    for archive in LogArchive.objects.filter(step__stage__run=run):
        first = 0 if archive.purged_at else max(0, archive.line_count - WINDOW)
        text = logarchive.read_lines(archive, first, archive.line_count)
        out[archive.step_id] = (first, [line_parts(line) for line in text])
    return out


def _step_or_404(request, run_id: int, step_id: int) -> StepRun:
    steps = restrict(
        StepRun.objects.select_related("stage__run__pipeline", "log_archive"), request.user
    )
    return get_object_or_404(steps, pk=step_id, stage__run_id=run_id)


@login_required
@require_GET
def step_log_window(request, run_id: int, step_id: int):
    """The lines of the window before `before` (an offset), as the page renders them; the
    answer's X-Log-First header is the offset of its first line."""
    step = _step_or_404(request, run_id, step_id)
    try:
        before = max(0, int(request.GET.get("before", "0")))
    except ValueError:
        return HttpResponse("before must be a line offset", status=400, content_type="text/plain")
    start = max(0, before - WINDOW)
    archived = logarchive.read_window(step, start, before)
    if archived is not None:
        lines = [line_parts(line) for line in archived]
        response = HttpResponse(log_lines(step.pk, lines, start) if lines else "")
        response["X-Log-First"] = str(start) if lines else str(before)
        return response
    chunks = (
        LogChunk.objects.filter(step=step, offset__lt=before)
        .alias(end=F("offset") + F("line_count"))
        .filter(end__gt=start)
        .order_by("offset")
        .values_list("offset", "text")
    )
    first, lines = None, []
    for offset, text in chunks:
        if first is None:
            first = offset
        if offset != first + len(lines):
            break
        lines.extend(line_parts(line) for line in text.split("\n"))
    lines = lines[: max(0, before - (first or 0))]
    response = HttpResponse(log_lines(step.pk, lines, first or 0) if lines else "")
    response["X-Log-First"] = str(first or 0) if lines else str(before)
    return response


def _lines(step: StepRun) -> Iterator[bytes]:
    archive = logarchive.archive_of(step)
    if archive is not None:
        yield from logarchive.iter_text(archive)
        return
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
    step = _step_or_404(request, run_id, step_id)
    run = step.stage.run
    name = f"{run.pipeline.slug}-{run.number}-{step.stage.name}-{step.name}.log"
    response = StreamingHttpResponse(_lines(step), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response

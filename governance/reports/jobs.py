"""Background PDF jobs: where their files live and how their status reads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from django.conf import settings

from ..models import (
    ReportJob,
)
from ..permissions import can_export
from .filters import ChangeFilters, iso, parse_change_filters

# --- PDF jobs ---------------------------------------------------------------------------


def report_dir() -> Path:
    path = Path(settings.MEDIA_ROOT) / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_pdf_job(user, params: Mapping) -> tuple[ReportJob, ChangeFilters]:
    """Validate the filters and create a queued PDF job (governance.actions.request_report_pdf
    audits it and queues it)."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    filters = parse_change_filters(params, user)
    job = ReportJob.objects.create(requested_by=user, kind="changes", filters=filters.as_params())
    return job, filters


def job_path(job: ReportJob) -> Path | None:
    if not job.file:
        return None
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / job.file).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def job_status(job: ReportJob) -> dict:
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "filters": job.filters,
        "sha256": job.sha256 or None,
        "error": job.error or None,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "download_url": f"/api/v1/reports/pdf/{job.pk}/download/"
        if job.status == ReportJob.Status.DONE
        else None,
    }

"""Governance pages. Reports: /reports/ (the export form, the PDF jobs with live progress),
/reports/export/ (streamed CSV / JSON / NDJSON), /reports/access/ (access snapshot).

Only compliance managers and superusers may use them (403 otherwise); a PDF job is its
requester's alone (404 for anyone else)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from orchestrator.models import Pipeline, StageStatus, Team

from . import actions, report_presets, report_table, reports
from .api_reports import download, stream
from .models import Environment, Outcome, ReportJob
from .permissions import can_export, can_export_audit, restrict

CHANGE_FIELDS = ("from", "to", "environment", "pipeline", "team", "outcome", "exceptions_only")
AUDIT_FIELDS = ("from", "to", "actor", "action", "target", "outcome")


def _require_export(request) -> None:
    if not can_export(request.user):
        raise PermissionDenied("Only compliance managers may export reports.")


def _jobs(user):
    return restrict(ReportJob.objects.all(), user, "view").filter(requested_by=user)


def _context(request, *, values=None, audit_values=None, error=None, audit_error=None) -> dict:
    jobs = list(_jobs(request.user).order_by("-created_at", "-id")[:20])
    if values is None:  # a preset link, or the page again after "Generate PDF"
        values = _picked(request.GET, CHANGE_FIELDS)
    return {
        "values": values,
        "presets": report_presets.links(values, timezone.now().date()),
        "audit_values": audit_values or {},
        "error": error,
        "audit_error": audit_error,
        "environments": Environment.objects.order_by("name"),
        "pipelines": restrict(Pipeline.objects.order_by("name"), request.user, "view"),
        "teams": Team.objects.order_by("name"),
        "outcomes": StageStatus.values,
        "audit_outcomes": Outcome.values,
        "can_export_audit": can_export_audit(request.user),
        "jobs": jobs,
        "jobs_active": any(
            j.status in (ReportJob.Status.QUEUED, ReportJob.Status.RUNNING) for j in jobs
        ),
    }


def _picked(data, fields) -> dict:
    return {k: data.get(k, "").strip() for k in fields if data.get(k, "").strip()}


@login_required
@require_http_methods(["GET", "POST"])
def reports_page(request):
    """The form. POST with `export` = csv | json | pdf (changes) or audit-csv | audit-ndjson:
    valid filters redirect to the download (or queue the PDF), bad ones re-render with the
    parameter named."""
    _require_export(request)
    if request.method == "GET":
        return render(request, "governance/reports.html", _context(request))
    choice = request.POST.get("export", "")
    if choice.startswith("audit-"):
        values = _picked(request.POST, AUDIT_FIELDS)
        try:
            reports.parse_audit_filters(values)
            fmt = reports.parse_format({"format": choice[6:]}, reports.AUDIT_FORMATS)
        except reports.FilterError as exc:
            ctx = _context(request, audit_values=values, audit_error=exc)
            return render(request, "governance/reports.html", ctx, status=400)
        query = urlencode({"kind": "audit", **values, "format": fmt})
        return redirect(f"{reverse('governance:reports-export')}?{query}", permanent=False)
    values = _picked(request.POST, CHANGE_FIELDS)
    try:
        filters = reports.parse_change_filters(values, request.user)
        if choice == "pdf":
            actions.request_report_pdf(request.user, filters.as_params())
            # Back to the form with the same filters (the person often exports more).
            return redirect(f"{reverse('governance:reports')}?{urlencode(values)}#jobs")
        if choice == report_table.FORMAT:
            query = urlencode({"kind": "changes", **values, "format": report_table.FORMAT})
            return redirect(f"{reverse('governance:reports-export')}?{query}")
        fmt = reports.parse_format({"format": choice}, reports.CHANGE_FORMATS)
    except reports.FilterError as exc:
        ctx = _context(request, values=values, error=exc)
        return render(request, "governance/reports.html", ctx, status=400)
    query = urlencode({"kind": "changes", **values, "format": fmt})
    return redirect(f"{reverse('governance:reports-export')}?{query}")


@login_required
@require_GET
def reports_export(request):
    """Stream a change report or audit log export (the same code as the API)."""
    _require_export(request)
    kind = request.GET.get("kind", "changes")
    try:
        if kind == "audit":
            if not can_export_audit(request.user):
                reason = "Exporting the audit log needs the installation-wide audit permission."
                reports.record_refused_export(request.user, "audit-log", reason)
                raise PermissionDenied(reason)
            export = reports.export_audit(request.user, request.GET)
        elif kind == "changes" and request.GET.get("format") == report_table.FORMAT:
            export = report_table.export_table(request.user, request.GET)
        elif kind == "changes":
            export = reports.export_changes(request.user, request.GET)
        else:
            raise reports.FilterError("kind", f'unknown report "{kind}"; use changes or audit')
    except reports.FilterError as exc:
        values = _picked(request.GET, CHANGE_FIELDS if kind != "audit" else AUDIT_FIELDS)
        ctx = (
            _context(request, audit_values=values, audit_error=exc)
            if kind == "audit"
            else _context(request, values=values, error=exc)
        )
        return render(request, "governance/reports.html", ctx, status=400)
    return stream(request, export)


@login_required
@require_GET
def report_jobs(request):
    """The job list (an htmx partial, polled every second while a job is running)."""
    _require_export(request)
    return render(request, "governance/reports.html#jobs", _context(request))


@login_required
@require_GET
def report_job_download(request, pk: int):
    _require_export(request)
    job = _jobs(request.user).filter(pk=pk).first()
    if job is None:
        raise Http404("no such report")
    response = download(request, job)
    if response is None:
        return HttpResponse(
            f"Report {pk} is {job.status}, not ready.",
            status=409,
            content_type="text/plain; charset=utf-8",
        )
    return response


@login_required
@require_GET
def reports_access(request):
    """Who could approve or override each protected environment at a date."""
    _require_export(request)
    snapshot = error = None
    if "date" in request.GET:
        try:
            export = reports.export_access(request.user, request.GET)
            snapshot = json.loads(b"".join(export.body))
        except reports.FilterError as exc:
            error = exc
    ctx = {"snapshot": snapshot, "error": error, "date": request.GET.get("date", "")}
    return render(request, "governance/reports_access.html", ctx, status=400 if error else 200)

"""REST API v1 for compliance reports (see docs/reports.md).

    GET  /api/v1/reports/changes?from=&to=&environment=&pipeline=&team=&outcome=
                                 &exceptions_only=&format=csv|json      streamed
    GET  /api/v1/reports/audit?from=&to=&actor=&action=&target=&outcome=&format=csv|ndjson
    GET  /api/v1/reports/access?date=
    GET  /api/v1/reports/pdf/                  the caller's PDF jobs
    POST /api/v1/reports/pdf/ {filters}        -> 202 job
    GET  /api/v1/reports/pdf/{id}/             status and progress
    GET  /api/v1/reports/pdf/{id}/download/

Only compliance managers (governance.export_reports) and superusers may export: everyone
else gets 403; another person's PDF job is 404. Bad filters are a 400
`{"message", "parameter"}`.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.urls import re_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions as drf_permissions
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from . import actions, audit, reports
from .api_auth import TokenScope
from .models import ReportJob
from .permissions import can_export, can_export_audit, restrict


class CanExport(drf_permissions.BasePermission):
    message = "you may not export reports (compliance-manager role required)"

    def has_permission(self, request, view) -> bool:
        return can_export(request.user)


class CanExportAudit(drf_permissions.BasePermission):
    message = (
        "you may not export the audit log: it needs the installation-wide audit permission "
        "(governance.view_auditevent, compliance-manager role) as well as export rights"
    )

    def has_permission(self, request, view) -> bool:
        if can_export_audit(request.user):
            return True
        reports.record_refused_export(request.user, "audit-log", self.message)
        return False


class IgnoreFormatParameter(DefaultContentNegotiation):
    """`?format=` picks the report's file format here, not a DRF renderer; errors and
    statuses are always JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _bad_filter(exc: reports.FilterError) -> Response:
    return Response(exc.as_dict(), status=status.HTTP_400_BAD_REQUEST)


def _aiter(chunks):
    """Serve a synchronous byte iterator to an ASGI server without buffering it: Django would
    otherwise read a sync iterator to the end before sending (StreamingHttpResponse.__aiter__).
    One hop to the request's worker thread per part; the writers yield parts of about 64 KiB
    and flush on their own at the points that matter (the header, the end of the rows, before
    the chain is re-hashed), so each part goes out as soon as it exists."""
    it = iter(chunks)
    done = object()

    def pull():
        return next(it, done)

    async def gen():
        try:
            while (part := await sync_to_async(pull, thread_sensitive=True)()) is not done:
                if part:
                    yield part
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                await sync_to_async(close, thread_sensitive=True)()

    return gen()


def stream(request, export: reports.Export) -> StreamingHttpResponse:
    """The export as a streaming response; async under ASGI so memory stays flat."""
    django_request = getattr(request, "_request", request)
    body = _aiter(export.body) if hasattr(django_request, "scope") else export.body
    response = StreamingHttpResponse(body, content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    response["Cache-Control"] = "no-store"
    response["X-Clearway-Audit-Seq"] = str(export.evidence.export_event_seq)
    response["X-Clearway-Chain-Head"] = f"{export.evidence.head_seq}:{export.evidence.head_hash}"
    return response


def _param(name: str, description: str, enum=None) -> OpenApiParameter:
    return OpenApiParameter(name, str, description=description, enum=enum)


PERIOD = [
    _param("from", "start, UTC: YYYY-MM-DD or ISO 8601 date-time (inclusive)"),
    _param("to", "end, UTC: a date includes that whole day; a date-time is exclusive"),
]
STREAM_RESPONSE = {
    (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR),
    (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT),
    400: OpenApiResponse(OpenApiTypes.OBJECT, description='{"message", "parameter"}'),
}


class ReportView(APIView):
    permission_classes = [drf_permissions.IsAuthenticated, TokenScope, CanExport]
    # Exports read: requesting a PDF (POST) needs "read" as well (governance/api_auth.py).
    token_scopes = {"unsafe": "read"}
    content_negotiation_class = IgnoreFormatParameter


class ChangeReportView(ReportView):
    @extend_schema(
        parameters=[
            *PERIOD,
            _param("environment", "environment name"),
            _param("pipeline", "pipeline slug"),
            _param("team", "team slug"),
            _param("outcome", "stage status, e.g. succeeded, failed, blocked"),
            _param("exceptions_only", "true: only changes with an exception"),
            _param("format", "file format", ["csv", "json"]),
        ],
        responses=STREAM_RESPONSE,
    )
    def get(self, request):
        """The change report, streamed, with its evidence header and SHA-256 trailer."""
        try:
            export = reports.export_changes(request.user, request.query_params)
        except reports.FilterError as exc:
            return _bad_filter(exc)
        return stream(request, export)


class AuditReportView(ReportView):
    permission_classes = [*ReportView.permission_classes, CanExportAudit]

    @extend_schema(
        parameters=[
            *PERIOD,
            _param("actor", "actor name (username, or system)"),
            _param("action", "exact action, or a prefix ending in * (gate.*)"),
            _param("target", "TYPE or TYPE:ID, e.g. run:12"),
            _param("outcome", "success, denied or failure"),
            _param("format", "file format", ["csv", "ndjson"]),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR),
            (200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR),
            400: OpenApiResponse(OpenApiTypes.OBJECT),
        },
    )
    def get(self, request):
        """The raw audit log, streamed, with prev_hash/hash so the chain can be re-checked."""
        try:
            export = reports.export_audit(request.user, request.query_params)
        except reports.FilterError as exc:
            return _bad_filter(exc)
        return stream(request, export)


class AccessReportView(ReportView):
    @extend_schema(
        parameters=[_param("date", "YYYY-MM-DD (end of that day, UTC) or a date-time")],
        responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        """Who could approve and override each protected environment at a date."""
        try:
            export = reports.export_access(request.user, request.query_params)
        except reports.FilterError as exc:
            return _bad_filter(exc)
        response = HttpResponse(b"".join(export.body), content_type=export.content_type)
        response["Content-Disposition"] = f'inline; filename="{export.filename}"'
        response["Cache-Control"] = "no-store"
        return response


def _own_jobs(request):
    # restrict() lets only exporters see jobs; a job is its requester's alone (even for
    # superusers), and anyone else gets a 404 rather than a hint that it exists.
    return restrict(ReportJob.objects.all(), request.user, "view").filter(requested_by=request.user)


class PdfJobListView(ReportView):
    @extend_schema(operation_id="reports_pdf_list", responses={200: OpenApiTypes.OBJECT})
    def get(self, request):
        jobs = _own_jobs(request).order_by("-created_at", "-id")[:50]
        return Response({"results": [reports.job_status(j) for j in jobs]})

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={202: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
    )
    def post(self, request):
        """Queue a PDF change report: body {from, to, environment, pipeline, team, outcome,
        exceptions_only} (all optional) -> 202 with the job."""
        data = request.data if hasattr(request.data, "get") else {}
        params = {k: "" if v is None else str(v) for k, v in dict(data.items()).items()}
        if isinstance(data.get("exceptions_only"), bool):
            params["exceptions_only"] = "true" if data["exceptions_only"] else ""
        try:
            job = actions.request_report_pdf(request.user, params)
        except reports.FilterError as exc:
            return _bad_filter(exc)
        body = reports.job_status(job)
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/reports/pdf/{job.pk}/"},
        )


class PdfJobDetailView(ReportView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, 404: OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        job = _own_jobs(request).filter(pk=pk).first()
        if job is None:
            raise NotFound(f"no report job {pk}")
        return Response(reports.job_status(job))


def download(request, job: ReportJob) -> FileResponse | None:
    """The finished PDF, with its SHA-256 in a header; the download is audited."""
    path = reports.job_path(job)
    if job.status != ReportJob.Status.DONE or path is None:
        return None
    audit.record(request.user, "report.download", job, format="pdf", sha256=job.sha256)
    response = FileResponse(
        path.open("rb"), content_type="application/pdf", as_attachment=True, filename=path.name
    )
    response["X-Content-SHA256"] = job.sha256
    response["Cache-Control"] = "no-store"
    return response


class PdfJobDownloadView(ReportView):
    @extend_schema(
        responses={(200, "application/pdf"): OpenApiTypes.BINARY, 404: OpenApiTypes.OBJECT}
    )
    def get(self, request, pk: int):
        job = _own_jobs(request).filter(pk=pk).first()
        if job is None:
            raise NotFound(f"no report job {pk}")
        response = download(request, job)
        if response is None:
            return Response(
                {"message": f"report job {pk} is {job.status}, not ready"},
                status=status.HTTP_409_CONFLICT,
            )
        return response


def register(router) -> None:
    """Reports are plain views (streams and files), not viewsets: see `urlpatterns`."""


urlpatterns = [
    re_path(r"^reports/changes/?$", ChangeReportView.as_view(), name="report-changes"),
    re_path(r"^reports/audit/?$", AuditReportView.as_view(), name="report-audit"),
    re_path(r"^reports/access/?$", AccessReportView.as_view(), name="report-access"),
    re_path(r"^reports/pdf/$", PdfJobListView.as_view(), name="report-pdf-list"),
    re_path(r"^reports/pdf/(?P<pk>[0-9]+)/$", PdfJobDetailView.as_view(), name="report-pdf"),
    re_path(
        r"^reports/pdf/(?P<pk>[0-9]+)/download/$",
        PdfJobDownloadView.as_view(),
        name="report-pdf-download",
    ),
]

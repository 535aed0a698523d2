"""Pages of governance change requests (four eyes, governance/change_requests.py): the list
(waiting for you, yours, recent) and one request — its diff against the current state, for
a policy publication the test results with coverage and the dry run — with approve, reject
(with a comment), withdraw (the proposer) and apply alone (a superuser, with a
justification). Every decision goes through the verbs; a refusal is shown and audited."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods

from . import change_requests
from .models import ChangeRequest, ChangeRequestKind, ChangeRequestStatus
from .permissions import restrict

RECENT = 30


def _diff_class(line: str) -> str:
    if line.startswith(("---", "+++")):
        return "diff-header"
    if line.startswith("@@"):
        return "diff-hunk"
    return {"+": "diff-add", "-": "diff-del"}.get(line[:1], "diff-ctx")


def _visible(user):
    qs = ChangeRequest.objects.select_related("policy", "environment", "proposed_by", "decided_by")
    return restrict(qs, user, "view")


@login_required
@require_GET
def change_request_list(request):
    user = request.user
    visible = _visible(user)
    waiting = change_requests.pending_for(user).select_related(
        "policy", "environment", "proposed_by"
    )
    return render(
        request,
        "governance/change_requests.html",
        {
            "waiting": list(waiting.order_by("proposed_at", "pk")),
            "mine": list(
                visible.filter(proposed_by=user, status=ChangeRequestStatus.PENDING).order_by(
                    "-proposed_at"
                )
            ),
            "recent": list(
                visible.exclude(status=ChangeRequestStatus.PENDING).order_by("-proposed_at")[
                    :RECENT
                ]
            ),
        },
    )


def _context(request, row: ChangeRequest, **extra) -> dict:
    user = request.user
    may_decide = (
        row.status == ChangeRequestStatus.PENDING
        and restrict(ChangeRequest.objects.filter(pk=row.pk), user, "decide").exists()
    )
    checks = row.checks or {}
    return {
        "cr": row,
        "fields": (row.diff or {}).get("fields", []),
        "source_lines": [(_diff_class(x), x) for x in (row.diff or {}).get("source_lines", [])],
        "tests": checks.get("tests"),
        "coverage": checks.get("coverage") or None,
        "dry_run": checks.get("dry_run"),
        "is_publish": row.kind == ChangeRequestKind.POLICY_PUBLISH,
        "pending": row.status == ChangeRequestStatus.PENDING,
        "own": row.proposed_by_id == user.pk,
        "may_decide": may_decide,
        "may_apply_alone": user.is_superuser and row.status == ChangeRequestStatus.PENDING,
        "min_justification": change_requests.MIN_JUSTIFICATION,
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def change_request_detail(request, pk: int):
    row = get_object_or_404(_visible(request.user), pk=pk)
    if request.method == "GET":
        return render(request, "governance/change_request.html", _context(request, row))
    action = request.POST.get("action", "")
    text = request.POST.get("comment", "")
    user = request.user
    try:
        if action == "approve":
            done = change_requests.approve(row, actor=user, comment=text)
            note = f"Approved and applied: {done.summary}."
        elif action == "reject":
            change_requests.reject(row, actor=user, comment=text)
            note = "Rejected. Nothing was changed."
        elif action == "withdraw":
            change_requests.withdraw(row, actor=user)
            note = "Withdrawn. Nothing was changed."
        elif action == "apply-alone":
            change_requests.apply_alone_as_superuser(
                row, actor=user, justification=request.POST.get("justification", "")
            )
            note = "Applied alone. The change is flagged as an exception in the reports."
        else:
            return HttpResponseBadRequest("unknown action")
    except change_requests.ChangeRequestError as exc:
        row.refresh_from_db()
        status = 403 if isinstance(exc, change_requests.ChangeRequestRefused) else 409
        if isinstance(exc, change_requests.ChangeRequestInvalid):
            status = 400
        context = _context(request, row, refused=exc.message, comment=text)
        return render(request, "governance/change_request.html", context, status=status)
    messages.success(request, note)
    return redirect("governance:change-request", pk=row.pk)


urlpatterns: list = [
    path("change-requests/", change_request_list, name="change-requests"),
    path("change-requests/<int:pk>/", change_request_detail, name="change-request"),
]

"""A pipeline's webhook: the URL, how to sign a request, and its secret — shown once, right
after the pipeline was created or the secret rotated, never in a list, a page reload, the
API or the admin. Rotating is a verb (orchestrator.actions.rotate_webhook_secret), audited.

The one-time display: the view that creates or rotates puts the secret in the (server-side)
session and the next page that shows it takes it out, so a reload no longer shows it."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from governance.permissions import can, pipelines
from orchestrator import actions
from orchestrator.models import Pipeline

SESSION_KEY = "clearway.webhook_secret.{slug}"


def hand_over(request, pipeline: Pipeline, secret: str) -> None:
    """Keep `secret` for the next page that shows `pipeline`'s secret, once."""
    request.session[SESSION_KEY.format(slug=pipeline.slug)] = secret


def take(request, pipeline: Pipeline) -> str:
    """The secret handed over for `pipeline`, removed from the session ("" if none)."""
    return request.session.pop(SESSION_KEY.format(slug=pipeline.slug), "")


@login_required
@require_http_methods(["GET", "POST"])
def pipeline_webhook(request, slug: str):
    pipeline = get_object_or_404(pipelines(request.user).select_related("team"), slug=slug)
    if not can(request.user, "change", pipeline):
        raise PermissionDenied("you may not manage this pipeline's webhook")
    if request.method == "POST":
        if request.POST.get("action") == "rotate":
            hand_over(
                request, pipeline, actions.rotate_webhook_secret(pipeline, actor=request.user)
            )
            messages.success(
                request, "New webhook secret made. Requests signed with the old one are refused."
            )
        return redirect("dashboard:pipeline_webhook", slug=pipeline.slug)
    hook_url = request.build_absolute_uri(reverse("webhook", args=[pipeline.slug]))
    context = {"pipeline": pipeline, "secret": take(request, pipeline), "hook_url": hook_url}
    return render(request, "dashboard/webhook.html", context)

"""Pages people use all day. Views are short: load with a permission check, act, render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from rest_framework.authtoken.models import Token

from governance import audit
from governance.permissions import pipelines


@login_required
def overview(request):
    visible = pipelines(request.user).select_related("team")
    return render(request, "dashboard/overview.html", {"pipelines": visible})


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request):
    """A user creates (or replaces) and revokes their own API token. The key is shown once."""
    token = Token.objects.filter(user=request.user).first()
    new_key = None
    if request.method == "POST":
        if request.POST.get("action") == "revoke" and token:
            token.delete()
            audit.record(request.user, "token.revoke", request.user)
            messages.success(request, "Your API token was revoked.")
            return redirect("dashboard:tokens")
        if request.POST.get("action") == "create":
            if token:
                token.delete()
            token = Token.objects.create(user=request.user)
            new_key = token.key
            audit.record(request.user, "token.create", request.user)
    return render(request, "dashboard/tokens.html", {"token": token, "new_key": new_key})


def server_error(request):
    return render(request, "500.html", status=500)

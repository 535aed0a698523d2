"""The Secrets section of an environment's page: set or replace a value (write-only: it is
never shown again), delete a secret. Names, versions and who changed them are listed for
everyone who may see the environment; the forms only for holders of manage_secrets."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.views.decorators.http import require_POST

from . import secrets
from .models import Environment, Secret
from .permissions import restrict


class SecretForm(forms.Form):
    name = forms.CharField(max_length=128, help_text="Uppercase letters, digits and _.")
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        strip=False,
        help_text="Write-only: it is encrypted and never shown again.",
    )


def secrets_context(user, env: Environment) -> dict:
    return {
        "secrets": restrict(Secret.objects.filter(environment=env), user, "view").select_related(
            "updated_by"
        ),
        "may_manage_secrets": secrets.can_manage(user, environment=env),
        "secret_form": SecretForm(),
    }


@login_required
@require_POST
def environment_secrets(request, name: str):
    env = get_object_or_404(restrict(Environment.objects.all(), request.user, "view"), name=name)
    try:
        if request.POST.get("delete"):
            secret = get_object_or_404(Secret, environment=env, pk=request.POST["delete"])
            secrets.delete_secret(actor=request.user, secret=secret)
            messages.success(request, f"Deleted secret {secret.name}.")
        else:
            form = SecretForm(request.POST)
            if not form.is_valid():
                raise secrets.SecretRefused("give a name and a value", rule="form")
            secret = secrets.set_secret(
                actor=request.user,
                name=form.cleaned_data["name"],
                value=form.cleaned_data["value"],
                environment=env,
            )
            messages.success(request, f"Saved secret {secret.name} (version {secret.version}).")
    except secrets.SecretRefused as exc:
        if exc.rule == "permission":
            raise PermissionDenied(str(exc)) from None
        messages.error(request, str(exc))
    return redirect("governance:environment", name=env.name)


urlpatterns = [
    path("environments/<slug:name>/secrets/", environment_secrets, name="environment-secrets"),
]

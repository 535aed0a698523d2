"""Forms of the dashboard pages. The trigger form is generated from the pipeline's parameter
definitions; the definition form only carries text — parsing and validation belong to
orchestrator.spec, so the page shows exactly the errors the API would."""

from __future__ import annotations

from django import forms
from django.core.validators import validate_slug

from governance.actions import OVERRIDE_MIN_JUSTIFICATION  # the verb owns the rule
from governance.models import TokenScope
from orchestrator.models import Team

RESERVED_SLUGS = {"new"}  # /pipelines/new/ is the create page


class TriggerForm(forms.Form):
    """One field per spec parameter: a select when the values are restricted, text otherwise.
    A blank optional field means "use the default"."""

    def __init__(self, parameters: list[dict], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.parameters = parameters
        for param in parameters:
            name, default = param["name"], param.get("default")
            required = bool(param.get("required"))
            help_text = param.get("description") or ""
            if default not in (None, ""):
                help_text = (
                    f"{help_text} (default: {default})" if help_text else f"Default: {default}"
                )
            allowed = param.get("allowed")
            if allowed:
                choices = [(v, v) for v in allowed]
                if not required:
                    choices = [("", "— default —" if default is not None else "—"), *choices]
                field = forms.ChoiceField(choices=choices, required=required)
            else:
                field = forms.CharField(required=required, max_length=1000, strip=True)
            field.label = name
            field.help_text = help_text
            field.initial = default
            if required:
                field.widget.attrs["aria-required"] = "true"
            self.fields[name] = field

    def parameters_to_send(self) -> dict:
        """Blank optional values are left out, so the spec's default applies."""
        return {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}


class PipelineForm(forms.Form):
    """Create (slug + team + YAML) or edit (YAML only) a pipeline definition."""

    slug = forms.CharField(
        max_length=100,
        validators=[validate_slug],
        help_text='Lowercase letters, digits, "-" and "_"; used in URLs. It cannot change.',
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)
    definition = forms.CharField(
        label="Definition (YAML)",
        strip=False,
        max_length=300_000,
        widget=forms.Textarea(
            attrs={
                "class": "code-editor",
                "spellcheck": "false",
                "autocapitalize": "off",
                "autocomplete": "off",
                "wrap": "off",
                "rows": 28,
            }
        ),
    )

    def __init__(self, *args, teams=None, editing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["slug"]
            del self.fields["team"]
        else:
            self.fields["team"].queryset = teams if teams is not None else Team.objects.none()

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"].lower()
        if slug in RESERVED_SLUGS:
            raise forms.ValidationError(f'"{slug}" is reserved; choose another slug.')
        return slug

    def clean_definition(self) -> str:
        # Browsers send CRLF from a textarea; store what the author meant.
        return self.cleaned_data["definition"].replace("\r\n", "\n")


class GateDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    comment = forms.CharField(required=False, max_length=4000, widget=forms.Textarea)

    def clean(self):
        data = super().clean()
        if data.get("decision") == "reject" and not (data.get("comment") or "").strip():
            self.add_error("comment", "Say why you reject: the comment is required.")
        return data


class OverrideForm(forms.Form):
    justification = forms.CharField(
        min_length=OVERRIDE_MIN_JUSTIFICATION,
        max_length=4000,
        widget=forms.Textarea,
        error_messages={
            "required": "Say why this cannot wait: an override needs a justification.",
            "min_length": (
                "An override needs a justification of at least %(limit_value)d characters "
                "(this one has %(show_value)d): say why this cannot wait."
            ),
        },
        help_text="Recorded in the audit log and flagged in every report.",
    )


class ApiTokenForm(forms.Form):
    """A new named API token. The expiry is counted from now: days, or hours for a token
    with the approve scope (at most 24). governance.tokens has the rules; the verb checks."""

    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “release script”.")
    scopes = forms.MultipleChoiceField(
        choices=TokenScope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=["read"],
        help_text="approve needs your password confirmed just before, and lives at most 24 h.",
    )
    lifetime = forms.IntegerField(min_value=1, initial=30, label="Expires in")
    unit = forms.ChoiceField(choices=[("days", "days"), ("hours", "hours")], initial="days")


class StepUpForm(forms.Form):
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        label="Confirm your password",
    )

"""Forms of the governance pages: the policy editor, the environment editor (settings plus
small formsets for freeze windows, change windows and approval rules) and the audit filters.

Forms only check shape and give errors a person can act on (with line and column for JSON).
The rules themselves belong to the verbs: compiling and validating a policy is
governance.policies' job, so the page shows exactly the errors the API would.
"""

from __future__ import annotations

import copy
import json
import re
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

import apprise
from django import forms
from django.contrib.auth.models import Group
from django.utils.dateparse import parse_date, parse_datetime

from . import change_requests, policies
from .models import Enforcement, Environment, FreezeMode, Outcome, Tier
from .notifications import KIND_LABELS as NOTIFICATION_KIND_LABELS
from .notifications import KINDS as NOTIFICATION_KINDS

DRY_RUN_DAYS = [(7, "7 days"), (30, "30 days"), (90, "90 days")]
WEEKDAYS = [
    (0, "Mon"),
    (1, "Tue"),
    (2, "Wed"),
    (3, "Thu"),
    (4, "Fri"),
    (5, "Sat"),
    (6, "Sun"),
]
NEW_POLICY_SOURCE = """\
package clearway.my_policy

import rego.v1

deny contains msg if {
\tinput.environment.in_freeze
\tmsg := sprintf("%s is frozen", [input.environment.name])
}
"""
CODE_ATTRS = {
    "class": "code-editor",
    "spellcheck": "false",
    "autocapitalize": "off",
    "autocomplete": "off",
    "wrap": "off",
}


def _lf(text: str) -> str:
    """Browsers submit textareas with CRLF line ends; sources are stored with LF."""
    return (text or "").replace("\r\n", "\n")


# --- policies ----------------------------------------------------------------------------


class PolicyForm(forms.Form):
    """The policy editor. `name` only when creating (a policy cannot be renamed)."""

    name = forms.CharField(
        max_length=100,
        help_text='Letters, digits, "-" and "_". It cannot change later.',
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    description = forms.CharField(
        required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 3})
    )
    enforcement = forms.ChoiceField(
        choices=[(value, value) for value in Enforcement.values],
        help_text="advisory: shown only · soft-mandatory: blocks, break-glass override allowed "
        "· hard-mandatory: blocks, no override.",
    )
    environments = forms.ModelMultipleChoiceField(
        queryset=Environment.objects.order_by("name"),
        to_field_name="name",
        required=False,
        help_text="Ctrl/⌘-click to pick several.",
    )
    tiers = forms.MultipleChoiceField(
        choices=[(value, value) for value in Tier.values],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Every environment of these tiers, now and later.",
    )
    enabled = forms.BooleanField(
        required=False, initial=True, help_text="A disabled policy is in no gate."
    )
    source = forms.CharField(
        label="Rego source",
        strip=False,
        max_length=200_000,
        widget=forms.Textarea(attrs={**CODE_ATTRS, "rows": 22}),
    )
    test_cases = forms.CharField(
        label="Test cases (JSON)",
        required=False,
        strip=False,
        max_length=1_000_000,
        help_text='A list of {"name", "input", "expect": {"deny", "warn"}}; expect holds the '
        "exact messages or a count. Include one case that denies and one that passes.",
        widget=forms.Textarea(attrs={**CODE_ATTRS, "rows": 12}),
    )
    days = forms.TypedChoiceField(
        label="Replay the last",
        choices=DRY_RUN_DAYS,
        coerce=int,
        required=False,
        initial=30,
    )

    def __init__(self, *args, creating: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not creating:
            del self.fields["name"]
        self.fields["environments"].widget.attrs["size"] = 4

    @classmethod
    def initial_for(cls, policy) -> dict:
        return {
            "description": policy.description,
            "enforcement": policy.enforcement,
            "environments": [e.name for e in policy.environments.all()],
            "tiers": list(policy.tiers),
            "enabled": policy.enabled,
            "source": policy.source,
            "test_cases": json.dumps(policy.test_cases, indent=2, ensure_ascii=False),
            "days": 30,
        }

    def clean_source(self) -> str:
        return _lf(self.cleaned_data["source"])

    def clean_test_cases(self) -> list[dict]:
        text = _lf(self.cleaned_data.get("test_cases") or "").strip()
        if not text:
            return []
        try:
            cases = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"line {exc.lineno}, column {exc.colno}: {exc.msg}")
        try:
            return policies.validate_test_cases(cases)
        except policies.PolicyInvalid as exc:
            raise forms.ValidationError(exc.message)

    def clean_days(self) -> int:
        return self.cleaned_data.get("days") or 30

    def add_refusal(self, exc: policies.PolicyInvalid) -> None:
        """Show a verb's refusal on the field it names (or on the form)."""
        self.add_error(exc.field if exc.field in self.fields else None, exc.message)


# --- environments ------------------------------------------------------------------------

_HHMM = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")


def parse_utc(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _local_input(value) -> str:
    """A stored ISO time as the value of a datetime-local input (UTC). Seconds are kept (the
    input has step=1): a form that dropped them would move 23:59:59 to 23:59:00 on every
    save of anything else."""
    moment = parse_utc(str(value or ""))
    return moment.strftime("%Y-%m-%dT%H:%M:%S") if moment else str(value or "")


def _window_key(window: dict) -> tuple:
    return (
        parse_utc(str(window.get("start") or "")),
        parse_utc(str(window.get("end") or "")),
        str(window.get("reason") or "").strip(),
    )


def _keep_stored(stored: list, submitted: list[dict]) -> list[dict]:
    """Submitted freeze windows, each replaced by the stored one it equals (same moments and
    reason), so a save changes only what the person changed, not how a time was written."""
    by_key = {_window_key(w): w for w in stored or [] if isinstance(w, dict)}
    return [by_key.get(_window_key(w), w) for w in submitted]


class EnvironmentForm(forms.ModelForm):
    """The environment's own settings. The name is fixed: gates, runs and reports refer to
    it. Settings a post leaves out keep their stored value."""

    max_wait_days = forms.IntegerField(
        label="Reject a waiting gate after (days)",
        min_value=0,
        required=False,
        help_text="0: gates wait for ever.",
    )
    freeze_mode = forms.ChoiceField(
        label="During a freeze",
        choices=FreezeMode.choices,
        required=False,
    )

    def clean_max_wait_days(self):
        value = self.cleaned_data.get("max_wait_days")
        return self.instance.max_wait_days if value is None else value

    def clean_freeze_mode(self):
        return self.cleaned_data.get("freeze_mode") or self.instance.freeze_mode

    timezone = forms.CharField(
        max_length=64,
        help_text="IANA name (Europe/Berlin); change windows are in this time zone.",
        widget=forms.TextInput(attrs={"list": "timezones", "autocomplete": "off"}),
    )
    notify_webhook_url = forms.URLField(
        label="Notify webhook",
        required=False,
        assume_scheme="https",
        help_text="Called when a gate waits; leave empty for none.",
    )
    # The environment as it was when the page was loaded (see fingerprint()).
    loaded = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Environment
        fields = list(Environment.SETTINGS)
        labels = {
            "protected": "Protected (stages stop at a gate)",
            "approval_ttl_hours": "Approvals expire after (hours)",
            "reminder_minutes": "Remind approvers after (minutes)",
        }
        help_texts = {
            "approval_ttl_hours": "0: approvals never expire.",
        }

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(f'"{name}" is not a time zone; use e.g. Europe/Berlin.')
        return name


class FreezeWindowForm(forms.Form):
    start = forms.CharField(
        label="Start (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
    )
    end = forms.CharField(
        label="End (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
    )
    reason = forms.CharField(max_length=200)

    def _moment(self, name: str) -> datetime:
        moment = parse_utc(self.cleaned_data[name])
        if moment is None:
            raise forms.ValidationError("Enter a date and time, e.g. 2026-12-20T00:00.")
        return moment

    def clean_start(self) -> datetime:
        return self._moment("start")

    def clean_end(self) -> datetime:
        return self._moment("end")

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            self.add_error("end", "The end must be after the start.")
        return data

    def as_window(self) -> dict:
        data = self.cleaned_data
        return {
            "start": data["start"].isoformat(),
            "end": data["end"].isoformat(),
            "reason": data["reason"].strip(),
        }


class ChangeWindowForm(forms.Form):
    days = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS, coerce=int, widget=forms.CheckboxSelectMultiple
    )
    start = forms.CharField(
        label="From", max_length=5, widget=forms.TextInput(attrs={"placeholder": "08:00"})
    )
    end = forms.CharField(
        label="Until", max_length=5, widget=forms.TextInput(attrs={"placeholder": "18:00"})
    )

    def _hhmm(self, name: str) -> str:
        value = self.cleaned_data[name].strip()
        if not _HHMM.match(value):
            raise forms.ValidationError("Use HH:MM, 00:00 to 24:00.")
        return value

    def clean_start(self) -> str:
        return self._hhmm("start")

    def clean_end(self) -> str:
        return self._hhmm("end")

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("start") == data.get("end"):
            self.add_error("end", "Start and end are the same; an overnight window ends earlier.")
        return data

    def as_window(self) -> dict:
        data = self.cleaned_data
        return {"days": sorted(set(data["days"])), "start": data["start"], "end": data["end"]}


class ApprovalRuleForm(forms.Form):
    group = forms.ModelChoiceField(queryset=Group.objects.order_by("name"))
    # No initial value: a blank extra row must stay unchanged so it is not taken for a rule.
    required_count = forms.IntegerField(
        label="Approvals", min_value=1, max_value=20, widget=forms.NumberInput({"placeholder": "1"})
    )


class _UniqueGroups(forms.BaseFormSet):
    def clean(self):
        super().clean()
        seen = set()
        for form in self.forms:
            if not getattr(form, "cleaned_data", None) or self._should_delete_form(form):
                continue
            group = form.cleaned_data.get("group")
            if group in seen:
                form.add_error("group", f"{group.name} already has a rule: one rule per group.")
            seen.add(group)


FreezeWindowFormSet = forms.formset_factory(FreezeWindowForm, extra=1, can_delete=True)
ChangeWindowFormSet = forms.formset_factory(ChangeWindowForm, extra=1, can_delete=True)
ApprovalRuleFormSet = forms.formset_factory(
    ApprovalRuleForm, formset=_UniqueGroups, extra=1, can_delete=True
)


def _kept(formset) -> list[forms.Form]:
    """The rows to store: every existing row not marked for deletion, and the extra (blank)
    rows someone filled in."""
    kept = []
    for index, form in enumerate(formset.forms):
        if formset._should_delete_form(form):
            continue
        if index >= formset.initial_form_count() and not form.has_changed():
            continue
        kept.append(form)
    return kept


# The editor's conflict check (kept here for the page's and the tests' imports).
fingerprint = Environment.fingerprint


class EnvironmentEditor:
    """The environment form and its three formsets, validated and saved together: one
    transaction, one "environment.update" audit event whose details say what changed."""

    def __init__(self, environment: Environment, data=None):
        self.environment = environment
        # A copy: validating a ModelForm writes the submitted values onto its instance, and
        # the page shows the stored ones next to the form.
        self.form = EnvironmentForm(
            data,
            instance=copy.copy(environment),
            prefix="env",
            initial={"loaded": fingerprint(environment)},
        )
        # Bound formsets get no initial rows: the post is the whole desired state, and an
        # initial taken from a newer state would make blank extra rows look filled in.
        unbound = data is None
        freeze = [
            {
                "start": _local_input(w.get("start")),
                "end": _local_input(w.get("end")),
                "reason": w.get("reason", ""),
            }
            for w in environment.freeze_windows or []
            if isinstance(w, dict)
        ]
        change = [w for w in environment.change_windows or [] if isinstance(w, dict)]
        rules = [
            {"group": r.group, "required_count": r.required_count}
            for r in environment.approval_rules.select_related("group").order_by("group__name")
        ]
        self.freeze = FreezeWindowFormSet(
            data, prefix="freeze", initial=freeze if unbound else None
        )
        self.change = ChangeWindowFormSet(
            data, prefix="change", initial=change if unbound else None
        )
        self.rules = ApprovalRuleFormSet(data, prefix="rules", initial=rules if unbound else None)

    def is_valid(self) -> bool:
        results = [self.form.is_valid(), *(fs.is_valid() for fs in self.formsets)]
        return all(results)

    @property
    def formsets(self):
        return (self.freeze, self.change, self.rules)

    @property
    def has_errors(self) -> bool:
        return bool(self.form.errors) or any(
            fs.total_error_count() for fs in self.formsets if fs.is_bound
        )

    def save(self, *, actor):
        """Propose the edit as a change request (governance.change_requests: it takes effect
        when a second environment admin approves); None when nothing would change. Raises
        EnvironmentChanged when the environment changed since the form was loaded."""
        data = self.form.cleaned_data
        changes = change_requests.propose_environment_update(
            self.environment,
            actor=actor,
            settings={name: data[name] for name in Environment.SETTINGS},
            # Windows whose minutes did not change keep their stored seconds (23:59:59).
            freeze_windows=_keep_stored(
                self.environment.freeze_windows, [f.as_window() for f in _kept(self.freeze)]
            ),
            change_windows=[f.as_window() for f in _kept(self.change)],
            rules={
                f.cleaned_data["group"]: f.cleaned_data["required_count"] for f in _kept(self.rules)
            },
            loaded=data.get("loaded") or None,
        )
        return changes


# --- audit log ---------------------------------------------------------------------------


def _moment(value: str, *, end: bool) -> datetime:
    """A date (a whole UTC day; as an end, inclusive) or an ISO 8601 date-time (no offset
    means UTC)."""
    value = value.strip()
    try:
        day = parse_date(value)
        moment = None if day else parse_datetime(value.replace(" ", "T", 1))
    except ValueError:
        day = moment = None
    if day is not None:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        return start + timedelta(days=1) if end and day < date.max else start
    if moment is None:
        raise forms.ValidationError("Use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC).")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class AuditFilterForm(forms.Form):
    """The audit log's filters, with the API's meaning (GET /api/v1/audit-events/): since is
    inclusive, until exclusive (a date as `until` includes that whole day), actor exact,
    action exact or a prefix ending in `*`, target TYPE or TYPE:ID, outcome."""

    since = forms.CharField(
        required=False,
        max_length=40,
        label="Since (UTC)",
        widget=forms.TextInput(attrs={"placeholder": "2026-01-31", "autocomplete": "off"}),
    )
    until = forms.CharField(
        required=False,
        max_length=40,
        label="Until (UTC)",
        widget=forms.TextInput(attrs={"placeholder": "2026-02-01T12:00", "autocomplete": "off"}),
    )
    actor = forms.CharField(
        required=False,
        max_length=150,
        widget=forms.TextInput(attrs={"placeholder": "username or system"}),
    )
    action = forms.CharField(
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"placeholder": "gate.approve or gate.*"}),
    )
    target = forms.CharField(
        required=False,
        max_length=130,
        widget=forms.TextInput(attrs={"placeholder": "policy or policy:3"}),
    )
    outcome = forms.ChoiceField(
        required=False, choices=[("", "any"), *Outcome.choices], label="Outcome"
    )

    def clean_since(self):
        value = self.cleaned_data["since"]
        return _moment(value, end=False) if value.strip() else None

    def clean_until(self):
        value = self.cleaned_data["until"]
        return _moment(value, end=True) if value.strip() else None

    def clean(self):
        data = super().clean()
        for name in ("actor", "action", "target"):
            if "\x00" in (data.get(name) or ""):
                self.add_error(name, "Not a valid value.")
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            self.add_error("until", "Until must be after since.")
        return data

    def apply(self, qs):
        """`qs` narrowed by the (valid) filters."""
        data = self.cleaned_data
        if data.get("since"):
            qs = qs.filter(at__gte=data["since"])
        if data.get("until"):
            qs = qs.filter(at__lt=data["until"])
        if data.get("actor", "").strip():
            qs = qs.filter(actor_name=data["actor"].strip())
        action = data.get("action", "").strip()
        if action.endswith("*"):
            qs = qs.filter(action__startswith=action[:-1])
        elif action:
            qs = qs.filter(action=action)
        target = data.get("target", "").strip()
        if target:
            kind, _, ident = target.partition(":")
            qs = qs.filter(target_type=kind)
            if ident:
                qs = qs.filter(target_id=ident)
        if data.get("outcome"):
            qs = qs.filter(outcome=data["outcome"])
        return qs


class NotificationPreferenceForm(forms.Form):
    """A user's notification choices. The personal URL is write-only: it is never shown
    back (it holds the channel's token); leave it empty to keep the current one."""

    email = forms.BooleanField(required=False, label="E-mail me")
    events = forms.MultipleChoiceField(
        required=False,
        choices=[(k, NOTIFICATION_KIND_LABELS.get(k, k)) for k in NOTIFICATION_KINDS],
        widget=forms.CheckboxSelectMultiple,
        label="Notify me of (none ticked: all)",
    )
    url = forms.CharField(
        required=False,
        label="Personal channel (apprise URL)",
        help_text="e.g. a Slack webhook https://hooks.slack.com/services/…, "
        "workflows://… for Teams, jsons://host/path",
    )
    clear_url = forms.BooleanField(required=False, label="Remove my personal channel")

    def clean_url(self):
        url = self.cleaned_data["url"].strip()
        if url and not apprise.Apprise().add(url):
            raise forms.ValidationError(
                "not an apprise URL Clearway can send to: use e.g. slack://TokenA/TokenB/TokenC, "
                "workflows://host/workflow/signature or jsons://host/path"
            )
        return url


class DelegationForm(forms.Form):
    """Out of office: who decides in my place, from when to when (UTC). The rules (no
    self-delegation, no overlap, a future end) are the verb's: governance.delegation."""

    delegate = forms.CharField(
        max_length=150, label="Colleague (username)", help_text="who decides in your place"
    )
    starts_at = forms.DateTimeField(
        label="From (UTC)",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    ends_at = forms.DateTimeField(
        label="Until (UTC)",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    reason = forms.CharField(max_length=200, required=False, label="Reason (optional)")

    def clean_delegate(self):
        from django.contrib.auth import get_user_model

        name = self.cleaned_data["delegate"].strip()
        user = get_user_model().objects.filter(username__iexact=name, is_active=True).first()
        if user is None:
            raise forms.ValidationError(f"no active user is called {name!r}: check the username")
        return user

    def _utc(self, field: str):
        value = self.cleaned_data[field]
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def clean_starts_at(self):
        return self._utc("starts_at")

    def clean_ends_at(self):
        return self._utc("ends_at")

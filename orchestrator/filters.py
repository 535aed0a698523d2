"""List filters of the API on django-filter: each list's query parameters are one FilterSet,
which both filters and documents (drf-spectacular reads the FilterSets into the OpenAPI
schema, with each filter's help text).

A bad value is a 400 that names the parameter and says why, in both shapes clients use:
`{"message": "status: unknown status ['done']; use one of ...", "errors": {"status": [...]}}`.
The fields below produce those messages; FilterBackend turns a form's errors into them."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.drainage import set_override
from drf_spectacular.plumbing import build_basic_type
from drf_spectacular.types import OpenApiTypes
from rest_framework.exceptions import ValidationError

from .models import Run, RunStatus


class FilterBackend(DjangoFilterBackend):
    """django-filter's backend, for list actions only (a detail URL is not filtered), with
    Clearway's error shape."""

    def filter_queryset(self, request, queryset, view):
        if getattr(view, "action", "list") != "list":
            return queryset
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None:
            return queryset
        if not filterset.is_valid():
            errors = {name: [str(m) for m in msgs] for name, msgs in filterset.errors.items()}
            message = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in errors.items())
            raise ValidationError({"message": message, "errors": errors})
        return filterset.qs


class _Documented(django_filters.Filter):
    """A filter whose OpenAPI type is `schema_type`, described by its help_text (set per
    instance: drf-spectacular drops the description of a class-wide override)."""

    schema_type = OpenApiTypes.STR

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        schema = build_basic_type(self.schema_type)
        set_override(self, "field", {**schema, "description": self.extra.get("help_text", "")})


class ChoiceListField(forms.CharField):
    """One value or a comma-separated list, each one of `choices`."""

    def __init__(self, *, allowed, noun: str, **kwargs):
        self.allowed = list(allowed)
        self.noun = noun
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return None
        wanted = [v.strip() for v in value.split(",") if v.strip()]
        bad = sorted(set(wanted) - set(self.allowed))
        if bad:
            shown = f'"{bad[0]}"' if len(bad) == 1 else str(bad)
            raise forms.ValidationError(
                f"unknown {self.noun} {shown}; use one of {', '.join(self.allowed)} "
                "(several separated by commas)"
            )
        return wanted


class ChoiceListFilter(_Documented):
    field_class = ChoiceListField

    def __init__(self, *args, lookup_expr="in", **kwargs):
        # Not `choices`: that would make a one-value enum of a comma-separated list.
        allowed = ", ".join(kwargs["allowed"])
        kwargs["help_text"] = f"{kwargs.get('help_text') or kwargs['noun']} (one of {allowed})"
        super().__init__(*args, lookup_expr=lookup_expr, **kwargs)


class IsoDateTimeField(forms.CharField):
    """An ISO 8601 date or date-time; without an offset it is UTC. An unencoded "+" in a
    query string arrives as a space and is read as "+"."""

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return None
        try:
            when = parse_datetime(value.strip().replace(" ", "+"))
        except ValueError:  # well-formed but impossible, e.g. month 13
            when = None
        if when is None:
            raise forms.ValidationError(
                f'"{value}" is not an ISO 8601 date-time; use e.g. 2026-01-31T00:00:00+00:00'
            )
        return when if not timezone.is_naive(when) else when.replace(tzinfo=UTC)


class IsoDateTimeFilter(_Documented):
    field_class = IsoDateTimeField
    schema_type = OpenApiTypes.DATETIME


class IdField(forms.CharField):
    """A database id: a positive integer that fits a 64-bit column."""

    def __init__(self, *, noun: str = "id", **kwargs):
        self.noun = noun
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return None
        number = int(value) if value.isascii() and value.isdigit() else 0
        if not 0 < number < 2**63:
            raise forms.ValidationError(f"must be a {self.noun} (a positive integer)")
        return number


class IdFilter(_Documented):
    field_class = IdField
    schema_type = OpenApiTypes.INT


class TrueFalseField(forms.CharField):
    """true or false; anything else is refused rather than silently ignored."""

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return None
        if value not in ("true", "false"):
            raise forms.ValidationError(f'"{value}" is not a boolean; use true or false')
        return value == "true"


class TrueFalseFilter(_Documented):
    field_class = TrueFalseField
    schema_type = OpenApiTypes.BOOL


class RunFilter(django_filters.FilterSet):
    status = ChoiceListFilter(
        allowed=RunStatus.values, noun="status", help_text="run status, or several: failed,canceled"
    )
    pipeline = django_filters.CharFilter(field_name="pipeline__slug", help_text="pipeline slug")
    since = IsoDateTimeFilter(
        field_name="created_at",
        lookup_expr="gte",
        help_text="created at or after: ISO 8601 date or date-time (UTC without an offset)",
    )

    class Meta:
        model = Run
        fields: list[str] = []

"""Report filters: the period, environment, pipeline, team and outcome a report covers,
parsed with errors that name the parameter."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from orchestrator.models import Pipeline, StageStatus, Team

from ..models import (
    Environment,
    Outcome,
)
from ..permissions import restrict

# --- filters ----------------------------------------------------------------------------


class FilterError(ValueError):
    """A bad filter; `parameter` names the query parameter at fault."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
        self.message = message

    def as_dict(self) -> dict:
        return {"message": self.message, "parameter": self.parameter}


def iso(dt: datetime | None) -> str | None:
    """UTC, seconds precision, with a Z: how every report prints a time."""
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_moment(params: Mapping, name: str, *, end: bool = False) -> datetime | None:
    """A date (YYYY-MM-DD, a whole UTC day: `from` its start, `to` its end) or an ISO 8601
    date-time (no offset means UTC)."""
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    # An unencoded "+01:00" in a query string arrives as " 01:00".
    raw = re.sub(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$", r"\1+\2", raw)
    try:
        day = parse_date(raw)
        moment = None if day else parse_datetime(raw)
    except ValueError:
        day = moment = None
    if day is not None:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        if end and day == date.max:
            return start.replace(hour=23, minute=59, second=59, microsecond=999999)
        return start + timedelta(days=1) if end else start
    if moment is None:
        raise FilterError(
            name,
            f'"{name}" is not a date: use YYYY-MM-DD or an ISO 8601 date-time '
            f"(e.g. 2026-01-31 or 2026-01-31T12:00:00Z), got {raw!r}",
        )
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise FilterError(name, f'"{name}" is out of range, got {raw!r}')


def _parse_period(params: Mapping) -> tuple[datetime | None, datetime | None]:
    start = _parse_moment(params, "from")
    end = _parse_moment(params, "to", end=True)
    if start and end and start >= end:
        raise FilterError("from", f'"from" ({iso(start)}) must be before "to" ({iso(end)})')
    return start, end


def _parse_bool(params: Mapping, name: str) -> bool:
    raw = str(params.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise FilterError(name, f'"{name}" must be true or false, got {raw!r}')


def _check_text(params: Mapping, names: Iterable[str]) -> None:
    """Refuse NUL characters (PostgreSQL cannot store or compare them) and absurd lengths."""
    for name in names:
        value = params.get(name) or ""
        if "\x00" in value or len(value) > 200:
            raise FilterError(name, f'"{name}" is not a valid value')


def parse_format(params: Mapping, allowed: tuple[str, ...]) -> str:
    fmt = (params.get("format") or allowed[0]).strip().lower()
    if fmt not in allowed:
        raise FilterError(
            "format", f'unknown format "{fmt}"; use {" or ".join(allowed)} (PDF: POST /pdf/)'
        )
    return fmt


@dataclass(frozen=True)
class ChangeFilters:
    """What a change report covers. `start`/`end` bound the moment a change was requested
    (gate creation, or stage start when there is no gate): start <= t < end, UTC."""

    start: datetime | None = None
    end: datetime | None = None
    environment: str = ""
    pipeline: str = ""
    team: str = ""
    outcome: str = ""
    exceptions_only: bool = False

    def as_dict(self) -> dict:
        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "period_basis": "gate created_at, else stage started_at (UTC; from <= t < to)",
            "environment": self.environment or None,
            "pipeline": self.pipeline or None,
            "team": self.team or None,
            "outcome": self.outcome or None,
            "exceptions_only": self.exceptions_only,
        }

    def as_params(self) -> dict:
        """Query parameters that reproduce these filters (stored on PDF jobs)."""
        out = {
            "from": iso(self.start) or "",
            "to": iso(self.end) or "",
            "environment": self.environment,
            "pipeline": self.pipeline,
            "team": self.team,
            "outcome": self.outcome,
            "exceptions_only": "true" if self.exceptions_only else "",
        }
        return {k: v for k, v in out.items() if v}


def parse_change_filters(params: Mapping, user) -> ChangeFilters:
    """Validate the change report's query parameters; raise FilterError naming the bad one.
    Unknown names and names the user may not see are refused alike."""
    _check_text(params, ("from", "to", "environment", "pipeline", "team", "outcome", "format"))
    start, end = _parse_period(params)
    environment = (params.get("environment") or "").strip()
    if environment and not Environment.objects.filter(name=environment).exists():
        raise FilterError("environment", f'unknown environment "{environment}"')
    pipeline = (params.get("pipeline") or "").strip()
    if pipeline and not restrict(Pipeline.objects.filter(slug=pipeline), user, "view").exists():
        raise FilterError("pipeline", f'unknown pipeline "{pipeline}"')
    team = (params.get("team") or "").strip()
    if team and not Team.objects.filter(slug=team).exists():
        raise FilterError("team", f'unknown team "{team}"')
    outcome = (params.get("outcome") or "").strip().lower()
    if outcome and outcome not in StageStatus.values:
        raise FilterError(
            "outcome", f'unknown outcome "{outcome}"; use one of {", ".join(StageStatus.values)}'
        )
    return ChangeFilters(
        start=start,
        end=end,
        environment=environment,
        pipeline=pipeline,
        team=team,
        outcome=outcome,
        exceptions_only=_parse_bool(params, "exceptions_only"),
    )


@dataclass(frozen=True)
class AuditFilters:
    """What an audit log export covers: start <= at < end (UTC), and exact matches."""

    start: datetime | None = None
    end: datetime | None = None
    actor: str = ""
    action: str = ""
    target: str = ""
    outcome: str = ""

    def as_dict(self) -> dict:
        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "actor": self.actor or None,
            "action": self.action or None,
            "target": self.target or None,
            "outcome": self.outcome or None,
        }


_TARGET_RE = re.compile(r"^[a-z_]+(:[\w.\-]+)?$")


def parse_audit_filters(params: Mapping) -> AuditFilters:
    _check_text(params, ("from", "to", "actor", "action", "target", "outcome", "format"))
    start, end = _parse_period(params)
    action = (params.get("action") or "").strip()
    if action and not re.fullmatch(r"[a-z_]+(\.[a-z_\-*]+)*\.?\*?", action):
        raise FilterError("action", f'"{action}" is not an action (e.g. gate.approve or gate.*)')
    target = (params.get("target") or "").strip()
    if target and not _TARGET_RE.match(target):
        raise FilterError(
            "target", f'"{target}" is not a target: use TYPE or TYPE:ID (e.g. run:12)'
        )
    outcome = (params.get("outcome") or "").strip().lower()
    if outcome and outcome not in Outcome.values:
        raise FilterError(
            "outcome", f'unknown outcome "{outcome}"; use one of {", ".join(Outcome.values)}'
        )
    return AuditFilters(
        start=start,
        end=end,
        actor=(params.get("actor") or "").strip(),
        action=action,
        target=target,
        outcome=outcome,
    )

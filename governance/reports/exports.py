"""The exports (change report, audit log, access snapshot) put together from the parts above."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from .. import audit
from ..models import (
    AuditEvent,
    Environment,
)
from ..permissions import can_export, can_export_audit
from .constants import (
    AUDIT_CHUNK_SIZE,
    AUDIT_COLUMNS,
    AUDIT_FORMATS,
    CHANGE_COLUMNS,
    CHANGE_FORMATS,
    EXCEPTION_COLUMNS,
)
from .evidence import Evidence, make_evidence
from .filters import (
    AuditFilters,
    _check_text,
    _parse_moment,
    iso,
    parse_audit_filters,
    parse_change_filters,
    parse_format,
)
from .queries import audit_queryset, change_queryset
from .rows import (
    _rules_by_environment,
    audit_csv_cells,
    audit_ndjson_line,
    count_exceptions,
    iter_audit,
    iter_changes,
    iter_exceptions,
)
from .writers import Section, flatten_change, write_csv, write_json, write_ndjson

# --- the exports ------------------------------------------------------------------------


@dataclass
class Export:
    """A ready-to-stream export: the evidence, the byte iterator, and how to name it."""

    evidence: Evidence
    body: Iterator[bytes]
    content_type: str
    filename: str


CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}


def _period_slug(start: datetime | None, end: datetime | None) -> str:
    a = start.strftime("%Y%m%d") if start else "start"
    b = (end - timedelta(seconds=1)).strftime("%Y%m%d") if end else "now"
    return f"{a}-{b}"


def export_changes(user, params: Mapping) -> Export:
    """Validate, count, audit the export, and return the streaming change report."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    filters = parse_change_filters(params, user)
    fmt = parse_format(params, CHANGE_FORMATS)
    as_of = timezone.now()
    qs = change_queryset(user, filters, as_of=as_of)
    exc_counts = count_exceptions(qs, filters, as_of=as_of)
    rows = {
        "changes": qs.count(),
        "exceptions": sum(exc_counts.values()),
        **{f"exceptions.{k}": v for k, v in exc_counts.items()},
    }
    evidence = make_evidence(
        user,
        "changes",
        "change report",
        filters=filters.as_dict(),
        rows=rows,
        fmt=fmt,
        generated_at=as_of,
    )
    sections = [
        Section("changes", CHANGE_COLUMNS, iter_changes(qs), flatten_change),
        Section("exceptions", EXCEPTION_COLUMNS, iter_exceptions(qs, filters, as_of=as_of)),
    ]
    body = write_csv(evidence, sections) if fmt == "csv" else write_json(evidence, sections)
    name = f"clearway-changes-{_period_slug(filters.start, filters.end)}.{fmt}"
    return Export(evidence, body, CONTENT_TYPES[fmt], name)


def export_audit(user, params: Mapping) -> Export:
    if not can_export_audit(user):
        raise PermissionError("you may not export the audit log")
    filters = parse_audit_filters(params)
    fmt = parse_format(params, AUDIT_FORMATS)
    as_of = timezone.now()
    # Rows up to the head as it is now; the export's own audit event comes right after.
    data_seq, _ = audit.chain_head()
    qs = audit_queryset(user, filters, up_to_seq=data_seq)
    # Unfiltered, the rows are seq 1..data_seq (the chain has no gaps, and the trailer's
    # verification and rows_written say so if it did): no COUNT(*) over millions of rows
    # before the first byte.
    rows = {"events": data_seq if filters == AuditFilters() else qs.count()}
    evidence = make_evidence(
        user,
        "audit-log",
        "audit log export",
        filters=filters.as_dict(),
        rows=rows,
        fmt=fmt,
        generated_at=as_of,
    )
    evidence.extra["rows_up_to_seq"] = data_seq
    if fmt == "csv":
        section = Section("events", AUDIT_COLUMNS, iter_audit(qs), cells=audit_csv_cells)
        body = write_csv(evidence, [section])
    else:
        body = write_ndjson(evidence, map(audit_ndjson_line, iter_audit(qs)))
    name = f"clearway-audit-{_period_slug(filters.start, filters.end)}.{fmt}"
    return Export(evidence, body, CONTENT_TYPES[fmt], name)


# --- access snapshot --------------------------------------------------------------------

ACCESS_PERMS = ("approve_environment", "override_environment")


def parse_access_date(params: Mapping) -> datetime:
    """`date`: a day (the snapshot is at the end of it) or a date-time; default now."""
    _check_text(params, ("date",))
    raw = (params.get("date") or "").strip()
    if not raw:
        return timezone.now()
    moment = _parse_moment({"date": raw}, "date", end=True)
    return min(moment, timezone.now())


def _replay(until: datetime | None) -> tuple[dict, set]:
    """Group memberships {user: set(groups)} and environment object permissions
    {(holder_type, holder, permission, env_id)} as the role.* and permission.* audit events
    say they were at `until`."""
    members: dict[str, set[str]] = {}
    perms: set[tuple[str, str, str, str]] = set()
    events = AuditEvent.objects.filter(
        Q(action__startswith="role.") | Q(action__startswith="permission.")
    )
    if until is not None:
        events = events.filter(at__lt=until)
    for action, name, details in (
        events.order_by("seq")
        .values_list("action", "target_name", "details")
        .iterator(chunk_size=AUDIT_CHUNK_SIZE)
    ):
        details = details or {}
        if action.startswith("role."):
            groups = set(details.get("groups") or [])
            current = members.setdefault(name, set())
            if action == "role.add":
                current |= groups
            elif action == "role.remove":
                current -= groups
            elif action == "role.clear":
                current.clear()
        elif (
            details.get("object_type") == "environment"
            and details.get("permission") in ACCESS_PERMS
        ):
            key = (
                details.get("holder_type", ""),
                details.get("holder", ""),
                details["permission"],
                str(details.get("object_id", "")),
            )
            if action == "permission.grant":
                perms.add(key)
            elif action == "permission.revoke":
                perms.discard(key)
    return members, perms


def _current_state() -> tuple[dict, set]:
    from django.contrib.auth import get_user_model
    from guardian.models import GroupObjectPermission, UserObjectPermission

    user_model = get_user_model()
    members: dict[str, set[str]] = {}
    for user in user_model.objects.prefetch_related("groups"):
        names = {g.name for g in user.groups.all()}
        if names:
            members[str(user)] = names
    perms = set()
    for cls, holder_type, attr in (
        (GroupObjectPermission, "group", "group"),
        (UserObjectPermission, "user", "user"),
    ):
        for obj in cls.objects.filter(
            content_type__app_label="governance",
            content_type__model="environment",
            permission__codename__in=ACCESS_PERMS,
        ).select_related("permission", attr):
            perms.add(
                (holder_type, str(getattr(obj, attr)), obj.permission.codename, str(obj.object_pk))
            )
    return members, perms


def _global_holders(codename: str) -> tuple[set[str], set[str]]:
    """Model-wide (not per-environment) grants: groups and users; not audited, so taken from
    the current state."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    groups = set(
        Group.objects.filter(
            permissions__codename=codename, permissions__content_type__app_label="governance"
        ).values_list("name", flat=True)
    )
    users = {
        str(u)
        for u in get_user_model().objects.filter(
            user_permissions__codename=codename,
            user_permissions__content_type__app_label="governance",
        )
    }
    return groups, users


def access_snapshot(at: datetime) -> dict:
    """Who could approve and who could override, per protected environment, at `at`.

    Reconstructed by replaying the role.* and permission.* audit events up to `at`. To know
    whether that replay can be trusted, the same replay up to now is compared with the
    current database state: if they differ (grants made before auditing, or in bulk without
    signals), the snapshot falls back to the current state and says so."""
    from django.contrib.auth import get_user_model

    now_members, now_perms = _current_state()
    replay_members, replay_perms = _replay(None)
    replay_members = {k: v for k, v in replay_members.items() if v}
    consistent = replay_members == now_members and replay_perms == now_perms
    notes = []
    if consistent:
        members, perms = _replay(at)
        basis = "reconstructed from audit events"
        notes.append(
            "Group memberships and per-environment grants were reconstructed by replaying "
            "role.* and permission.* audit events up to the snapshot time; replaying them up to "
            "now reproduces the current state exactly."
        )
    else:
        members, perms = now_members, now_perms
        basis = "current state"
        notes.append(
            "The audit trail does not fully explain the current permissions (some were granted "
            "before auditing or in bulk), so this snapshot shows the CURRENT state, not the "
            "state on the requested date."
        )
    notes.append(
        "Superusers and model-wide grants (a group's or user's global permission) are taken "
        "from the current state: they are not recorded as audit events."
    )
    user_model = get_user_model()
    users = {
        str(u): u
        for u in user_model.objects.filter(Q(date_joined__lt=at) | Q(is_superuser=True))
        .filter(is_active=True)
        .order_by("username")
    }
    rules = _rules_by_environment()
    environments = []
    envs = Environment.objects.filter(Q(protected=True) | Q(gates__isnull=False)).distinct()
    for env in envs.order_by("name"):
        entry = {
            "environment": env.name,
            "tier": env.tier,
            "rules": rules.get(env.pk, []),
        }
        for codename, key in (
            ("approve_environment", "approvers"),
            ("override_environment", "overriders"),
        ):
            global_groups, global_users = _global_holders(codename)
            holder_groups = {
                h for (t, h, p, o) in perms if t == "group" and p == codename and o == str(env.pk)
            }
            holder_users = {
                h for (t, h, p, o) in perms if t == "user" and p == codename and o == str(env.pk)
            }
            listed = []
            for name, user in users.items():
                groups = members.get(name, set())
                via = []
                if user.is_superuser:
                    via.append("superuser")
                via += [f"group {g}" for g in sorted(groups & holder_groups)]
                if name in holder_users:
                    via.append("user grant")
                via += [f"group {g} (model-wide)" for g in sorted(groups & global_groups)]
                if name in global_users:
                    via.append("user grant (model-wide)")
                if via:
                    listed.append({"user": name, "groups": sorted(groups), "via": via})
            entry[key] = listed
        environments.append(entry)
    return {"at": iso(at), "basis": basis, "notes": notes, "environments": environments}


def export_access(user, params: Mapping) -> Export:
    """The access snapshot as a JSON document in the same shape as the change report: header
    (with the snapshot time, its basis and notes), one environment per line, the chain
    verification and the SHA-256 line."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    at = parse_access_date(params)
    generated_at = timezone.now()
    snapshot = access_snapshot(at)
    rows = {"environments": len(snapshot["environments"])}
    evidence = make_evidence(
        user,
        "access",
        "access snapshot",
        filters={"date": iso(at)},
        rows=rows,
        fmt="json",
        generated_at=generated_at,
    )
    evidence.extra.update(at=snapshot["at"], basis=snapshot["basis"], notes=snapshot["notes"])
    body = write_json(evidence, [Section("environments", [], snapshot["environments"])])
    name = f"clearway-access-{at.strftime('%Y%m%d')}.json"
    return Export(evidence, body, CONTENT_TYPES["json"], name)

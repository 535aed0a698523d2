"""Compliance reports: the change report (with its exceptions), the raw audit log export, the
access snapshot, and the evidence header every export carries.

Layers, so that every format says exactly the same thing:
- filters: `parse_change_filters` / `parse_audit_filters` turn query parameters into a frozen
  filter object or raise FilterError naming the parameter;
- querysets: `change_queryset` (one row per deployment to a protected environment),
  `audit_queryset`, each narrowed by governance.permissions.restrict;
- row iterators: `iter_changes`, `iter_exceptions`, `iter_audit` walk the querysets with
  `.iterator(chunk_size=...)` and load related rows per chunk, so memory stays flat;
- writers: `write_csv`, `write_json`, `write_ndjson` turn the header and rows into bytes,
  hashing as they go, and end with a trailer carrying the SHA-256 of everything before it;
- `export_response` glues them together for the API and the page (audit of the export
  included), and `generate_pdf` does the same for the background PDF job.

See docs/reports.md for what every column means and how an auditor checks a file.

The package: constants, filters, queries, evidence, writers, rows, exports, jobs — each
part imports only the ones before it."""

from __future__ import annotations

from .constants import (  # noqa: F401
    APPROVE_ACTIONS,
    AUDIT_CHUNK_SIZE,
    AUDIT_COLUMNS,
    AUDIT_FORMATS,
    CHANGE_COLUMNS,
    CHANGE_FORMATS,
    CHUNK_SIZE,
    EXCEPTION_COLUMNS,
    EXCEPTION_KINDS,
    FLUSH_BYTES,
    OVERRIDE_ACTIONS,
    POLICY_CHANGE_ACTIONS,
    POLICY_SCOPE_FIELDS,
    REJECT_ACTIONS,
    SOD_WORDS,
)
from .evidence import (  # noqa: F401
    ORDERING,
    Evidence,
    make_evidence,
    queue_checkpoint,
    record_export,
    record_refused_export,
)
from .exports import (  # noqa: F401
    ACCESS_PERMS,
    CONTENT_TYPES,
    Export,
    _current_state,
    _global_holders,
    _period_slug,
    _replay,
    access_snapshot,
    export_access,
    export_audit,
    export_changes,
    parse_access_date,
)
from .filters import (  # noqa: F401
    _TARGET_RE,
    AuditFilters,
    ChangeFilters,
    FilterError,
    _check_text,
    _parse_bool,
    _parse_moment,
    _parse_period,
    iso,
    parse_audit_filters,
    parse_change_filters,
    parse_format,
)
from .jobs import (  # noqa: F401
    job_path,
    job_status,
    new_pdf_job,
    report_dir,
)
from .queries import (  # noqa: F401
    _denied_approval_events,
    audit_queryset,
    change_queryset,
    exception_q,
)
from .rows import (  # noqa: F401
    _annotated_changes,
    _at,
    _audit_context,
    _batched,
    _cell,
    _change_row,
    _exception,
    _exception_sources,
    _expired_approvals,
    _gates_for,
    _iso_us,
    _IsoUtc,
    _policies_text,
    _refusal_text,
    _related,
    _related_dict,
    _required_from,
    _row_exceptions,
    _rules_by_environment,
    _separation_of_duties,
    _step_secrets,
    _step_targets,
    _subject,
    _verb_seq,
    audit_csv_cells,
    audit_ndjson_line,
    change_id,
    count_exceptions,
    iter_audit,
    iter_changes,
    iter_exceptions,
    policy_change_row,
)
from .writers import (  # noqa: F401
    _DANGEROUS,
    _DANGEROUS_SET,
    Section,
    _dumps,
    _Hasher,
    flatten_change,
    neutralise,
    write_csv,
    write_json,
    write_ndjson,
)

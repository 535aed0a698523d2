"""The change report as one plain table for spreadsheets (issue 18): a ZIP with

- `<name>.csv`: one header row (the change columns) and one row per change — no `#` rows, no
  sections, so any spreadsheet imports it as it is;
- `<name>.evidence.json`: the sidecar with the evidence header every export carries
  (generated at/by, filters, row counts, audit chain head, this export's audit event), the
  table's file name, row count and SHA-256, the chain verification, and on its last line
  `"sha256"`: the SHA-256 of the CSV's bytes followed by every byte of the sidecar before that
  line — one digest that covers both files.

Streamed like the other exports: the ZIP is written to a sink that is drained as it fills
(zipfile writes data descriptors on an unseekable stream), so memory stays flat.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterator, Mapping

from django.utils import timezone

from . import reports
from .permissions import can_export

FORMAT = "table"


class _Sink(io.RawIOBase):
    """A write-only, unseekable file that collects what zipfile writes until drained."""

    def __init__(self):
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _zip(evidence: reports.Evidence, qs, base: str) -> Iterator[bytes]:
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED)
    table_sha = hashlib.sha256()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rows = 0
    with archive.open(f"{base}.csv", "w", force_zip64=True) as member:

        def flush() -> None:
            data = buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
            table_sha.update(data)
            member.write(data)

        buf.write("\ufeff")  # spreadsheets read the accents
        writer.writerow(reports.CHANGE_COLUMNS)
        for row in reports.iter_changes(qs):
            flat = reports.flatten_change(row)
            writer.writerow([reports.neutralise(flat.get(c)) for c in reports.CHANGE_COLUMNS])
            rows += 1
            if buf.tell() >= reports.FLUSH_BYTES:
                flush()
                yield sink.drain()
        flush()
    yield sink.drain()
    verification = evidence.verify()
    both = table_sha.copy()
    head = (
        "{"
        f'"header":{reports._dumps(evidence.header())},\n'
        f'"table":{reports._dumps({"file": f"{base}.csv", "rows": rows, "sha256": table_sha.hexdigest()})},\n'  # noqa: E501
        f'"chain_verification":{reports._dumps(verification)},\n'
        '"sha256_covers":"the CSV file\'s bytes, then this file\'s bytes before the sha256 line",\n'
    ).encode()
    both.update(head)
    sidecar = head + f'"sha256":"{both.hexdigest()}"}}\n'.encode()
    with archive.open(f"{base}.evidence.json", "w") as member:
        member.write(sidecar)
    archive.close()
    yield sink.drain()


def export_table(user, params: Mapping) -> reports.Export:
    """Validate, count, audit the export (format "table") and return the streaming ZIP."""
    if not can_export(user):
        raise PermissionError("you may not export reports")
    filters = reports.parse_change_filters(params, user)
    as_of = timezone.now()
    qs = reports.change_queryset(user, filters, as_of=as_of)
    evidence = reports.make_evidence(
        user,
        "changes",
        "change report (single table)",
        filters=filters.as_dict(),
        rows={"changes": qs.count()},
        fmt=FORMAT,
        generated_at=as_of,
    )
    base = f"clearway-changes-{reports._period_slug(filters.start, filters.end)}"
    return reports.Export(evidence, _zip(evidence, qs, base), "application/zip", f"{base}.zip")

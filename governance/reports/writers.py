"""Streamed writers (CSV, JSON, NDJSON) with the evidence around the rows."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .constants import FLUSH_BYTES
from .evidence import Evidence

# --- writers ----------------------------------------------------------------------------

_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
_DANGEROUS_SET = frozenset(_DANGEROUS)


def neutralise(value) -> str:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ tab or CR gets a
    leading single quote (OWASP's CSV-injection advice)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_DANGEROUS) else text


class _Hasher:
    """Encodes text, hashes it and hands back the bytes; the trailer carries the digest of
    everything hashed before it."""

    def __init__(self):
        self.sha = hashlib.sha256()

    def __call__(self, text: str) -> bytes:
        data = text.encode("utf-8")
        self.sha.update(data)
        return data

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def flatten_change(row: dict) -> dict:
    """A change row with its lists folded into text (CSV cells, PDF table)."""
    out = dict(row)
    out["approvals"] = " | ".join(
        f"{a['user']} ({a['group']}) {a['decision']} {a['at']}"
        + (f": {a['comment']}" if a["comment"] else "")
        + (f" [void: {a['void_reason'] or 'void'}]" if a["void"] else "")
        for a in row["approvals"]
    )
    out["policy_decisions"] = " | ".join(
        f"{d['policy']} v{d['version']} {d['enforcement']} {d['result']}"
        + (f": {'; '.join(d['messages'])}" if d["messages"] else "")
        for d in row["policy_decisions"]
    )
    out["overrides"] = " | ".join(
        f"{o['user']} {o['at']}: {o['justification']}" for o in row["overrides"]
    )
    out["exceptions"] = ", ".join(row["exceptions"])
    out["secrets"] = " | ".join(
        f"{x['step']}: {x['name']} v{x['version']}" for x in row.get("secrets") or []
    )
    out["artifacts"] = " | ".join(
        f"{x['role']} {x['stage']}/{x['name']}: {x['path']} sha256:{x['sha256']}"
        + (" [purged]" if x.get("purged") else "")
        for x in row.get("artifacts") or []
    )
    rel = row["related_run"]
    out["related_run"] = (
        f"{rel['relation'].replace('_', ' ')} #{rel['number']} ({rel['url']})" if rel else ""
    )
    return out


@dataclass
class Section:
    name: str
    columns: list[str]
    rows: Iterable
    flatten: Callable[[dict], dict] | None = None
    cells: Callable[[object], list] | None = None  # a fast path: row -> CSV cells


def write_csv(evidence: Evidence, sections: list[Section]) -> Iterator[bytes]:
    """UTF-8 CSV (with a BOM so spreadsheets read the accents): `#` rows with the evidence
    header, one block per section (a `## name` row, the column row, the data), `#` rows with
    the row counts written and the chain verification, and a last line
    `#,sha256,<hex>` = SHA-256 of every byte before that line."""
    out = _Hasher()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")

    def drain() -> bytes:
        data = out(buf.getvalue())
        buf.seek(0)
        buf.truncate()
        return data

    buf.write("\ufeff")
    writer.writerow(["#", f"Clearway {evidence.title}"])
    for key, value in evidence.header().items():
        if isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        writer.writerow(["#", key, neutralise(value)])
    yield drain()
    written = {}
    for section in sections:
        writer.writerow([])
        writer.writerow([f"## {section.name}"])
        writer.writerow(section.columns)
        n = 0
        for row in section.rows:
            if section.cells:
                writer.writerow(section.cells(row))
            else:
                if section.flatten:
                    row = section.flatten(row)
                writer.writerow([neutralise(row.get(c)) for c in section.columns])
            n += 1
            if buf.tell() >= FLUSH_BYTES:
                yield drain()
        written[section.name] = n
    writer.writerow([])
    writer.writerow(["#", "rows_written", json.dumps(written, sort_keys=True)])
    yield drain()  # every row is out before the chain is re-hashed
    verification = evidence.verify()
    writer.writerow(["#", "chain_verification", json.dumps(verification, sort_keys=True)])
    yield drain()
    yield f"#,sha256,{out.hexdigest()}\n".encode()


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False, separators=(",", ":"))


def write_json(evidence: Evidence, sections: list[Section]) -> Iterator[bytes]:
    """One JSON object, one record per line: {"header": …, "<section>": [rows…], …,
    "rows_written": …, "chain_verification": …, "sha256": "<hex>"}. The last line holds the
    sha256 member: the SHA-256 of every byte before that line."""
    out = _Hasher()
    parts: list[str] = [f'{{"header":{_dumps(evidence.header())},\n']
    yield out("".join(parts))
    written = {}
    for section in sections:
        chunk = [f'"{section.name}":[\n']
        size = 0
        n = 0
        for row in section.rows:
            line = ("," if n else "") + _dumps(row) + "\n"
            chunk.append(line)
            size += len(line)
            n += 1
            if size >= FLUSH_BYTES:
                yield out("".join(chunk))
                chunk, size = [], 0
        chunk.append("],\n")
        written[section.name] = n
        yield out("".join(chunk))
    yield out(f'"rows_written":{_dumps(written)},\n')
    verification = evidence.verify()
    yield out(f'"chain_verification":{_dumps(verification)},\n')
    yield f'"sha256":"{out.hexdigest()}"}}\n'.encode()


def write_ndjson(evidence: Evidence, lines: Iterable[str]) -> Iterator[bytes]:
    """Newline-delimited JSON: a header record, one record per row (`lines`, each already a
    JSON object and a newline), then the verification record and a trailer record
    {"type": "trailer", "sha256": …} over every byte before it."""
    out = _Hasher()
    yield out(_dumps({"type": "header", **evidence.header()}) + "\n")
    chunk: list[str] = []
    size = n = 0
    for line in lines:
        chunk.append(line)
        size += len(line)
        n += 1
        if size >= FLUSH_BYTES:
            yield out("".join(chunk))
            chunk, size = [], 0
    yield out("".join(chunk))  # every row is out before the chain is re-hashed
    verification = evidence.verify()
    yield out(_dumps({"type": "verification", "rows_written": n, **verification}) + "\n")
    yield (_dumps({"type": "trailer", "sha256": out.hexdigest()}) + "\n").encode()

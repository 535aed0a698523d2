"""Archived step logs: when a run has ended, each step's LogChunk rows move to the artifact
storage as one gzip file, and the database keeps a LogArchive row — the storage key, the
line count, the digest and an index (docs/dashboard.md, "Archived logs").

The file is a series of independent gzip members of `index_every` lines each (a valid gzip
file: `zcat` reads it whole); `offsets[k]` is where member k starts. A window of lines is
one ranged read of the members that hold it, whatever the log's length.

`build()` makes the file from the chunks; `write_verified()` stores it and reads it back
(the digest of the uncompressed text must match) before orchestrator.actions.archive_logs
deletes the chunks, in the transition that saves the LogArchive row. Readers —
`read_log()` (the API), `read_window()` and `iter_text()` (the run page, log.txt) — read
the archive when there is one and the chunks otherwise.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.core.files.base import ContentFile

from . import artifacts
from .models import LogArchive, LogChunk, StepRun
from .models import read_log as read_chunks

CHUNKS_PER_READ = 200


class ArchiveError(Exception):
    """The archive could not be written or did not read back identically."""


def index_every() -> int:
    return max(1, int(settings.CLEARWAY["LOG_ARCHIVE_INDEX_LINES"]))


def storage_key(step: StepRun, run_id: int) -> str:
    return f"runs/{run_id}/logs/step-{step.pk}.log.gz"


@dataclass
class Built:
    data: bytes
    line_count: int
    size: int
    sha256: str
    offsets: list[int] = field(default_factory=list)
    chunk_count: int = 0
    last_offset: int = -1


def build(step: StepRun) -> Built:
    """The gzip file of a step's log chunks (see the module docstring)."""
    every = index_every()
    out = io.BytesIO()
    digest = hashlib.sha256()
    offsets: list[int] = []
    pending: list[str] = []
    count = size = chunks = 0
    last = -1
    expected = 0

    def member(lines: list[str]) -> None:
        offsets.append(out.tell())
        text = "".join(line + "\n" for line in lines).encode("utf-8")
        out.write(gzip.compress(text, compresslevel=6, mtime=0))

    rows = (
        LogChunk.objects.filter(step=step)
        .order_by("offset")
        .values_list("offset", "line_count", "text")
        .iterator(chunk_size=CHUNKS_PER_READ)
    )
    for offset, line_count, text in rows:
        if offset != expected:
            raise ArchiveError(
                f"step {step.pk}: log chunks are not dense at line {expected} (next at {offset})"
            )
        lines = text.split("\n")
        if len(lines) != line_count:
            raise ArchiveError(f"step {step.pk}: chunk at line {offset} holds {len(lines)} lines")
        expected = offset + line_count
        chunks += 1
        last = offset
        for line in lines:
            encoded = (line + "\n").encode("utf-8")
            digest.update(encoded)
            size += len(encoded)
        count += line_count
        pending.extend(lines)
        while len(pending) >= every:
            member(pending[:every])
            del pending[:every]
    if pending:
        member(pending)
    return Built(out.getvalue(), count, size, digest.hexdigest(), offsets, chunks, last)


def write_verified(step: StepRun, run_id: int, built: Built) -> str:
    """Store the file and read it back; its key. Raises ArchiveError on any difference
    (and removes what it wrote)."""
    backend = artifacts.storage()
    wanted = storage_key(step, run_id)
    try:
        key = backend.save(wanted, ContentFile(built.data, name=wanted))
    except Exception as exc:  # noqa: BLE001 — storage backends raise many kinds
        raise ArchiveError(f"step {step.pk}: storage unavailable: {exc}") from exc
    try:
        with backend.open(key, "rb") as fh:
            back = fh.read()
        text = gzip.decompress(back)
        problem = None
        if hashlib.sha256(text).hexdigest() != built.sha256:
            problem = "the stored archive does not read back identically"
        elif text.count(b"\n") != built.line_count:
            problem = "the stored archive has another line count"
    except Exception as exc:  # noqa: BLE001
        problem = f"the stored archive cannot be read back: {exc}"
    if problem:
        delete_quietly(key)
        raise ArchiveError(f"step {step.pk}: {problem}")
    return key


def delete_quietly(key: str) -> None:
    try:
        artifacts.storage().delete(key)
    except Exception:  # noqa: BLE001, S110 — the housekeeping retries
        pass


# --- reading --------------------------------------------------------------------------


def archive_of(step: StepRun) -> LogArchive | None:
    try:
        return step.log_archive
    except LogArchive.DoesNotExist:
        return None


def _purged_line(archive: LogArchive) -> str:
    return (
        f"[clearway] this log was archived and removed on {archive.purged_at:%Y-%m-%d} (retention)"
    )


def read_lines(archive: LogArchive, start: int, stop: int) -> list[str]:
    """Lines [start, stop) of an archived log: one ranged read of the members that hold
    them."""
    start, stop = max(0, start), min(stop, archive.line_count)
    if archive.purged_at is not None:
        return [_purged_line(archive)] if start == 0 and stop > 0 else []
    if stop <= start:
        return []
    every = archive.index_every
    first, last = start // every, (stop - 1) // every
    begin = archive.offsets[first]
    end = archive.offsets[last + 1] if last + 1 < len(archive.offsets) else None
    with artifacts.storage().open(archive.storage_key, "rb") as fh:
        fh.seek(begin)
        data = fh.read() if end is None else fh.read(end - begin)
    lines = gzip.decompress(data).decode("utf-8").split("\n")[:-1]
    skip = start - first * every
    return lines[skip : skip + (stop - start)]


def read_log(step: StepRun, offset: int = 0, limit: int = 5000) -> tuple[list[str], int]:
    """orchestrator.models.read_log, from the archive when the step has one."""
    archive = archive_of(step)
    if archive is None:
        return read_chunks(step, offset, limit)
    offset = max(0, offset)
    if archive.purged_at is not None:  # one line that says so, and the log is complete
        return ([_purged_line(archive)] if offset == 0 else []), archive.line_count
    lines = read_lines(archive, offset, offset + limit)
    return lines, offset + len(lines)


def read_window(step: StepRun, start: int, stop: int) -> list[str] | None:
    """Lines [start, stop) of an archived step log; None when the log is not archived."""
    archive = archive_of(step)
    if archive is None:
        return None
    return read_lines(archive, start, stop)


def iter_text(archive: LogArchive) -> Iterator[bytes]:
    """The whole archived log as it was written (lines ended by newlines), in blocks."""
    if archive.purged_at is not None:
        yield (_purged_line(archive) + "\n").encode()
        return
    with artifacts.storage().open(archive.storage_key, "rb") as fh:
        inflater = zlib.decompressobj(wbits=31)
        while True:
            block = fh.read(256 * 1024)
            if not block:
                break
            while block:
                out = inflater.decompress(block)
                if out:
                    yield out
                if inflater.eof:  # the next member
                    block = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                else:
                    block = b""
        tail = inflater.flush()
        if tail:
            yield tail

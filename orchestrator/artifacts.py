"""Artifacts: files a step stores when it succeeds, and that the stages which `need` its
stage receive in their workspace before they start, on whatever host they run
(docs/pipelines.md, "Artifacts").

- `collect(step, workspace)`: the files the step's `artifacts:` name, checked (inside the
  workspace — no symlink leading out —, regular files, under ARTIFACT_MAX_BYTES; a glob that
  matches nothing fails unless `optional: true`). Raises ArtifactError with the message the
  step shows.
- `store(step, run, files)`: each file written through the "artifacts" storage
  (settings.STORAGES) with its SHA-256 and content type; unsaved Artifact rows come back,
  and actions.finish_step saves them with the step's outcome (one transaction). If one file
  cannot be stored, those already written are deleted: nothing is half-stored.
- `deliver(step, workspace)`: before a `run` step starts, the artifacts of the stages its
  stage needs are copied from storage into the workspace, each digest checked. Done once
  per stage and host (a marker under the workspace root, which steps cannot see).
- `purge_expired()`: the beat task's work — stored files past their pipeline's retention
  are deleted, their rows kept with `purged_at`, one audit row per run.

Paths are opened component by component from the workspace's directory descriptor with
O_NOFOLLOW, so a step (or a step of a parallel stage on the same host) cannot make the
worker read or write outside the workspace by swapping in a symlink after the check.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import mimetypes
import os
import queue
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import transaction
from django.utils import timezone

from governance import audit

from .models import Artifact, LogArchive, Run, StageRun, StepRun

COPY_BUFFER = 1024 * 1024
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArtifactError(Exception):
    """An artifact could not be collected, stored or delivered; the message says which,
    where and why (it becomes the step's error)."""


def storage():
    """The storage artifacts and archived logs live in (STORAGES["artifacts"])."""
    return storages["artifacts"]


def max_bytes() -> int:
    return int(settings.CLEARWAY["ARTIFACT_MAX_BYTES"])


def retention_days(run: Run) -> int:
    """The pipeline's `retention_days:`, or the installation's default."""
    spec = run.version.spec if run.version_id else {}
    days = (spec or {}).get("retention_days")
    return int(days or settings.CLEARWAY["ARTIFACT_RETENTION_DAYS"])


def expiry(run: Run, now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(days=retention_days(run))


def _mib(size: int) -> str:
    return f"{size} bytes" if size < 1024 * 1024 else f"{size / (1024 * 1024):.1f} MiB"


# --- paths inside the workspace -------------------------------------------------------


@contextlib.contextmanager
def _dir_fd(workspace: Path, parts: tuple[str, ...], *, create: bool = False, uid=None):
    """A descriptor of directory workspace/parts…, reached without following a symlink."""
    fd = os.open(workspace, _OPEN_DIR)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if uid is not None:
                        os.chown(part, uid, uid, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            nxt = os.open(part, _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


@dataclass
class Collected:
    name: str
    path: str  # relative to the workspace, "/"-separated
    size: int
    policy_input: bool
    optional: bool


def _relative(workspace_real: str, found: str) -> str | None:
    """The path of `found` relative to the workspace once symlinks are resolved, or None
    when it is outside."""
    real = os.path.realpath(found)
    if real != workspace_real and not real.startswith(workspace_real + os.sep):
        return None
    return os.path.relpath(real, workspace_real).replace(os.sep, "/")


def collect(step: StepRun, workspace: Path) -> list[Collected]:
    """The files the step's `artifacts:` name (see the module docstring)."""
    declared = step.config.get("artifacts") or []
    if not declared:
        return []
    workspace_real = os.path.realpath(workspace)
    limit = max_bytes()
    out: list[Collected] = []
    for item in declared:
        name, pattern = item["name"], item["path"]
        where = f'artifact "{name}" (path "{pattern}")'
        if PurePosixPath(pattern).is_absolute() or ".." in PurePosixPath(pattern).parts:
            raise ArtifactError(f"{where}: the path is outside the workspace")
        matches = sorted(glob.glob(pattern, root_dir=workspace_real, recursive=True))
        files = []
        for match in matches:
            full = os.path.join(workspace_real, match)
            relative = _relative(workspace_real, full)
            if relative is None:
                raise ArtifactError(
                    f"{where}: {match} is a symlink that leads out of the workspace "
                    f"(to {os.path.realpath(full)}) — store the file itself"
                )
            if os.path.isdir(full):
                if glob.has_magic(pattern):
                    continue  # a glob's directories are not files to store
                raise ArtifactError(
                    f'{where}: {match} is a directory — name its files, e.g. "{match}/**"'
                )
            try:
                info = os.stat(full)
            except OSError as exc:
                raise ArtifactError(f"{where}: {match} cannot be read: {exc.strerror}") from exc
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"{where}: {match} is not a regular file")
            if info.st_size > limit:
                raise ArtifactError(
                    f"{where}: {match} is {_mib(info.st_size)}, over the limit of "
                    f"{_mib(limit)} (CLEARWAY_ARTIFACT_MAX_BYTES)"
                )
            files.append(
                Collected(
                    name,
                    relative,
                    info.st_size,
                    bool(item.get("policy_input")),
                    bool(item.get("optional")),
                )
            )
        if not files and not item.get("optional"):
            raise ArtifactError(
                f"{where}: no file matches in the workspace — check the path, or mark the "
                "artifact optional: true"
            )
        out.extend(files)
    return out


def _open_in_workspace(workspace: Path, relative: str) -> int:
    parts = tuple(relative.split("/"))
    with _dir_fd(workspace, parts[:-1]) as fd:
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)


class _Digest:
    """SHA-256 of a stream. From THREAD_FROM bytes on, the hashing runs in a helper thread
    that overlaps the copy (hashlib releases the GIL on large blocks): a received artifact
    costs about what a plain copy through storage does (benchmarks/artifacts.py)."""

    THREAD_FROM = 4 * 1024 * 1024

    def __init__(self, expected_size: int = 0):
        self._hash = hashlib.sha256()
        self._queue: queue.Queue | None = None
        if expected_size >= self.THREAD_FROM:
            self._queue = queue.Queue(maxsize=16)
            self._thread = threading.Thread(target=self._work, name="artifact-sha256", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while (block := self._queue.get()) is not None:
            self._hash.update(block)

    def update(self, block: bytes) -> None:
        if self._queue is None:
            self._hash.update(block)
        else:
            self._queue.put(block)

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()


class _Chunked(File):
    DEFAULT_CHUNK_SIZE = COPY_BUFFER


class _Hashing:
    """A file object that hashes what is read from it, so upload and digest take one pass.
    A backend may read the file more than once (boto reads ahead for checksums, then seeks
    back): only bytes past the furthest point hashed so far are hashed. If a backend skips
    ahead, `digest_of()` hashes the file again (a second pass, never a wrong digest)."""

    def __init__(self, fh, limit: int):
        self.fh, self.done, self.limit, self.gap, self.pos = fh, 0, limit, False, 0
        self.digest = _Digest(os.fstat(fh.fileno()).st_size)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = self.fh.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        pos = self.pos
        data = self.fh.read(n)
        end = self.pos = pos + len(data)
        if pos > self.done:
            self.gap = True
        elif end > self.done:
            self.digest.update(data[self.done - pos :] if pos < self.done else data)
            self.done = end
        if end > self.limit:
            raise ArtifactError(f"grew over the limit of {_mib(self.limit)} while stored")
        return data

    def digest_of(self) -> tuple[str, int]:
        size = os.fstat(self.fh.fileno()).st_size
        digest = self.digest.hexdigest()
        if self.gap or self.done != size:
            self.fh.seek(0)
            digest, size = hashlib.sha256(), 0
            for block in _blocks(self.fh):
                digest.update(block)
                size += len(block)
            return digest.hexdigest(), size
        return digest, self.done

    def __getattr__(self, name):
        return getattr(self.fh, name)


def _key(run: Run, step: StepRun, relative: str) -> str:
    return f"runs/{run.pk}/steps/{step.pk}-{step.attempt}/{relative}"


def store(step: StepRun, run: Run, workspace: Path, files: list[Collected]) -> list[Artifact]:
    """Write the collected files to storage; the unsaved rows (see the module docstring)."""
    if not files:
        return []
    backend = storage()
    now = timezone.now()
    expires = expiry(run, now)
    stored: list[Artifact] = []
    try:
        for item in files:
            where = f'artifact "{item.name}" ({item.path})'
            try:
                fd = _open_in_workspace(workspace, item.path)
            except OSError as exc:
                raise ArtifactError(f"{where}: cannot be read safely: {exc.strerror}") from exc
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise ArtifactError(f"{where}: is not a regular file")
                hashing = _Hashing(fh, max_bytes())
                wanted = _key(run, step, item.path)  # new for every attempt
                try:
                    key = backend.save(wanted, _Chunked(hashing, name=item.path))
                except ArtifactError as exc:
                    hashing.digest.close()
                    _delete_partial(backend, wanted)
                    raise ArtifactError(f"{where}: {exc}") from exc
                except Exception as exc:  # storage backends raise many kinds (OSError, botocore)
                    hashing.digest.close()
                    _delete_partial(backend, wanted)
                    raise ArtifactError(
                        f"{where}: artifact storage unavailable: {exc.__class__.__name__}: {exc}"
                        " — the step can be retried once storage is back"
                    ) from exc
                sha256, size = hashing.digest_of()
            content_type = mimetypes.guess_type(item.path)[0] or "application/octet-stream"
            stored.append(
                Artifact(
                    stage_run_id=step.stage_id,
                    step_run_id=step.pk,
                    name=item.name,
                    path=item.path,
                    size=size,
                    sha256=sha256,
                    content_type=content_type,
                    storage_key=key,
                    policy_input=item.policy_input,
                    optional=item.optional,
                    created_at=now,
                    expires_at=expires,
                )
            )
    except BaseException:
        discard(stored)
        raise
    return stored


def _delete_partial(backend, key: str) -> None:
    """What a failed save may have left (FileSystemStorage does not clean up)."""
    with contextlib.suppress(Exception):
        backend.delete(key)


def discard(rows: list[Artifact]) -> None:
    """Delete the stored files of rows that are not (or no longer) to be kept."""
    backend = storage()
    for row in rows:
        with contextlib.suppress(Exception):
            backend.delete(row.storage_key)


def save_locked(step: StepRun, rows: list[Artifact]) -> list[dict]:
    """Save a succeeded step's rows inside the transaction that records its outcome; the
    list for its audit row (names, paths, digests)."""
    if not rows:
        return []
    Artifact.objects.bulk_create(rows)
    return [{"name": r.name, "path": r.path, "sha256": r.sha256, "size": r.size} for r in rows]


# --- delivery into a later stage's workspace ------------------------------------------


def _marker(workspace: Path, stage_id: int) -> Path:
    return workspace.parent / ".received" / f"{workspace.name}-stage-{stage_id}"


def received_markers(workspace: Path) -> list[Path]:
    """The delivery markers of a run's workspace (removed with it)."""
    return list((workspace.parent / ".received").glob(f"{workspace.name}-stage-*"))


def needed(stage: StageRun) -> list[Artifact]:
    """The stored artifacts of the stages `stage` needs, in a stable order."""
    if not stage.needs:
        return []
    return list(
        Artifact.objects.filter(
            stage_run__run_id=stage.run_id, stage_run__name__in=stage.needs, purged_at=None
        ).order_by("stage_run__position", "name", "path")
    )


def deliver(step: StepRun, stage: StageRun, workspace: Path, uid: int | None = None) -> list:
    """Copy the needed stages' artifacts into the workspace (see the module docstring);
    returns what was delivered (empty when this host already did for the stage)."""
    marker = _marker(workspace, stage.pk)
    if marker.exists():
        return []
    wanted = needed(stage)
    by_path: dict[str, Artifact] = {}
    for row in wanted:
        other = by_path.get(row.path)
        if other is not None and other.sha256 != row.sha256:
            raise ArtifactError(
                f'artifacts "{other.name}" and "{row.name}" of the stages this stage needs '
                f"both hold {row.path}, with different content — give them different paths"
            )
        by_path[row.path] = row
    for row in by_path.values():
        _download(row, workspace, uid)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return list(by_path.values())


def _download(row: Artifact, workspace: Path, uid: int | None) -> None:
    where = f'artifact "{row.name}" ({row.path}) of stage {row.stage_run_id}'
    parts = tuple(row.path.split("/"))
    temp = f".{parts[-1]}.clearway-{os.getpid()}"
    try:
        source = storage().open(row.storage_key, "rb")
    except Exception as exc:  # noqa: BLE001 — storage backends raise many kinds
        raise ArtifactError(
            f"{where}: artifact storage unavailable: {exc.__class__.__name__}: {exc}"
        ) from exc
    with source, _dir_fd(workspace, parts[:-1], create=True, uid=uid) as dir_fd:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
        fd = os.open(temp, flags, 0o644, dir_fd=dir_fd)
        digest = _Digest(row.size)
        try:
            with os.fdopen(fd, "wb") as out:
                for block in _blocks(source):
                    digest.update(block)
                    out.write(block)
                if uid is not None:
                    os.fchown(out.fileno(), uid, uid)
            got = digest.hexdigest()
            if got != row.sha256:
                raise ArtifactError(
                    f"{where}: the stored file does not match its digest (expected sha256 "
                    f"{row.sha256}, got {got}) — it was changed in storage"
                )
            os.replace(temp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            digest.close()
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise


def _blocks(fh) -> Iterator[bytes]:
    while True:
        block = fh.read(COPY_BUFFER)
        if not block:
            return
        yield block


# --- downloads ------------------------------------------------------------------------


def download_name(row: Artifact) -> str:
    run = row.stage_run.run
    base = row.path.rsplit("/", 1)[-1]
    return f"{run.pipeline.slug}-{run.number}-{row.name}-{base}"


def download_response(row: Artifact):
    """The stored file as an attachment (the page and the API, after their permission
    check). Never rendered inline: the content type is the stored one, with nosniff."""
    from django.http import FileResponse, Http404

    try:
        fh = storage().open(row.storage_key, "rb")
    except FileNotFoundError:
        raise Http404("the artifact's file is missing from storage") from None
    response = FileResponse(
        fh, as_attachment=True, filename=download_name(row), content_type=row.content_type
    )
    response["Content-Length"] = str(row.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["X-Artifact-SHA256"] = row.sha256
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def for_run(run: Run) -> list[Artifact]:
    """The run's artifacts with their stage and step, in run order (one query)."""
    return list(
        Artifact.objects.filter(stage_run__run=run)
        .select_related("stage_run", "step_run")
        .order_by("stage_run__position", "step_run__position", "name", "path")
    )


# --- retention ------------------------------------------------------------------------


def purge_expired(now: datetime | None = None, batch: int = 500) -> dict:
    """Delete stored artifacts and archived logs past their expiry (see the module
    docstring). A file that cannot be deleted now stays for the next round."""
    now = now or timezone.now()
    backend = storage()
    counts = {"artifacts": 0, "logs": 0, "failed": 0}
    rows = list(
        Artifact.objects.filter(expires_at__lte=now, purged_at=None)
        .select_related("stage_run__run__pipeline")
        .order_by("expires_at")[:batch]
    )
    logs = list(
        LogArchive.objects.filter(expires_at__lte=now, purged_at=None)
        .select_related("step__stage__run__pipeline")
        .order_by("expires_at")[:batch]
    )
    removed: dict[int, dict] = {}
    for row in rows:
        try:
            backend.delete(row.storage_key)
        except Exception:  # noqa: BLE001 — next round
            counts["failed"] += 1
            continue
        run = row.stage_run.run
        entry = removed.setdefault(run.pk, {"run": run, "artifacts": [], "logs": [], "ids": []})
        entry["artifacts"].append({"name": row.name, "path": row.path, "sha256": row.sha256})
        entry["ids"].append(row.pk)
    log_ids: list[int] = []
    for archive in logs:
        try:
            backend.delete(archive.storage_key)
        except Exception:  # noqa: BLE001 — next round
            counts["failed"] += 1
            continue
        run = archive.step.stage.run
        entry = removed.setdefault(run.pk, {"run": run, "artifacts": [], "logs": [], "ids": []})
        entry["logs"].append({"step": archive.step_id, "sha256": archive.sha256})
        log_ids.append(archive.pk)
    with transaction.atomic():
        ids = [i for entry in removed.values() for i in entry["ids"]]
        counts["artifacts"] = Artifact.objects.filter(pk__in=ids).update(purged_at=now)
        counts["logs"] = LogArchive.objects.filter(pk__in=log_ids).update(purged_at=now)
        for entry in removed.values():
            audit.record(
                None,
                "run.artifacts_purged",
                entry["run"],
                at=now,
                artifacts=entry["artifacts"],
                logs=entry["logs"],
                reason="retention",
            )
    return counts

"""Signed audit checkpoints, kept outside the database, and the verification that uses them.

A checkpoint says "row `seq` of the audit chain has hash `hash`", signed at `at` with an
Ed25519 key whose private half is a file named by settings (CLEARWAY["AUDIT_SIGNING_KEY"]) and
never enters the database. Beat makes one every CLEARWAY["AUDIT_CHECKPOINT_INTERVAL"] seconds
(task clearway.audit_checkpoint) and every export queues one. Each is written to the
configured sinks (CLEARWAY["AUDIT_CHECKPOINT_SINKS"]):

    /srv/clearway/checkpoints     an append-only directory (a WORM mount); also dir:///srv/…
    s3://bucket/prefix            S3-compatible storage through django-storages
                                  (?endpoint_url=…&region=…; credentials from AWS_* variables)
    syslog+tcp://host:514         RFC 5424 syslog (syslog+tls://host:6514?ca=ca.pem for TLS)

Why outside the database: whoever owns the audit table can disable its trigger, rewrite a row
and recompute every later hash and the head — the chain then verifies. A checkpoint written
elsewhere before the rewrite still names the old hash, so `verify_checkpoints` finds the
rewrite; the owner cannot sign a new one without the private key.

Verification starts from the latest checkpoint whose signature verifies (`verify`): the rows
up to it were verified when it was signed, so a verification, and every export, costs the
rows since the last checkpoint. `governance.audit.verify()` without `since` stays the full
walk (`verify_audit_log --full`).

The signed text (`payload`) is the canonical JSON of
{"type": "clearway.audit.checkpoint", "v": 1, "seq", "hash", "at", "key_id"}; docs/audit.md
shows how to check it with openssl alone.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import rfc3161_client
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import IntegrityError, transaction

from . import audit, syslog
from .models import AuditCheckpoint, AuditEvent

logger = logging.getLogger(__name__)

TYPE = "clearway.audit.checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """No key, a bad key, an unreadable sink, or a chain that does not verify."""


# --- keys ---------------------------------------------------------------------------------


def _setting(name: str) -> str:
    return str(settings.CLEARWAY.get(name) or "")


def load_private_key(path: str | None = None) -> Ed25519PrivateKey:
    path = path or _setting("AUDIT_SIGNING_KEY")
    if not path:
        raise CheckpointError(
            "no audit signing key: set CLEARWAY_AUDIT_SIGNING_KEY to an Ed25519 private key "
            "(PEM) file; create one with `openssl genpkey -algorithm ed25519 -out key.pem` "
            "(see docs/audit.md)"
        )
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"audit signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"audit signing key {path}: not an Ed25519 key")
    return key


def _read_public(path: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"audit public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"audit public key {path}: not an Ed25519 key")
    return key


def load_public_keys() -> dict[str, Ed25519PublicKey]:
    """Every key that may have signed a checkpoint, by key_id: the signing key's, and each
    file in CLEARWAY_AUDIT_PUBLIC_KEY (comma-separated, so the keys of before a rotation
    keep verifying the checkpoints they signed)."""
    keys = [_read_public(p.strip()) for p in _setting("AUDIT_PUBLIC_KEY").split(",") if p.strip()]
    if _setting("AUDIT_SIGNING_KEY"):
        keys.insert(0, load_private_key().public_key())
    return {key_id(k): k for k in keys}


def load_public_key() -> Ed25519PublicKey | None:
    """The current verifying key: the signing key's, else the first of
    CLEARWAY_AUDIT_PUBLIC_KEY; None when neither is configured (verification then walks the
    whole chain)."""
    keys = load_public_keys()
    return next(iter(keys.values()), None)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 bytes (hex) of the SHA-256 of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def generate_key(path: Path) -> Path:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key next to it
    (`<name>.pub.pem`). Refuses to overwrite an existing key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path(path).write_text(public_pem(key.public_key()))
    return path


def public_path(private: Path) -> Path:
    return private.with_name(private.name.removesuffix(".pem") + ".pub.pem")


def ensure_demo_key() -> Path:
    """Standalone/demo only: use (or create once) var/audit-signing-key.pem when no key is
    configured. Called when the standalone server starts, never on settings import."""
    configured = _setting("AUDIT_SIGNING_KEY")
    if configured:
        return Path(configured)
    path = Path(settings.VAR_DIR) / "audit-signing-key.pem"
    if not path.exists():
        generate_key(path)
    settings.CLEARWAY["AUDIT_SIGNING_KEY"] = str(path)
    if not settings.CLEARWAY.get("AUDIT_CHECKPOINT_SINKS"):
        settings.CLEARWAY["AUDIT_CHECKPOINT_SINKS"] = [str(Path(settings.VAR_DIR) / "checkpoints")]
    return path


# --- the checkpoint document --------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    key_id: str
    signature: str  # base64
    source: str = field(default="", compare=False)  # where it was read from (a file name)
    # An RFC 3161 timestamp token (base64 DER TimeStampResp) over the signature's bytes, from
    # the TSA at CLEARWAY_AUDIT_TSA_URL: a third party's proof of when it was signed.
    timestamp: str = field(default="", compare=False)

    @property
    def payload(self) -> str:
        return audit.canonical_json(
            {
                "type": TYPE,
                "v": VERSION,
                "seq": self.seq,
                "hash": self.hash,
                "at": self.at,
                "key_id": self.key_id,
            }
        )

    def document(self) -> dict:
        return {
            "type": TYPE,
            "v": VERSION,
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "key_id": self.key_id,
            "payload": self.payload,
            "signature": self.signature,
            **({"timestamp": self.timestamp} if self.timestamp else {}),
        }

    def text(self) -> str:
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":"))

    def verifies(self, key: Ed25519PublicKey | dict[str, Ed25519PublicKey]) -> bool:
        """Whether the signature holds, under `key` or (a dict) the key named by key_id."""
        if isinstance(key, dict):
            key = key.get(self.key_id)
            if key is None:
                return False
        try:
            key.verify(base64.b64decode(self.signature, validate=True), self.payload.encode())
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def from_document(cls, doc: dict, source: str = "") -> Checkpoint:
        """Parse a document; the fields must be exactly those the payload signs."""
        try:
            signed = json.loads(doc["payload"])
            cp = cls(
                seq=int(signed["seq"]),
                hash=str(signed["hash"]),
                at=str(signed["at"]),
                key_id=str(signed["key_id"]),
                signature=str(doc["signature"]),
                source=source,
                timestamp=str(doc.get("timestamp") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source or 'checkpoint'}: not a checkpoint ({exc})") from exc
        if signed.get("type") != TYPE or cp.payload != doc["payload"]:
            raise CheckpointError(f"{source or 'checkpoint'}: payload is not in canonical form")
        for name in ("seq", "hash", "at", "key_id"):
            if name in doc and doc[name] != getattr(cp, name):
                raise CheckpointError(f"{source}: field {name} differs from the signed payload")
        return cp

    @classmethod
    def from_row(cls, row: AuditCheckpoint) -> Checkpoint:
        return cls(
            row.seq, row.hash, row.at, row.key_id, row.signature, f"database #{row.pk}",
            row.timestamp,
        )  # fmt: skip

    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.signature)


def sign(seq: int, hash_: str, *, at: datetime | None = None) -> Checkpoint:
    key = load_private_key()
    when = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    unsigned = Checkpoint(seq, hash_, when, key_id(key.public_key()), "")
    signature = base64.b64encode(key.sign(unsigned.payload.encode())).decode()
    return Checkpoint(seq, hash_, when, unsigned.key_id, signature)


# --- RFC 3161 timestamps (optional) ------------------------------------------------------


def request_timestamp(message: bytes, url: str | None = None) -> str:
    """Ask the TSA for a timestamp token over `message` (SHA-256 imprint, with a nonce and
    the TSA's certificate); returns the response, DER, base64. CheckpointError on failure."""
    url = url or _setting("AUDIT_TSA_URL")
    request = (
        rfc3161_client.TimestampRequestBuilder()
        .data(message)
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )
    try:
        response = httpx.post(
            url,
            content=request.as_bytes(),
            headers={"Content-Type": "application/timestamp-query"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise CheckpointError(f"TSA {url}: {exc.__class__.__name__}: {exc}") from exc
    if response.status_code != 200:
        raise CheckpointError(f"TSA {url}: HTTP {response.status_code}")
    try:
        decoded = rfc3161_client.decode_timestamp_response(response.content)
    except ValueError as exc:
        raise CheckpointError(f"TSA {url}: not a timestamp response ({exc})") from exc
    if decoded.status not in (0, 1):  # granted, granted with modifications
        raise CheckpointError(f"TSA {url}: refused (PKIStatus {decoded.status})")
    if decoded.tst_info.nonce != request.nonce:
        raise CheckpointError(f"TSA {url}: the answer is not for this request (nonce)")
    return base64.b64encode(response.content).decode()


def verify_timestamp(cp: Checkpoint) -> str:
    """'' when the checkpoint's timestamp verifies under CLEARWAY_AUDIT_TSA_CA (a PEM bundle
    of the TSA's root certificates), else what is wrong."""
    ca = _setting("AUDIT_TSA_CA")
    if not ca:
        return "no CLEARWAY_AUDIT_TSA_CA to check its timestamp with"
    try:
        roots = x509.load_pem_x509_certificates(Path(ca).read_bytes())
        response = rfc3161_client.decode_timestamp_response(base64.b64decode(cp.timestamp))
        rfc3161_client.VerifierBuilder(roots=roots).build().verify_message(
            response, cp.signature_bytes()
        )
    except (OSError, ValueError, rfc3161_client.VerificationError) as exc:
        return f"its RFC 3161 timestamp does not verify ({exc})"
    return ""


# --- sinks --------------------------------------------------------------------------------

_NAME = re.compile(r"^checkpoint-(\d{12})-[0-9TZ]+\.json$")


def _file_name(cp: Checkpoint) -> str:
    stamp = re.sub(r"[^0-9T]", "", cp.at.split("+")[0])[:21] + "Z"
    return f"checkpoint-{cp.seq:012d}-{stamp}.json"


class DirectorySink:
    """One file per checkpoint, created exclusively (never overwritten) and fsynced; point it
    at an append-only / WORM mount."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.name = f"dir:{self.path}"

    def write(self, cp: Checkpoint) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / _file_name(cp)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            if target.read_text().strip() == cp.text():
                return  # already written (a retry)
            raise CheckpointError(f"{target} exists with other content") from None
        with os.fdopen(fd, "w") as out:
            out.write(cp.text() + "\n")
            out.flush()
            os.fsync(out.fileno())
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self) -> Iterator[tuple[str, str]]:
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such directory")
        for entry in sorted(self.path.iterdir()):
            if _NAME.match(entry.name):
                yield str(entry), entry.read_text()


class S3Sink:
    """One object per checkpoint under `prefix/`, through django-storages' S3Storage (never
    overwriting). Use a bucket with Object Lock (compliance mode) for WORM."""

    def __init__(self, url: str):
        from storages.backends.s3 import S3Storage

        parsed = urlparse(url)
        if not parsed.netloc:
            raise CheckpointError(f"{url}: give the bucket, e.g. s3://audit-evidence/clearway")
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        options = {
            "bucket_name": parsed.netloc,
            "location": parsed.path.strip("/"),
            "file_overwrite": False,
            "default_acl": None,
        }
        if "endpoint_url" in query:
            options["endpoint_url"] = query["endpoint_url"]
        if "region" in query:
            options["region_name"] = query["region"]
        self.storage = S3Storage(**options)
        self.name = f"s3://{parsed.netloc}/{options['location']}".rstrip("/")

    def write(self, cp: Checkpoint) -> None:
        from django.core.files.base import ContentFile

        name = _file_name(cp)
        if self.storage.exists(name):
            with self.storage.open(name) as existing:
                if existing.read().decode().strip() == cp.text():
                    return
            raise CheckpointError(f"{self.name}/{name} exists with other content")
        self.storage.save(name, ContentFile((cp.text() + "\n").encode()))

    def read(self) -> Iterator[tuple[str, str]]:
        try:
            _, files = self.storage.listdir("")
        except Exception as exc:  # noqa: BLE001 — botocore raises many kinds
            raise CheckpointError(f"{self.name}: {exc}") from exc
        for name in sorted(files):
            if _NAME.match(name):
                with self.storage.open(name) as fh:
                    yield f"{self.name}/{name}", fh.read().decode()


class SyslogSink:
    """The checkpoint as one RFC 5424 message (MSGID "checkpoint", the document as MSG)."""

    def __init__(self, url: str):
        self.sender = syslog.Sender(url)
        self.name = self.sender.name

    def write(self, cp: Checkpoint) -> None:
        msg = syslog.message(cp.text(), msgid="checkpoint", params={"seq": cp.seq, "hash": cp.hash})
        self.sender.send([msg])


class LogFileSource:
    """A file of lines that carry checkpoint documents: what a syslog receiver stored, e.g.
    `/var/log/clearway/checkpoints.log`. Read-only: `verify_audit_log --checkpoints FILE`."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.name = f"file:{self.path}"

    def read(self) -> Iterator[tuple[str, str]]:
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                start = line.find('{"')
                if start >= 0 and TYPE in line:
                    yield f"{self.path}:{number}", line[start:].strip()


def sink(spec: str):
    """A sink (or, for a file, a read-only source) from its address."""
    spec = spec.strip()
    if spec.startswith("s3://"):
        return S3Sink(spec)
    if spec.startswith("syslog"):
        return SyslogSink(spec)
    if spec.startswith("dir://"):
        return DirectorySink(urlparse(spec).path)
    if spec.startswith("dir:"):
        return DirectorySink(spec[4:])
    if spec.startswith("file:"):
        return LogFileSource(spec.removeprefix("file://").removeprefix("file:"))
    path = Path(spec)
    if path.is_file():
        return LogFileSource(spec)
    if path.is_absolute() or path.is_dir():
        return DirectorySink(spec)
    raise CheckpointError(
        f"{spec!r}: not a checkpoint sink; use a directory path, s3://bucket/prefix, "
        "syslog+tcp://host:port or a file of syslog lines"
    )


def configured_sinks() -> list:
    return [sink(s) for s in settings.CLEARWAY.get("AUDIT_CHECKPOINT_SINKS") or []]


def read_checkpoints(source) -> tuple[list[Checkpoint], list[str]]:
    """Every checkpoint in `source`, by seq; and the entries that are not checkpoints."""
    found, bad = [], []
    for where, text in source.read():
        try:
            found.append(Checkpoint.from_document(json.loads(text), where))
        except (ValueError, CheckpointError) as exc:
            bad.append(f"{where}: {exc}")
    found.sort(key=lambda cp: (cp.seq, cp.at))
    return found, bad


# --- making checkpoints -------------------------------------------------------------------


def _write_sinks(cp: Checkpoint, sinks: Iterable) -> dict:
    outcome = {}
    for target in sinks:
        try:
            target.write(cp)
            outcome[target.name] = "ok"
        except Exception as exc:  # noqa: BLE001 — one sink down must not stop the others
            logger.warning("audit checkpoint #%s: sink %s failed: %s", cp.seq, target.name, exc)
            outcome[target.name] = f"{exc.__class__.__name__}: {exc}"[:500]
    return outcome


def make_checkpoint() -> AuditCheckpoint | None:
    """Sign the chain head and write it to every sink. The rows since the last trusted
    checkpoint are verified first: a broken chain is never signed (CheckpointError). Returns
    None when there is nothing new to sign. Sinks that failed are retried here next time."""
    key = load_private_key()
    retry_failed_sinks()
    head_seq, head_hash = audit.chain_head()
    if head_seq == 0:
        return None
    latest = AuditCheckpoint.objects.order_by("-seq").first()
    if latest is not None and latest.seq >= head_seq:
        return None
    result = verify(head_seq)
    if not result.ok:
        where = f"broken at #{result.first_broken_seq}" if result.first_broken_seq else "unverified"
        raise CheckpointError(f"audit chain {where} ({result.problem}): not signing a checkpoint")
    cp = sign(head_seq, head_hash)
    assert cp.verifies(key.public_key())
    if _setting("AUDIT_TSA_URL"):
        try:
            cp = dataclasses.replace(cp, timestamp=request_timestamp(cp.signature_bytes()))
        except CheckpointError as exc:  # the signature stands without it; said in the log
            logger.warning("audit checkpoint #%s: no RFC 3161 timestamp: %s", cp.seq, exc)
    try:
        with transaction.atomic():
            row = AuditCheckpoint.objects.create(
                seq=cp.seq,
                hash=cp.hash,
                at=cp.at,
                key_id=cp.key_id,
                signature=cp.signature,
                timestamp=cp.timestamp,
            )
    except IntegrityError:  # another worker signed this head at the same moment
        return None
    row.sinks = _write_sinks(cp, configured_sinks())
    AuditCheckpoint.objects.filter(pk=row.pk).update(sinks=row.sinks)
    return row


def retry_failed_sinks(limit: int = 20) -> int:
    """Write again the recent checkpoints that some sink did not take."""
    sinks = {s.name: s for s in configured_sinks()}
    retried = 0
    for row in AuditCheckpoint.objects.order_by("-seq")[:limit]:
        missing = [s for name, s in sinks.items() if row.sinks.get(name) != "ok"]
        if not missing:
            continue
        outcome = {**row.sinks, **_write_sinks(Checkpoint.from_row(row), missing)}
        AuditCheckpoint.objects.filter(pk=row.pk).update(sinks=outcome)
        retried += 1
    return retried


# --- verifying ----------------------------------------------------------------------------


def trusted_checkpoint(up_to_seq: int | None = None) -> Checkpoint | None:
    """The latest checkpoint in the database at or below `up_to_seq` whose signature
    verifies. A row whose signature does not verify is forged: CheckpointError."""
    keys = load_public_keys()
    if not keys:
        return None
    rows = AuditCheckpoint.objects.order_by("-seq")
    if up_to_seq is not None:
        rows = rows.filter(seq__lte=up_to_seq)
    row = rows.first()
    if row is None:
        return None
    cp = Checkpoint.from_row(row)
    if not cp.verifies(keys):
        raise CheckpointError(f"checkpoint #{cp.seq} in the database: signature does not verify")
    return cp


def verify(up_to_seq: int | None = None) -> audit.VerifyResult:
    """Incremental verification: from the latest trusted checkpoint to `up_to_seq` (the head
    by default). Without a key or a checkpoint, the whole chain."""
    limit = audit.chain_head()[0] if up_to_seq is None else up_to_seq
    try:
        cp = trusted_checkpoint(limit)  # never one past the head (e.g. after a restore)
    except CheckpointError as exc:
        head_seq, head_hash = audit.chain_head()
        return audit.VerifyResult(False, 0, head_seq, head_hash, None, str(exc))
    return audit.verify(up_to_seq, since=(cp.seq, cp.hash) if cp else None)


@dataclass
class SinkReport:
    """What `verify_checkpoints` found: ok, how many checkpoints matched, and the first
    divergence in words (with the seq range it pins down)."""

    ok: bool
    source: str
    checked: int = 0
    timestamped: int = 0  # of those, how many carried an RFC 3161 timestamp that verified
    latest_matching: Checkpoint | None = None
    first_divergence: str = ""
    first_bad_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    chain: audit.VerifyResult | None = None


def verify_checkpoints(source, *, full: bool = False) -> SinkReport:
    """Check every checkpoint in `source` against the chain, in seq order, and stop at the
    first that does not match (a bad signature, a missing row, another hash). Then verify
    the chain itself from the latest matching external checkpoint (from row 1 if `full`)."""
    keys = load_public_keys()
    if not keys:
        raise CheckpointError(
            "no public key to check checkpoints with: set CLEARWAY_AUDIT_PUBLIC_KEY"
        )
    found, bad = read_checkpoints(source)
    report = SinkReport(ok=True, source=source.name, problems=bad)
    if not found:
        report.ok = False
        report.first_divergence = f"{source.name}: no checkpoints found"
        return report
    hashes = dict(
        AuditEvent.objects.filter(seq__in=[cp.seq for cp in found]).values_list("seq", "hash")
    )
    previous = 0
    for cp in found:
        db_hash = hashes.get(cp.seq)
        problem = ""
        if cp.key_id not in keys:
            problem = (
                f"signed with key {cp.key_id}, which is not among the public keys "
                "(add the old key to CLEARWAY_AUDIT_PUBLIC_KEY after a rotation)"
            )
        elif not cp.verifies(keys):
            problem = "its signature does not verify (forged or damaged checkpoint)"
        elif cp.timestamp and _setting("AUDIT_TSA_CA"):
            problem = verify_timestamp(cp)
        elif db_hash is None:
            problem = f"row #{cp.seq} is missing from the database"
        elif db_hash != cp.hash:
            problem = (
                f"row #{cp.seq} has hash {db_hash} in the database but {cp.hash} in the "
                f"checkpoint signed {cp.at}: rows #{previous + 1}..#{cp.seq} were rewritten "
                f"after it was signed (the chain matches the checkpoint at #{previous})"
                if previous
                else f"row #{cp.seq} has hash {db_hash} in the database but {cp.hash} in the "
                f"checkpoint signed {cp.at}: rows #1..#{cp.seq} were rewritten"
            )
        if problem:
            report.ok = False
            report.first_bad_seq = previous + 1 if db_hash is not None else cp.seq
            report.first_divergence = f"checkpoint {cp.source} (#{cp.seq}): {problem}"
            return report
        report.checked += 1
        report.timestamped += bool(cp.timestamp and _setting("AUDIT_TSA_CA"))
        report.latest_matching = cp
        previous = cp.seq
    start = None if full else (report.latest_matching.seq, report.latest_matching.hash)
    report.chain = audit.verify(since=start)
    if not report.chain.ok:
        report.ok = False
        report.first_bad_seq = report.chain.first_broken_seq
        report.first_divergence = f"row #{report.chain.first_broken_seq}: {report.chain.problem}"
    return report

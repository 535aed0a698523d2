"""Audit streaming: every audit event, in seq order, at least once, to each configured SIEM.

Destinations are settings (CLEARWAY["AUDIT_STREAMS"], from the CLEARWAY_AUDIT_STREAMS JSON):

    [{"name": "splunk", "url": "https://splunk:8088/services/collector/event",
      "format": "splunk", "token_env": "SPLUNK_HEC_TOKEN", "ca": "/etc/ssl/siem-ca.pem"},
     {"name": "collector", "url": "https://logs.example/ingest", "format": "generic"},
     {"name": "rsyslog", "url": "syslog+tcp://siem:514"},
     {"name": "rsyslog-tls", "url": "syslog+tls://siem:6514?ca=/etc/ssl/siem-ca.pem"}]

Each destination has an AuditStreamCursor row: the last seq it acknowledged (a 2xx answer
for HTTPS; for syslog, the receiver having read the whole batch, see governance.syslog). A
delivery (task clearway.stream_audit_destination, fanned out by clearway.stream_audit on
beat) sends the rows after that seq, in batches, and moves the cursor only after each
acknowledgement; a failure leaves it where it was, so the next attempt resends from there —
no gap, and duplicates only of the batch that was in flight (each event carries its seq, so a
receiver can drop them). Failures back off exponentially (2, 4, … 300 s) per destination.

One worker at a time delivers to a destination: it claims the cursor with a conditional
UPDATE of `leased_until` (a lease, so a killed worker's claim runs out), never a row lock
held across the network.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path

import httpx
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import audit, syslog
from .models import AuditEvent, AuditStreamCursor

logger = logging.getLogger(__name__)

LEASE_SECONDS = 120  # > the time budget of one delivery plus one batch's timeout
MAX_BACKOFF_SECONDS = 300
FORMATS = ("splunk", "generic", "syslog")


class StreamError(Exception):
    """A destination refused or did not acknowledge a batch."""


def event_record(event: AuditEvent) -> dict:
    """An audit row as streamed: the hashed fields plus prev_hash and hash, so the receiver
    can re-check the chain (docs/audit.md)."""
    return {**audit.row_payload(event), "prev_hash": event.prev_hash, "hash": event.hash}


@dataclass
class Destination:
    name: str
    url: str
    format: str
    token: str = ""
    ca: str | None = None
    batch: int = 500
    timeout: float = 10.0

    @classmethod
    def from_setting(cls, conf: dict) -> Destination:
        if not isinstance(conf, dict) or not conf.get("name") or not conf.get("url"):
            raise ValueError(
                f"CLEARWAY_AUDIT_STREAMS: each destination needs a name and a url, got {conf!r}"
            )
        url = str(conf["url"])
        fmt = "syslog" if url.startswith("syslog") else str(conf.get("format") or "splunk")
        if fmt not in FORMATS:
            raise ValueError(
                f"CLEARWAY_AUDIT_STREAMS {conf['name']}: format {fmt!r}; use one of "
                f"{', '.join(FORMATS)}"
            )
        token = str(conf.get("token") or "")
        if conf.get("token_env"):
            token = os.environ.get(str(conf["token_env"]), "")
        if conf.get("token_file"):
            token = Path(conf["token_file"]).read_text().strip()
        return cls(
            name=str(conf["name"])[:64],
            url=url,
            format=fmt,
            token=token,
            ca=conf.get("ca"),
            batch=int(conf.get("batch") or settings.CLEARWAY.get("AUDIT_STREAM_BATCH") or 500),
            timeout=float(conf.get("timeout") or 10.0),
        )

    def send(self, events: list[AuditEvent]) -> None:
        if self.format == "syslog":
            self._send_syslog(events)
        else:
            self._send_http(events)

    def _send_syslog(self, events: list[AuditEvent]) -> None:
        messages = [
            syslog.message(
                json.dumps(event_record(e), sort_keys=True, separators=(",", ":")),
                msgid="audit",
                at=e.at,
                params={"seq": e.seq, "action": e.action, "outcome": e.outcome, "hash": e.hash},
            )
            for e in events
        ]
        try:
            syslog.Sender(self.url, timeout=self.timeout).send(messages)
        except syslog.SyslogError as exc:
            raise StreamError(str(exc)) from exc

    def _send_http(self, events: list[AuditEvent]) -> None:
        host = socket.gethostname()
        headers = {"User-Agent": f"clearway/{settings.CLEARWAY_VERSION}"}
        if self.format == "splunk":
            # Splunk HTTP Event Collector: concatenated event objects, "Splunk <token>".
            body = "".join(
                json.dumps(
                    {
                        "time": round(e.at.astimezone(UTC).timestamp(), 6),
                        "host": host,
                        "source": "clearway",
                        "sourcetype": "clearway:audit",
                        "event": event_record(e),
                    },
                    separators=(",", ":"),
                )
                for e in events
            )
            if self.token:
                headers["Authorization"] = f"Splunk {self.token}"
        else:
            body = json.dumps(
                {
                    "source": "clearway",
                    "host": host,
                    "first_seq": events[0].seq,
                    "last_seq": events[-1].seq,
                    "events": [event_record(e) for e in events],
                },
                separators=(",", ":"),
            )
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
        headers["Content-Type"] = "application/json"
        try:
            verify = ssl.create_default_context(cafile=self.ca) if self.ca else True
            with httpx.Client(verify=verify, timeout=self.timeout) as client:
                response = client.post(self.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            raise StreamError(f"{self.url}: {exc.__class__.__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise StreamError(f"{self.url}: HTTP {response.status_code} {response.text[:200]}")


def destinations() -> dict[str, Destination]:
    return {
        d.name: d
        for d in (Destination.from_setting(c) for c in settings.CLEARWAY.get("AUDIT_STREAMS") or [])
    }


def _backoff(failures: int) -> float:
    return float(min(MAX_BACKOFF_SECONDS, 2**failures)) if failures else 0.0


def deliver(name: str, *, time_budget: float = 60.0, ignore_backoff: bool = False) -> dict:
    """Deliver the unacknowledged events to destination `name` until caught up, a failure,
    or `time_budget` seconds. Returns what happened (for the task result and tests)."""
    dest = destinations().get(name)
    if dest is None:
        return {"destination": name, "status": "not configured"}
    cursor, _ = AuditStreamCursor.objects.get_or_create(name=name)
    now = timezone.now()
    if (
        not ignore_backoff
        and cursor.failures
        and cursor.last_attempt_at
        and now < cursor.last_attempt_at + timedelta(seconds=_backoff(cursor.failures))
    ):
        return {"destination": name, "status": "backing off", "acked_seq": cursor.acked_seq}
    claimed = (
        AuditStreamCursor.objects.filter(pk=cursor.pk)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .update(leased_until=(lease := now + timedelta(seconds=LEASE_SECONDS)), last_attempt_at=now)
    )
    if claimed != 1:
        return {"destination": name, "status": "busy", "acked_seq": cursor.acked_seq}
    sent = 0
    acked = cursor.acked_seq
    deadline = time.monotonic() + time_budget
    status = "caught up"
    try:
        while time.monotonic() < deadline:
            # Seq order is commit order (appends hold the chain-head lock to their commit), so
            # the rows after `acked` that are visible now have no gap.
            rows = list(AuditEvent.objects.filter(seq__gt=acked).order_by("seq")[: dest.batch])
            if not rows:
                break
            dest.send(rows)
            last = rows[-1].seq
            # The lease's expiry doubles as our claim's token: only the holder moves the cursor.
            renewed = timezone.now() + timedelta(seconds=LEASE_SECONDS)
            moved = AuditStreamCursor.objects.filter(
                pk=cursor.pk, acked_seq=acked, leased_until=lease
            ).update(
                acked_seq=last,
                acked_at=timezone.now(),
                last_error="",
                failures=0,
                leased_until=renewed,
            )
            lease = renewed
            if moved != 1:  # our lease ran out and another worker moved on: stop here
                status = "lease lost"
                break
            acked, sent = last, sent + len(rows)
        else:
            status = "time budget spent"
    except StreamError as exc:
        logger.warning("audit stream %s: %s (acknowledged up to #%s)", name, exc, acked)
        AuditStreamCursor.objects.filter(pk=cursor.pk, leased_until=lease).update(
            last_error=str(exc)[:2000], failures=cursor.failures + 1
        )
        status = "failed"
    finally:
        AuditStreamCursor.objects.filter(pk=cursor.pk, leased_until=lease).update(leased_until=None)
    return {"destination": name, "status": status, "sent": sent, "acked_seq": acked}


def lag() -> list[dict]:
    """Per configured destination: acknowledged seq, events behind the head, and the age in
    seconds of the oldest event not yet acknowledged (0 when caught up)."""
    head_seq, _ = audit.chain_head()
    cursors = {c.name: c for c in AuditStreamCursor.objects.all()}
    now = timezone.now()
    out = []
    for name in destinations():
        cursor = cursors.get(name)
        acked = cursor.acked_seq if cursor else 0
        behind = max(0, head_seq - acked)
        age = 0.0
        if behind:
            oldest = AuditEvent.objects.filter(seq=acked + 1).values_list("at", flat=True).first()
            age = round((now - oldest).total_seconds(), 1) if oldest else 0.0
        out.append(
            {
                "name": name,
                "acked_seq": acked,
                "head_seq": head_seq,
                "lag_events": behind,
                "lag_seconds": age,
                "last_error": cursor.last_error if cursor else "",
                "failures": cursor.failures if cursor else 0,
            }
        )
    return out

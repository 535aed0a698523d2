"""RFC 5424 syslog messages over TCP (RFC 6587 octet counting), optionally TLS (RFC 5425).

Used by the checkpoint sink (governance.checkpoints) and the SIEM stream (governance.siem).
Plain syslog over TCP has no acknowledgement, so a batch counts as received only when the
receiver has read all of it: after the last frame the sender half-closes the connection and
waits for the receiver to close its side, which a syslog server (rsyslog's imtcp) does once
it has read up to our end of stream. A receiver killed before that makes `send` raise, and the
batch is sent again: delivery is at least once.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

# RFC 5424 facility 13 ("log audit"), severity 6 (informational).
FACILITY_LOG_AUDIT = 13
SEVERITY_INFO = 6
# Structured-data IDs need an enterprise number; 32473 is the one RFC 5612 reserves for
# documentation and examples. Receivers match on the "clearway@" prefix.
SD_ID = "clearway@32473"
APP_NAME = "clearway"


class SyslogError(OSError):
    """The receiver could not be reached or did not take the whole batch."""


def _sd_value(value: object) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def message(
    msg: str,
    *,
    msgid: str,
    at: datetime | None = None,
    params: dict | None = None,
    hostname: str | None = None,
    severity: int = SEVERITY_INFO,
) -> bytes:
    """One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`."""
    pri = FACILITY_LOG_AUDIT * 8 + severity
    stamp = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    stamp = stamp.replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "-")
    if params:
        body = " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items())
        sd = f"[{SD_ID} {body}]"
    else:
        sd = "-"
    return f"<{pri}>1 {stamp} {host} {APP_NAME} - {msgid} {sd} {msg}".encode()


def frame(data: bytes) -> bytes:
    """RFC 6587 octet counting: the length, a space, the message (newlines inside are safe)."""
    return str(len(data)).encode() + b" " + data


class Sender:
    """Where to send: `syslog+tcp://host:port` or `syslog+tls://host:port?ca=<PEM file>`."""

    def __init__(self, url: str, *, timeout: float = 10.0):
        parsed = urlparse(url)
        if parsed.scheme not in ("syslog+tcp", "syslog+tls", "syslog"):
            raise ValueError(f"{url}: a syslog address is syslog+tcp://host:port or syslog+tls://…")
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"{url}: give the host and the port, e.g. syslog+tcp://siem:514")
        self.host, self.port = parsed.hostname, parsed.port
        self.tls = parsed.scheme == "syslog+tls"
        query = parse_qs(parsed.query)
        self.ca_file = (query.get("ca") or [None])[0]
        self.timeout = timeout
        self.name = f"{parsed.scheme}://{self.host}:{self.port}"

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if not self.tls:
            return sock
        context = ssl.create_default_context(cafile=self.ca_file)
        return context.wrap_socket(sock, server_hostname=self.host)

    def send(self, messages: list[bytes]) -> None:
        """Send `messages` on one connection; return only once the receiver has read them."""
        if not messages:
            return
        try:
            with self._connect() as sock:
                sock.sendall(b"".join(frame(m) for m in messages))
                if isinstance(sock, ssl.SSLSocket):
                    sock = sock.unwrap()  # close_notify both ways: the peer read everything
                sock.shutdown(socket.SHUT_WR)
                while True:  # the receiver closes its side after reading our end of stream
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
        except (OSError, ssl.SSLError) as exc:
            raise SyslogError(f"{self.name}: {exc.__class__.__name__}: {exc}") from exc

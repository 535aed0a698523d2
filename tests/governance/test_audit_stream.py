"""Audit streaming (governance.siem) against a local HTTP receiver: the Splunk HEC and generic
shapes, the acknowledged seq, resuming after a refusal with no gap, backoff, the lag in
/healthz and on the admin page. The real-receiver tests (HTTPS killed mid-stream, rsyslog)
are in tests/integration/test_audit_siem_stream.py."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.contrib.auth import get_user_model

from governance import audit, siem
from governance.models import AuditStreamCursor

pytestmark = pytest.mark.django_db


class Receiver:
    """A tiny HTTP collector: records each request; answers `status` (200 by default)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.requests.append(
                    {"auth": self.headers.get("Authorization"), "body": body, "ok": receiver.status}
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/collector/event"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted_seqs(self, shape: str) -> list[int]:
        seqs = []
        for req in self.requests:
            if req["ok"] != 200:
                continue
            if shape == "generic":
                seqs += [e["seq"] for e in json.loads(req["body"])["events"]]
            else:
                decoder, text, pos = json.JSONDecoder(), req["body"], 0
                while pos < len(text):
                    obj, pos = decoder.raw_decode(text, pos)
                    seqs.append(obj["event"]["seq"])
        return seqs

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def configure(settings, receiver, fmt="splunk", batch=4):
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_STREAMS": [
            {"name": "siem", "url": receiver.url, "format": fmt, "token": "t0k", "batch": batch}
        ],
    }


def events(n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        audit.record("tester", "test.stream", ("thing", i, ""), n=i)


def test_splunk_hec_batches_in_seq_order(settings, receiver):
    configure(settings, receiver)
    events(10)
    result = siem.deliver("siem")
    assert result["status"] == "caught up" and result["sent"] == 10
    assert receiver.accepted_seqs("splunk") == list(range(1, 11))
    assert len(receiver.requests) == 3  # batches of 4
    first = receiver.requests[0]
    assert first["auth"] == "Splunk t0k"
    obj, _ = json.JSONDecoder().raw_decode(first["body"])
    assert obj["sourcetype"] == "clearway:audit" and obj["source"] == "clearway"
    assert set(obj["event"]) >= {"seq", "at", "action", "details", "prev_hash", "hash"}
    assert AuditStreamCursor.objects.get(name="siem").acked_seq == 10


def test_generic_shape(settings, receiver):
    configure(settings, receiver, fmt="generic", batch=100)
    events(3)
    siem.deliver("siem")
    (req,) = receiver.requests
    doc = json.loads(req["body"])
    assert req["auth"] == "Bearer t0k"
    assert (doc["first_seq"], doc["last_seq"]) == (1, 3)


def test_a_refused_batch_is_sent_again_with_no_gap(settings, receiver):
    configure(settings, receiver)
    events(6)
    siem.deliver("siem")
    events(5, start=6)
    receiver.status = 503
    failed = siem.deliver("siem")
    assert failed["status"] == "failed" and failed["acked_seq"] == 6
    cursor = AuditStreamCursor.objects.get(name="siem")
    assert cursor.failures == 1 and "HTTP 503" in cursor.last_error
    assert siem.deliver("siem")["status"] == "backing off"
    receiver.status = 200
    again = siem.deliver("siem", ignore_backoff=True)
    assert again == {"destination": "siem", "status": "caught up", "sent": 5, "acked_seq": 11}
    assert receiver.accepted_seqs("splunk") == list(range(1, 12))
    cursor.refresh_from_db()
    assert cursor.failures == 0 and cursor.last_error == "" and cursor.leased_until is None


def test_one_worker_at_a_time_per_destination(settings, receiver):
    from datetime import timedelta

    from django.utils import timezone

    configure(settings, receiver)
    events(2)
    AuditStreamCursor.objects.create(
        name="siem", leased_until=timezone.now() + timedelta(seconds=60)
    )
    assert siem.deliver("siem")["status"] == "busy"
    assert receiver.requests == []


def test_a_bad_destination_setting_says_what_is_missing(settings):
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_STREAMS": [{"url": "https://x"}]}
    with pytest.raises(ValueError, match="needs a name and a url"):
        siem.destinations()
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_STREAMS": [{"name": "x", "url": "https://x", "format": "xml"}],
    }
    with pytest.raises(ValueError, match="use one of splunk, generic, syslog"):
        siem.destinations()


def test_the_lag_is_in_healthz_and_on_the_admin_page(settings, receiver, client):
    configure(settings, receiver)
    events(5)
    siem.deliver("siem")
    events(3, start=5)
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    (lag,) = body["details"]["audit_stream"]
    assert lag["name"] == "siem" and lag["acked_seq"] == 5 and lag["lag_events"] == 3
    assert lag["lag_seconds"] >= 0
    assert body["details"]["audit_checkpoint"]["latest_seq"] is None
    root = get_user_model().objects.create_superuser("root-stream")
    client.force_login(root)
    page = client.get("/admin/governance/auditstreamcursor/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Events behind" in html
    shown = re.search(r'<td class="field-lag_events">(\d+)</td>', html)
    assert shown and int(shown.group(1)) >= 3  # and the sign-in, which is audited too


def test_syslog_over_tls_waits_for_the_receiver_to_read_everything(tmp_path):
    """The TLS path of governance.syslog against a local TLS receiver (the integration tests
    use rsyslog over plain TCP): octet-counted frames, close_notify, then end of stream."""
    import socket
    import ssl

    from governance import syslog
    from tests.tls import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got = []

    def serve():
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            data = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                data += chunk
            got.append(data)
            tls.unwrap()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    messages = [syslog.message(f"event {i}", msgid="audit", params={"seq": i}) for i in (1, 2)]
    syslog.Sender(f"syslog+tls://127.0.0.1:{port}?ca={cert}", timeout=10).send(messages)
    thread.join(10)
    listener.close()
    (data,) = got
    first_len, rest = data.split(b" ", 1)
    assert rest[: int(first_len)] == messages[0]
    assert data.endswith(messages[1])
    assert b'[clearway@32473 seq="2"] event 2' in data
    with pytest.raises(syslog.SyslogError, match="ConnectionRefusedError"):
        syslog.Sender(f"syslog+tls://127.0.0.1:{port}?ca={cert}", timeout=2).send(messages)

"""Notification channels through apprise, against real local receivers: Slack (its fixed
host, hooks.slack.com, reached through a local CONNECT proxy that terminates TLS with a test
CA — nothing leaves 127.0.0.1), Microsoft Teams (Power Automate workflows), a generic JSON
webhook, and e-mail to an aiosmtpd SMTP sink. Per-user preferences; failures retried with
backoff, then shown to admins and audited, never touching the gate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
from types import SimpleNamespace

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.contrib.auth import get_user_model

from governance import notifications
from governance.models import (
    AuditEvent,
    GateStatus,
    NotificationChannel,
    NotificationDelivery,
    NotificationPreference,
)
from governance.tasks import deliver_notification

pytestmark = pytest.mark.django_db

SLACK_HOOK = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"


def _pem(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory) -> dict:
    """A test CA and, signed by it, server certificates for 127.0.0.1 and hooks.slack.com."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clearway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (directory / "ca.pem").write_bytes(_pem(ca))
    contexts = {}
    for host in ("127.0.0.1", "hooks.slack.com"):
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        chain = directory / f"{host}.pem"
        chain.write_bytes(_pem(cert) + _key_pem(key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        contexts[host] = context
    return {"ca": str(directory / "ca.pem"), "contexts": contexts}


class ChatReceiver:
    """HTTPS on 127.0.0.1 for Teams and JSON webhooks, and an HTTP CONNECT proxy for hosts
    that apprise cannot be pointed elsewhere for (Slack): a CONNECT is answered here, the
    tunnel's TLS terminated with a certificate for the requested host, the request recorded.
    Nothing is forwarded anywhere."""

    def __init__(self, pki: dict):
        self.requests: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                sock = self.request
                host = "127.0.0.1"
                if sock.recv(1, socket.MSG_PEEK) == b"C":
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += sock.recv(1024)
                    host = head.split()[1].decode().rsplit(":", 1)[0]
                    sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                tls = pki["contexts"][host].wrap_socket(sock, server_side=True)
                stream = tls.makefile("rwb")
                request_line = stream.readline().decode().split()
                headers = {}
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = stream.read(int(headers.get("content-length") or 0))
                receiver.requests.append(
                    {
                        "host": host,
                        "method": request_line[0],
                        "path": request_line[1],
                        "headers": headers,
                        "body": body,
                        "answered": receiver.status,
                    }
                )
                reply = b"ok"
                stream.write(
                    f"HTTP/1.1 {receiver.status} X\r\nContent-Length: {len(reply)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + reply
                )
                stream.flush()
                tls.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, host: str, path_start: str = "") -> list[dict]:
        return [r for r in self.requests if r["host"] == host and r["path"].startswith(path_start)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    def __init__(self):
        self.messages: list[SimpleNamespace] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                sink.messages.append(
                    SimpleNamespace(
                        sender=envelope.mail_from,
                        to=envelope.rcpt_tos,
                        content=envelope.content.decode("utf-8", "replace"),
                    )
                )
                return "250 OK"

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self):
        self.controller.stop()


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    pki = make_pki(tmp_path)
    chat = ChatReceiver(pki)
    # apprise sends with requests: trust the test CA, and reach Slack's fixed host through
    # the local proxy only; everything on 127.0.0.1 is reached directly.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki["ca"])
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{chat.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield chat
    chat.close()


@pytest.fixture
def smtp():
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture
def notified(celery_eager, django_capture_on_commit_callbacks):
    def run():
        return django_capture_on_commit_callbacks(execute=True)

    return run


def channels(production, receiver, smtp) -> dict:
    urls = {
        "slack": SLACK_HOOK,
        "teams": f"workflows://127.0.0.1:{receiver.port}/wf0123/sig0123",
        "email": (
            f"mailto://example.test?smtp=127.0.0.1&port={smtp.port}"
            "&mode=insecure&from=clearway@example.test&to=release-team@example.test"
        ),
        "json": f"jsons://127.0.0.1:{receiver.port}/clearway/hook",
    }
    for name, url in urls.items():
        NotificationChannel.objects.create(environment=production, name=name, url=url)
    return urls


def test_every_channel_kind_gets_the_gate_notification(
    run_at_gate, approvers, production, receiver, smtp, notified, t0
):
    channels(production, receiver, smtp)
    with notified():
        run, gate = run_at_gate(now=t0)
    title = "[Clearway] payments-api #1 → production waits for your approval"
    deliveries = NotificationDelivery.objects.filter(gate=gate)
    assert sorted(deliveries.values_list("status", flat=True)) == ["sent"] * 4

    (slack,) = receiver.to("hooks.slack.com", "/services/T00000000/B00000000/")
    body = json.loads(slack["body"])
    assert slack["method"] == "POST"
    assert "waits for your approval" in json.dumps(body, ensure_ascii=False)
    assert "attachments" in body or "blocks" in body  # Slack's message format

    (teams,) = receiver.to("127.0.0.1", "/workflows/wf0123/")
    card = json.loads(teams["body"])
    assert card["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert "waits for your approval" in json.dumps(card, ensure_ascii=False)

    (hook,) = receiver.to("127.0.0.1", "/clearway/hook")
    generic = json.loads(hook["body"])
    assert generic["title"] == title
    assert f"/gates/{gate.pk}/" in generic["message"]

    (mail,) = smtp.messages
    assert mail.to == ["release-team@example.test"]
    assert "waits for your approval" in mail.content
    # The stored target never carries the channel's secrets.
    slack_row = deliveries.get(channel__name="slack")
    assert slack_row.target == "https://hooks.slack.com/…"
    assert "XXXX" not in "".join(deliveries.values_list("target", flat=True))


def test_channels_of_other_environments_and_unwanted_kinds_are_skipped(
    run_at_gate, approvers, production, staging, receiver, notified, t0
):
    hook = f"jsons://127.0.0.1:{receiver.port}"
    NotificationChannel.objects.create(environment=staging, name="staging", url=f"{hook}/s")
    NotificationChannel.objects.create(name="everywhere", url=f"{hook}/all")
    NotificationChannel.objects.create(
        environment=production, name="decisions", url=f"{hook}/d", events=["open", "rejected"]
    )
    NotificationChannel.objects.create(
        environment=production, name="off", url=f"{hook}/off", enabled=False
    )
    with notified():
        run_at_gate(now=t0)
    assert [r["path"] for r in receiver.requests] == ["/all"]


def test_user_preferences_pick_kinds_email_and_a_personal_channel(
    run_at_gate, approvers, production, receiver, notified, t0
):
    from django.core import mail

    sam, sara, sofia = approvers
    NotificationPreference.objects.create(user=sam, email=False)
    NotificationPreference.objects.create(user=sara, events=["open"])
    NotificationPreference.objects.create(
        user=sofia, url=f"jsons://127.0.0.1:{receiver.port}/sofia"
    )
    with notified():
        run, gate = run_at_gate(now=t0)
    assert sorted(m.to[0] for m in mail.outbox) == ["sofia@example.test"]
    (personal,) = receiver.to("127.0.0.1", "/sofia")
    assert "waits for your approval" in json.loads(personal["body"])["title"]
    row = NotificationDelivery.objects.get(user=sofia)
    assert row.status == "sent" and row.channel is None


def test_a_failing_channel_is_retried_then_shown_to_admins_and_audited(
    run_at_gate, approvers, production, receiver, notified, t0, client
):
    receiver.status = 500
    NotificationChannel.objects.create(
        environment=production, name="broken", url=f"jsons://127.0.0.1:{receiver.port}/down"
    )
    with notified():
        run, gate = run_at_gate(now=t0)
    assert len(receiver.to("127.0.0.1", "/down")) == 1 + deliver_notification.max_retries
    row = NotificationDelivery.objects.get(gate=gate)
    assert row.status == "failed"
    assert row.attempts == 1 + deliver_notification.max_retries
    assert "500" in row.last_error
    failure = AuditEvent.objects.get(action="notification.failed")
    assert failure.details["channel"] == "jsons://127.0.0.1:…".replace("…", f"{receiver.port}/…")
    gate.refresh_from_db()
    assert gate.status == GateStatus.WAITING  # the gate never waits on a notification
    admin = get_user_model().objects.create_superuser("root-notify")
    client.force_login(admin)
    page = client.get("/admin/governance/notificationdelivery/?status__exact=failed")
    assert page.status_code == 200 and "/down" not in page.content.decode()
    assert "jsons://127.0.0.1" in page.content.decode()


def test_a_channel_url_apprise_cannot_use_is_refused_in_the_admin(client, production):
    admin = get_user_model().objects.create_superuser("root-channel")
    client.force_login(admin)
    response = client.post(
        "/admin/governance/notificationchannel/add/",
        {"name": "bad", "environment": production.pk, "url": "nonsense://x", "events": "[]"},
    )
    assert response.status_code == 200
    assert "is not an apprise URL" in response.content.decode()
    assert not NotificationChannel.objects.exists()
    ok = client.post(
        "/admin/governance/notificationchannel/add/",
        {
            "name": "slack",
            "environment": production.pk,
            "url": SLACK_HOOK,
            "events": '["open"]',
            "enabled": "on",
        },
    )
    assert ok.status_code == 302
    event = AuditEvent.objects.get(action="notification.channel_create")
    assert event.details["url"] == "https://hooks.slack.com/…"


def test_mask_keeps_only_scheme_and_host():
    assert notifications.mask("slack://TA/TB/TC") == "slack://…"
    assert notifications.mask("mailto://u:secret@example.org?to=a@b") == "mailto://example.org/…"
    assert notifications.mask("jsons://127.0.0.1:8080") == "jsons://127.0.0.1:8080"


def test_a_user_sets_preferences_on_their_page_and_the_url_is_never_shown_back(approver, client):
    client.force_login(approver)
    page = client.get("/notifications/")
    assert page.status_code == 200 and 'id="notification-preferences"' in page.content.decode()
    bad = client.post("/notifications/", {"email": "on", "url": "nonsense://x"})
    assert "not an apprise URL" in bad.content.decode()
    assert not NotificationPreference.objects.exists()
    saved = client.post("/notifications/", {"events": ["open", "rejected"], "url": SLACK_HOOK})
    assert saved.status_code == 302
    pref = NotificationPreference.objects.get(user=approver)
    assert (pref.email, pref.events, pref.url) == (False, ["open", "rejected"], SLACK_HOOK)
    html = client.get("/notifications/").content.decode()
    assert "XXXXXXXX" not in html and "https://hooks.slack.com/…" in html
    event = AuditEvent.objects.get(action="notification.preferences")
    assert event.details == {
        "email": False,
        "events": ["open", "rejected"],
        "personal_channel": "https://hooks.slack.com/…",
    }
    # Left empty, the URL is kept; "remove" clears it.
    client.post("/notifications/", {"email": "on"})
    pref.refresh_from_db()
    assert pref.url == SLACK_HOOK and pref.email is True and pref.events == []
    client.post("/notifications/", {"email": "on", "clear_url": "on"})
    pref.refresh_from_db()
    assert pref.url == ""

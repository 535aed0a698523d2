"""Signed audit checkpoints: signing, the directory sink, incremental verification from the
latest checkpoint, and `verify_audit_log --checkpoints` catching a rewritten history."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from governance import audit, checkpoints
from governance.models import AuditCheckpoint, AuditEvent

from .audit_attack import rewrite_history

pytestmark = pytest.mark.django_db


@pytest.fixture
def signing(settings, tmp_path):
    key = checkpoints.generate_key(tmp_path / "keys" / "audit.pem")
    sink_dir = tmp_path / "worm"
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_SIGNING_KEY": str(key),
        "AUDIT_PUBLIC_KEY": "",
        "AUDIT_CHECKPOINT_SINKS": [str(sink_dir)],
    }
    return {"key": key, "public": checkpoints.public_path(key), "dir": sink_dir}


def events(n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        audit.record("tester", "test.event", ("thing", i, f"thing {i}"), n=i)


def test_a_checkpoint_is_signed_and_written_once_to_the_directory(signing):
    events(5)
    row = checkpoints.make_checkpoint()
    head_seq, head_hash = audit.chain_head()
    assert (row.seq, row.hash) == (head_seq, head_hash)
    assert row.sinks == {f"dir:{signing['dir']}": "ok"}
    files = list(signing["dir"].iterdir())
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["seq"] == head_seq and doc["hash"] == head_hash
    cp = checkpoints.Checkpoint.from_document(doc)
    assert cp.verifies(checkpoints.load_public_key())
    # Nothing new: no second checkpoint, no second file.
    assert checkpoints.make_checkpoint() is None
    assert len(list(signing["dir"].iterdir())) == 1
    # The private key never reaches the database.
    pem = signing["key"].read_text()
    secret = "".join(pem.splitlines()[1:-1])
    for stored in AuditCheckpoint.objects.values_list("signature", "hash", "key_id", "sinks"):
        assert secret not in json.dumps(stored)


def test_an_auditor_verifies_a_checkpoint_with_openssl_alone(signing, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    events(3)
    checkpoints.make_checkpoint()
    (file,) = signing["dir"].iterdir()
    doc = json.loads(file.read_text())
    (tmp_path / "payload").write_bytes(doc["payload"].encode())
    (tmp_path / "sig").write_bytes(base64.b64decode(doc["signature"]))
    verify = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(signing["public"])]
    verify += ["-rawin", "-in", str(tmp_path / "payload"), "-sigfile", str(tmp_path / "sig")]
    ok = subprocess.run(verify, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Signature Verified Successfully" in ok.stdout
    (tmp_path / "payload").write_bytes(doc["payload"].replace('"seq":3', '"seq":4').encode())
    forged = subprocess.run(verify, capture_output=True, text=True)
    assert forged.returncode != 0


def test_verification_starts_from_the_latest_checkpoint(signing):
    events(40)
    checkpoints.make_checkpoint()
    events(7, start=40)
    result = checkpoints.verify()
    assert result.ok
    assert result.since_seq == 40
    assert result.checked == 7  # O(rows since the checkpoint)
    full = audit.verify()
    assert full.ok and full.checked == 47 and full.since_seq == 0


def test_a_row_changed_after_the_checkpoint_is_named(signing):
    events(10)
    checkpoints.make_checkpoint()
    events(5, start=10)
    AuditEvent.objects.filter(seq=13).update(actor_name="mallory")
    result = checkpoints.verify()
    assert not result.ok
    assert result.first_broken_seq == 13
    assert result.problem == "content does not match its hash"


def test_a_forged_checkpoint_in_the_database_is_refused(signing):
    events(4)
    checkpoints.make_checkpoint()
    AuditCheckpoint.objects.update(hash="f" * 64)
    result = checkpoints.verify()
    assert not result.ok
    assert "signature does not verify" in result.problem


def test_a_broken_chain_is_never_signed(signing):
    events(6)
    AuditEvent.objects.filter(seq=2).update(action="test.other")
    with pytest.raises(checkpoints.CheckpointError, match="broken at #2"):
        checkpoints.make_checkpoint()
    assert not AuditCheckpoint.objects.exists()
    assert not signing["dir"].exists() or not list(signing["dir"].iterdir())


def test_the_owner_rewrite_is_caught_by_the_external_checkpoints(signing):
    events(48)
    checkpoints.make_checkpoint()  # at #48
    events(12, start=48)
    checkpoints.make_checkpoint()  # at #60
    events(3, start=60)
    # The attacker rewrites #49, re-chains every later row and the head, and removes the
    # database's own checkpoints: the chain alone now verifies.
    rewrite_history(49, details={"n": 4900})
    AuditCheckpoint.objects.all().delete()
    assert audit.verify().ok
    assert checkpoints.verify().ok
    with pytest.raises(CommandError) as caught:
        call_command("verify_audit_log", "--checkpoints", str(signing["dir"]))
    message = str(caught.value)
    assert "DIVERGES" in message
    assert "(#60)" in message and "rows #49..#60 were rewritten" in message
    assert "1 checkpoints matched before it" in message


def test_checkpoints_that_match_then_verify_only_the_new_rows(signing):
    events(20)
    checkpoints.make_checkpoint()
    events(4, start=20)
    out = StringIO()
    call_command("verify_audit_log", "--checkpoints", str(signing["dir"]), stdout=out)
    assert "1 checkpoints match (latest #20" in out.getvalue()
    assert "4 events verified after #20" in out.getvalue()
    full = StringIO()
    call_command("verify_audit_log", "--checkpoints", str(signing["dir"]), "--full", stdout=full)
    assert "24 events verified after #0" in full.getvalue()


def test_the_command_verifies_incrementally_by_default(signing):
    events(9)
    call_command("verify_audit_log", "--make-checkpoint", stdout=StringIO())
    events(2, start=9)
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    assert "audit chain OK: 2 events since checkpoint #9" in out.getvalue()
    out = StringIO()
    call_command("verify_audit_log", "--full", stdout=out)
    assert "audit chain OK: 11 events, head #11" in out.getvalue()


def test_checkpoints_read_back_from_syslog_lines(signing, tmp_path):
    events(3)
    row = checkpoints.make_checkpoint()
    text = checkpoints.Checkpoint.from_row(row).text()
    log = tmp_path / "siem.log"
    log.write_text(
        "2026-12-04T10:00:00Z host clearway - audit - unrelated line\n"
        f'2026-12-04T10:00:01Z host clearway - checkpoint [clearway@32473 seq="3"] {text}\n'
    )
    found, bad = checkpoints.read_checkpoints(checkpoints.sink(str(log)))
    assert [cp.seq for cp in found] == [3] and bad == []
    out = StringIO()
    call_command("verify_audit_log", "--checkpoints", str(log), stdout=out)
    assert "1 checkpoints match" in out.getvalue()


def test_a_sink_that_fails_is_retried_on_the_next_round(signing, settings, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the sink's directory should be")
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_CHECKPOINT_SINKS": [str(signing["dir"]), f"dir:{blocker}/sub"],
    }
    events(2)
    row = checkpoints.make_checkpoint()
    assert row.sinks[f"dir:{signing['dir']}"] == "ok"
    assert row.sinks[f"dir:{blocker}/sub"] != "ok"
    blocker.unlink()
    assert checkpoints.retry_failed_sinks() == 1
    row.refresh_from_db()
    assert set(row.sinks.values()) == {"ok"}
    assert len(list(Path(f"{blocker}/sub").iterdir())) == 1


def test_without_a_key_nothing_is_signed_and_verification_is_full(settings):
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_SIGNING_KEY": "", "AUDIT_PUBLIC_KEY": ""}
    events(3)
    with pytest.raises(checkpoints.CheckpointError, match="CLEARWAY_AUDIT_SIGNING_KEY"):
        checkpoints.make_checkpoint()
    result = checkpoints.verify()
    assert result.ok and result.checked == 3 and result.since_seq == 0


def test_the_demo_key_is_made_once_under_var(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_SIGNING_KEY": "", "AUDIT_CHECKPOINT_SINKS": []}
    path = checkpoints.ensure_demo_key()
    assert path == tmp_path / "audit-signing-key.pem"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = path.read_bytes()
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_SIGNING_KEY": ""}
    assert checkpoints.ensure_demo_key().read_bytes() == first
    assert settings.CLEARWAY["AUDIT_CHECKPOINT_SINKS"] == [str(tmp_path / "checkpoints")]


def test_an_unknown_sink_says_what_is_accepted():
    with pytest.raises(checkpoints.CheckpointError, match="s3://bucket/prefix"):
        checkpoints.sink("ftp-ish")


def test_an_export_verifies_from_the_checkpoint(
    signing, django_capture_on_commit_callbacks, monkeypatch
):
    from celery import current_app
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from governance import reports

    carl = get_user_model().objects.create_user("carl-cp")
    carl.groups.add(Group.objects.get(name="compliance-manager"))
    events(30)
    row = checkpoints.make_checkpoint()
    events(3, start=30)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        export = reports.export_audit(carl, {"format": "ndjson"})
    lines = [json.loads(x) for x in b"".join(export.body).decode().splitlines()]
    verification = next(x for x in lines if x["type"] == "verification")
    assert verification["ok"] is True
    assert verification["since_checkpoint_seq"] == row.seq
    assert verification["checked"] == 4  # three events and the export's own row
    # The export queues a checkpoint of its own (by task name, after commit).
    assert reports.queue_checkpoint in callbacks
    sent = []
    monkeypatch.setattr(current_app, "send_task", lambda name, *a, **k: sent.append(name))
    reports.queue_checkpoint()
    assert sent == ["clearway.audit_checkpoint"]


def test_the_public_key_and_latest_checkpoints_are_published(signing, client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    events(3)
    row = checkpoints.make_checkpoint()
    carl = get_user_model().objects.create_user("carl-key")
    carl.groups.add(Group.objects.get(name="compliance-manager"))
    client.force_login(carl)
    body = client.get("/api/v1/audit-events/checkpoints/").json()
    assert body["public_key"] == signing["public"].read_text()
    assert body["checkpoints"][0]["seq"] == row.seq
    cp = checkpoints.Checkpoint.from_document(body["checkpoints"][0])
    assert cp.verifies(checkpoints.load_public_key())
    viewer = get_user_model().objects.create_user("vic-key")
    client.force_login(viewer)
    assert client.get("/api/v1/audit-events/checkpoints/").status_code == 403


def test_the_auditors_python_check_in_the_docs_runs(signing, tmp_path):
    """docs/audit.md's snippet, run as written against an export and the checkpoint files."""
    import sys
    import textwrap

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from governance import reports

    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    section = docs.split("2. Recompute the chain", 1)[1]
    code = textwrap.dedent(section.split("```python", 1)[1].split("```", 1)[0])
    events(12)
    checkpoints.make_checkpoint()
    events(3, start=12)
    carl = get_user_model().objects.create_user("carl-docs")
    carl.groups.add(Group.objects.get(name="compliance-manager"))
    export = reports.export_audit(carl, {"format": "ndjson"})
    work = tmp_path / "auditor"
    (work / "checkpoints").mkdir(parents=True)
    (work / "clearway-audit.ndjson").write_bytes(b"".join(export.body))
    shutil.copy(signing["public"], work / "audit-signing-key.pub.pem")
    for f in signing["dir"].iterdir():
        shutil.copy(f, work / "checkpoints" / f.name)
    ran = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert "export matches every checkpoint it covers" in ran.stdout
    # The same check fails on a rewritten export.
    lines = (work / "clearway-audit.ndjson").read_text().splitlines()
    record = json.loads(lines[5])
    assert record["type"] == "event"
    lines[5] = json.dumps({**record, "actor_name": "mallory"})
    (work / "clearway-audit.ndjson").write_text("\n".join(lines) + "\n")
    bad = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True)
    assert bad.returncode != 0 and "AssertionError" in bad.stderr


def test_after_a_key_rotation_the_old_public_key_still_verifies_old_checkpoints(
    signing, settings, tmp_path
):
    events(5)
    checkpoints.make_checkpoint()
    new_key = checkpoints.generate_key(tmp_path / "rotated" / "audit.pem")
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_SIGNING_KEY": str(new_key)}
    events(2, start=5)
    # Rotated without keeping the old public key: nothing trusts the old checkpoints.
    with pytest.raises(checkpoints.CheckpointError, match="unverified .*signature does not"):
        checkpoints.make_checkpoint()
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_PUBLIC_KEY": str(signing["public"])}
    checkpoints.make_checkpoint()
    report = checkpoints.verify_checkpoints(checkpoints.sink(str(signing["dir"])))
    assert report.ok and report.checked == 2
    assert checkpoints.verify().since_seq == report.latest_matching.seq
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_PUBLIC_KEY": ""}
    report = checkpoints.verify_checkpoints(checkpoints.sink(str(signing["dir"])))
    assert not report.ok and "not among the public keys" in report.first_divergence


def test_bad_evidence_settings_fail_the_system_check(settings, tmp_path):
    from governance.checks import audit_evidence_settings

    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_SIGNING_KEY": str(tmp_path / "missing.pem"),
        "AUDIT_CHECKPOINT_SINKS": ["relative-nonsense"],
        "AUDIT_STREAMS": [{"name": "x", "url": "https://siem", "format": "xml"}],
    }
    ids = sorted(p.id for p in audit_evidence_settings())
    assert ids == ["clearway.E101", "clearway.E102", "clearway.E103"]
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_SIGNING_KEY": str(checkpoints.generate_key(tmp_path / "k.pem")),
        "AUDIT_CHECKPOINT_SINKS": [],
        "AUDIT_STREAMS": [],
    }
    assert [p.id for p in audit_evidence_settings()] == ["clearway.W101"]


def test_a_checkpoint_past_the_head_is_not_a_starting_point(signing):
    """After a restore from an older backup the index may hold checkpoints beyond the head:
    verification starts from one at or below it (and --checkpoints reports the lost rows)."""
    events(4)
    first = checkpoints.make_checkpoint()
    events(3, start=4)
    later = checkpoints.make_checkpoint()
    from governance.models import AuditChainHead

    AuditEvent.objects.filter(seq__gt=first.seq).delete()
    AuditChainHead.objects.filter(pk=1).update(seq=first.seq, hash=first.hash)
    result = checkpoints.verify()
    assert result.ok and result.since_seq == first.seq
    report = checkpoints.verify_checkpoints(checkpoints.sink(str(signing["dir"])))
    assert not report.ok
    assert f"row #{later.seq} is missing from the database" in report.first_divergence


TSA_CONF = """[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
serial = {dir}/serial
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@pytest.fixture
def tsa(tmp_path):
    """A time-stamping authority on 127.0.0.1: an HTTP endpoint answering each query with
    `openssl ts -reply`, its certificate (EKU timeStamping) issued by a test root."""
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required in CI", pytrace=False)
        pytest.skip("openssl is not installed")
    d = tmp_path / "tsa"
    d.mkdir()
    (d / "serial").write_text("01\n")
    (d / "tsa.cnf").write_text(TSA_CONF.format(dir=d))
    (d / "ext.cnf").write_text(
        "extendedKeyUsage=critical,timeStamping\nbasicConstraints=CA:FALSE\n"
    )

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=t-root",
        "-days",
        "1",
    )
    run("req", *ec, "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=t-tsa")
    run("x509", "-req", "-in", "tsa.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tsa.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            query = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                (d / "q.tsq").write_bytes(query)
                run("ts", "-reply", "-config", "tsa.cnf", "-queryfile", "q.tsq", "-inkey",
                    "tsa.key", "-signer", "tsa.crt", "-out", "r.tsr")  # fmt: skip
                reply = (d / "r.tsr").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_port}/tsa", "ca": d / "ca.crt", "dir": d}
    server.shutdown()
    server.server_close()


def test_checkpoints_carry_an_rfc3161_timestamp_that_openssl_verifies(
    signing, settings, tsa, tmp_path
):
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_TSA_URL": tsa["url"],
        "AUDIT_TSA_CA": str(tsa["ca"]),
    }
    events(4)
    row = checkpoints.make_checkpoint()
    assert row.timestamp
    (file,) = signing["dir"].iterdir()
    doc = json.loads(file.read_text())
    assert doc["timestamp"] == row.timestamp
    report = checkpoints.verify_checkpoints(checkpoints.sink(str(signing["dir"])))
    assert report.ok and report.timestamped == 1
    # The auditor's check with openssl alone (docs/audit.md).
    (tmp_path / "token.tsr").write_bytes(base64.b64decode(doc["timestamp"]))
    (tmp_path / "signature").write_bytes(base64.b64decode(doc["signature"]))
    ok = subprocess.run(
        ["openssl", "ts", "-verify", "-in", str(tmp_path / "token.tsr"), "-data",
         str(tmp_path / "signature"), "-CAfile", str(tsa["ca"])],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0 and "Verification: OK" in ok.stdout, ok.stdout + ok.stderr
    # A timestamp moved onto another checkpoint does not verify.
    events(2, start=4)
    other = checkpoints.make_checkpoint()
    forged = checkpoints.Checkpoint.from_row(other)
    forged = checkpoints.Checkpoint(**{**forged.__dict__, "timestamp": row.timestamp})
    assert "does not verify" in checkpoints.verify_timestamp(forged)


def test_a_tsa_that_is_down_does_not_stop_the_checkpoint(signing, settings):
    settings.CLEARWAY = {**settings.CLEARWAY, "AUDIT_TSA_URL": "http://127.0.0.1:9/tsa"}
    events(2)
    row = checkpoints.make_checkpoint()
    assert row is not None and row.timestamp == "" and set(row.sinks.values()) == {"ok"}

"""Signed checkpoints outside the database, on PostgreSQL, with real sinks: an append-only
directory, moto's S3 server (through django-storages) and rsyslog. The owner-rewrite attack
(trigger disabled, a row changed, every later hash and the head recomputed) passes the chain
check but not the checkpoints; beat makes checkpoints on its schedule."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, transaction

from governance import audit, checkpoints
from governance.models import AuditCheckpoint, AuditEvent

from ..governance.audit_attack import rewrite_history
from .audit_receivers import MotoS3, Rsyslog
from .conftest import start_beat, start_worker, wait_for

pytestmark = pytest.mark.integration

BUCKET = "audit-evidence"


@pytest.fixture
def s3(log_dir, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = MotoS3(log_dir)
    import boto3

    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(
        Bucket=BUCKET
    )
    yield f"s3://{BUCKET}/clearway/checkpoints?endpoint_url={server.endpoint}&region=us-east-1"
    server.stop()


@pytest.fixture
def rsyslog(tmp_path, log_dir):
    receiver = Rsyslog(tmp_path, log_dir)
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def signing(settings, tmp_path, s3, rsyslog):
    key = checkpoints.generate_key(tmp_path / "keys" / "audit.pem")
    directory = tmp_path / "worm"
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_SIGNING_KEY": str(key),
        "AUDIT_PUBLIC_KEY": "",
        "AUDIT_CHECKPOINT_SINKS": [str(directory), s3, rsyslog.url],
    }
    return {"key": key, "dir": directory, "s3": s3, "rsyslog": rsyslog}


def events(n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with transaction.atomic():
            audit.record("tester", "test.event", ("thing", i, f"thing {i}"), n=i)


def test_the_owner_rewrite_is_named_by_every_sink(signing):
    base, _ = audit.chain_head()
    events(48 - base)
    first = checkpoints.make_checkpoint()
    assert first.seq == 48
    assert set(first.sinks.values()) == {"ok"}, first.sinks
    events(12, start=48)
    assert checkpoints.make_checkpoint().seq == 60
    events(3, start=60)
    assert len(signing["rsyslog"].lines()) == 2
    # The trigger stops the application's own role from editing history...
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=49).update(actor_name="mallory")
    # ...but not the table's owner, who re-chains everything after the change and deletes
    # the database's copies of the checkpoints.
    rewrite_history(49, actor_name="mallory", details={"n": 4900})
    AuditCheckpoint.objects.all().delete()
    assert audit.verify().ok, "the attack leaves a chain that verifies on its own"
    syslog_file = str(signing["rsyslog"].out)
    for source in (str(signing["dir"]), signing["s3"], syslog_file):
        with pytest.raises(CommandError) as caught:
            call_command("verify_audit_log", "--checkpoints", source)
        message = str(caught.value)
        assert "rows #49..#60 were rewritten" in message, (source, message)
        assert "1 checkpoints matched before it" in message


def test_checkpoints_in_s3_and_syslog_verify_an_untouched_chain(signing):
    events(10)
    checkpoints.make_checkpoint()
    events(5, start=10)
    head_seq, _ = audit.chain_head()
    for source in (signing["s3"], str(signing["rsyslog"].out)):
        report = checkpoints.verify_checkpoints(checkpoints.sink(source))
        assert report.ok, report.first_divergence
        assert report.chain.checked == head_seq - report.latest_matching.seq == 5


def test_beat_signs_checkpoints_on_its_schedule(live_db, log_dir, tmp_path):
    key = checkpoints.generate_key(tmp_path / "beat-keys" / "audit.pem")
    directory = tmp_path / "beat-worm"
    env = {
        "CLEARWAY_AUDIT_SIGNING_KEY": str(key),
        "CLEARWAY_AUDIT_CHECKPOINT_SINKS": str(directory),
        "CLEARWAY_AUDIT_CHECKPOINT_INTERVAL": "1",
    }
    events(3)
    worker = start_worker(live_db, log_dir, name="w-checkpoint", extra_env=env)
    beat = start_beat(live_db, log_dir, tmp_path, extra_env=env)
    try:
        head_seq, head_hash = audit.chain_head()
        wait_for(
            lambda: AuditCheckpoint.objects.filter(seq=head_seq).exists(),
            60,
            what="beat's checkpoint of the head",
        )
        events(2, start=3)
        wait_for(
            lambda: AuditCheckpoint.objects.filter(seq=head_seq + 2).exists(),
            60,
            what="a checkpoint of the new head",
        )
    finally:
        beat.stop()
        worker.stop()
    files = sorted(directory.iterdir())
    assert len(files) >= 2
    row = AuditCheckpoint.objects.get(seq=head_seq)
    assert row.hash == head_hash and row.sinks == {f"dir:{directory}": "ok"}

"""Audit streaming to SIEMs with a real worker and beat on PostgreSQL: an HTTPS receiver
(Splunk HEC shape, self-signed certificate) killed mid-stream and restarted ends with every
seq in order, and rsyslog receives RFC 5424 messages in seq order across its own restart."""

from __future__ import annotations

import json
import re
import threading

import pytest
import redis
from django.conf import settings
from django.db import connections, transaction

from governance import audit, siem
from governance.models import AuditStreamCursor

from .audit_receivers import HttpsReceiver, Rsyslog
from .conftest import start_beat, start_worker, wait_for

pytestmark = pytest.mark.integration

BATCH = 20
TOKEN = "hec-token-for-tests"


def own_redis_db() -> str:
    """A Redis db index next to the session's, flushed: a broker no other worker reads."""
    base, _, index = settings.REDIS_URL.rpartition("/")
    url = f"{base}/{(int(index or 0) + 1) % 16}"
    redis.Redis.from_url(url).flushdb()
    return url


def events(n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with transaction.atomic():
            audit.record("tester", "test.stream", ("thing", i, f"thing {i}"), n=i)


def cursor(name: str) -> AuditStreamCursor | None:
    return AuditStreamCursor.objects.filter(name=name).first()


def assert_in_order_at_least_once(seqs: list[int], head: int, resent_at_most: int) -> None:
    """Every seq 1..head, in order; a seq seen again only as part of one resent run."""
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == list(range(1, head + 1))
    assert len(seqs) - head <= resent_at_most
    # Any repeat restarts from an earlier seq and counts up one by one again.
    for prev, cur in zip(seqs, seqs[1:], strict=False):
        assert cur == prev + 1 or cur <= prev, (prev, cur)


def test_https_receiver_killed_mid_stream_gets_every_seq_in_order(live_db, log_dir, tmp_path):
    receiver = HttpsReceiver(tmp_path, log_dir, token=TOKEN)
    receiver.start()
    streams = [
        {
            "name": "splunk",
            "url": f"{receiver.url}/services/collector/event",
            "format": "splunk",
            "token_env": "TEST_HEC_TOKEN",
            "ca": str(receiver.cert),
            "batch": BATCH,
        }
    ]
    # A broker of its own: the session's worker (other tests') would take this beat's
    # delivery tasks without the stream configured.
    broker = own_redis_db()
    env = {
        "CLEARWAY_AUDIT_STREAMS": json.dumps(streams),
        "CLEARWAY_AUDIT_STREAM_INTERVAL": "1",
        "TEST_HEC_TOKEN": TOKEN,
        "REDIS_URL": broker,
        "CELERY_BROKER_URL": broker,
    }
    events(60)
    worker = start_worker(live_db, log_dir, name="w-siem", extra_env=env)
    beat = start_beat(live_db, log_dir, tmp_path, extra_env=env)
    stop = threading.Event()

    def keep_writing() -> None:  # events keep coming while the receiver dies and returns
        try:
            n = 60
            while not stop.is_set():
                events(5, start=n)
                n += 5
                stop.wait(0.05)
        finally:
            connections.close_all()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        wait_for(lambda: len(receiver.events()) >= 3 * BATCH, 60, what="the stream to start")
        receiver.kill()
        before_outage = [e["seq"] for e in receiver.events()]
        wait_for(
            lambda: (c := cursor("splunk")) is not None and c.failures >= 1,
            60,
            what="a failed delivery during the outage",
        )
        # Refused, or cut off while a batch was in flight: either way nothing was acknowledged.
        error = cursor("splunk").last_error
        assert receiver.url in error
        assert any(k in error for k in ("ConnectError", "RemoteProtocolError", "ReadError"))
        receiver.start()
        wait_for(lambda: len(receiver.events()) > len(before_outage), 60, what="the resumption")
        stop.set()
        writer.join(30)
        head, _ = audit.chain_head()
        wait_for(
            lambda: (c := cursor("splunk")) is not None and c.acked_seq == head,
            90,
            what="the stream to catch up after the outage",
        )
    finally:
        stop.set()
        writer.join(30)
        beat.stop()
        worker.stop()
        receiver.kill()
    received = receiver.events()
    assert before_outage and len(before_outage) < head
    assert {e["shape"] for e in received} == {"splunk"}
    assert {e["sourcetype"] for e in received} == {"clearway:audit"}
    assert_in_order_at_least_once([e["seq"] for e in received], head, resent_at_most=BATCH)
    # What arrived is the chain itself: the receiver can re-check every hash.
    prev = audit.GENESIS_HASH
    for e in {e["seq"]: e for e in received}.values():
        body = {k: v for k, v in e.items() if k not in ("shape", "sourcetype", "hash", "prev_hash")}
        assert e["prev_hash"] == prev
        assert audit.compute_hash(prev, body) == e["hash"]
        prev = e["hash"]
    assert cursor("splunk").last_error == "" and cursor("splunk").failures == 0


def test_generic_json_batches_carry_their_seq_range(settings, log_dir, tmp_path):
    receiver = HttpsReceiver(tmp_path, log_dir)
    receiver.start()
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_STREAMS": [
            {"name": "generic", "url": receiver.url, "format": "generic", "ca": str(receiver.cert)}
        ],
    }
    try:
        events(7)
        result = siem.deliver("generic")
    finally:
        receiver.kill()
    head, _ = audit.chain_head()
    assert result == {
        "destination": "generic",
        "status": "caught up",
        "sent": head,
        "acked_seq": head,
    }
    assert [e["seq"] for e in receiver.events()] == list(range(1, head + 1))
    assert {e["shape"] for e in receiver.events()} == {"generic"}
    (lag,) = siem.lag()
    assert lag["lag_events"] == 0 and lag["acked_seq"] == head


def test_rsyslog_receives_rfc5424_in_seq_order_across_a_restart(settings, log_dir, tmp_path):
    rsyslog = Rsyslog(tmp_path, log_dir)
    rsyslog.start()
    settings.CLEARWAY = {
        **settings.CLEARWAY,
        "AUDIT_STREAMS": [{"name": "rsyslog", "url": rsyslog.url, "batch": BATCH}],
    }
    try:
        events(50)
        first = siem.deliver("rsyslog")
        assert first["status"] == "caught up"
        rsyslog.kill()
        events(30, start=50)
        down = siem.deliver("rsyslog")
        assert down["status"] == "failed" and down["acked_seq"] == first["acked_seq"]
        assert "ConnectionRefusedError" in cursor("rsyslog").last_error
        # Backing off: a delivery right after the failure does not hammer the receiver.
        assert siem.deliver("rsyslog")["status"] == "backing off"
        rsyslog.start()
        again = siem.deliver("rsyslog", ignore_backoff=True)
    finally:
        rsyslog.stop()
    head, _ = audit.chain_head()
    assert again == {"destination": "rsyslog", "status": "caught up", "sent": 30, "acked_seq": head}
    lines = rsyslog.lines()
    pattern = re.compile(r'^<110>1 \S+Z \S+ clearway - audit \[clearway@32473 seq="(\d+)" ')
    seqs = [int(pattern.match(line).group(1)) for line in lines]
    assert seqs == list(range(1, head + 1))
    record = json.loads(lines[-1].split("] ", 1)[1])
    assert record["seq"] == head and record["action"] == "test.stream"

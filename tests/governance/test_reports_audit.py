"""The raw audit log export: CSV and NDJSON, filters, the evidence header and trailer, and
that an auditor can re-check the hash chain from the NDJSON alone."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from governance import audit
from governance.models import AuditEvent

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    api_for,
    body_of,
    parse_csv,
    people_fixture,
    scenario_fixture,
    split_trailer,
)

URL = "/api/v1/reports/audit"


def export(user, **params):
    response = api_for(user).get(URL, params)
    assert response.status_code == 200, getattr(response, "data", response)
    return response, body_of(response)


def ndjson(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.fixture
def carl(people):
    return people["compliance-manager"]


def test_ndjson_export_lets_an_auditor_recheck_the_chain(scenario, carl):
    head_before, _ = audit.chain_head()
    _, data = export(carl, format="ndjson")
    records = ndjson(data)
    header, *events, verification, trailer = records
    assert header["type"] == "header" and header["report"] == "audit-log"
    assert header["rows"] == {"events": head_before} == {"events": len(events)}
    assert header["rows_up_to_seq"] == head_before
    assert [e["seq"] for e in events] == list(range(1, head_before + 1))
    # Recompute every hash from the exported fields only.
    prev = audit.GENESIS_HASH
    for e in events:
        payload = {k: e[k] for k in (
            "seq", "at", "actor_id", "actor_name", "action", "target_type", "target_id",
            "target_name", "outcome", "details", "request_id", "ip",
        )}  # fmt: skip
        assert e["prev_hash"] == prev
        expected = hashlib.sha256((prev + audit.canonical_json(payload)).encode()).hexdigest()
        assert e["hash"] == expected
        prev = e["hash"]
    # The head in the header is the export's own event, right after the rows.
    export_event = AuditEvent.objects.get(action="report.export")
    assert header["audit_chain_head"] == {"seq": export_event.seq, "hash": export_event.hash}
    assert export_event.prev_hash == prev
    assert verification["type"] == "verification" and verification["ok"] is True
    assert verification["rows_written"] == len(events)
    body, last = split_trailer(data)
    assert trailer == {"type": "trailer", "sha256": hashlib.sha256(body).hexdigest()}


def test_csv_export_with_trailer(scenario, carl):
    _, data = export(carl, format="csv", action="gate.*")
    doc = parse_csv(data)
    assert {r["action"] for r in doc["events"]} == {"gate.approve", "gate.override", "gate.reject"}
    body, last = split_trailer(data)
    assert last.decode() == f"#,sha256,{hashlib.sha256(body).hexdigest()}\n"
    assert json.loads(doc["header"]["rows"]) == {"events": len(doc["events"])} == {"events": 6}
    assert json.loads(doc["trailer"]["chain_verification"])["ok"] is True
    denied = [r for r in doc["events"] if r["outcome"] == "denied"]
    assert denied[0]["actor_name"] == "dana"
    assert json.loads(denied[0]["details"])["reason"].startswith("separation of duties")


@pytest.mark.parametrize(
    ("params", "actions"),
    [
        ({"actor": "dana"}, ["run.trigger", "gate.approve"]),
        ({"action": "gate.approve", "outcome": "denied"}, ["gate.approve"]),
        ({"action": "policy.publish"}, ["policy.publish"]),
        ({"from": "2026-01-07", "to": "2026-01-07"}, ["gate.override"]),
        ({"from": "2030-01-01"}, []),
    ],
)
def test_filters(scenario, carl, params, actions):
    _, data = export(carl, format="ndjson", **params)
    events = [r for r in ndjson(data) if r["type"] == "event"]
    assert [e["action"] for e in events] == actions


def test_target_filter(scenario, carl):
    gate = scenario.gates["A"]
    _, data = export(carl, format="ndjson", target=f"gate:{gate.pk}")
    events = [r for r in ndjson(data) if r["type"] == "event"]
    assert len(events) == 4 and {e["target_id"] for e in events} == {str(gate.pk)}
    _, data = export(carl, format="ndjson", target="policy")
    assert [r["action"] for r in ndjson(data) if r["type"] == "event"] == ["policy.publish"]


def test_unicode_and_injection_in_the_audit_csv(people, carl):
    audit.record(people["approver2"], "gate.approve", ("gate", "1", "=1+2"), comment="@SUM(A1)")
    _, data = export(carl, format="csv")
    doc = parse_csv(data)
    row = next(r for r in doc["events"] if r["action"] == "gate.approve")
    assert row["actor_name"] == "李雷"
    assert row["target_name"] == "'=1+2"
    _, data = export(carl, format="ndjson")
    event = next(r for r in ndjson(data) if r.get("action") == "gate.approve")
    assert event["actor_name"] == "李雷" and event["target_name"] == "=1+2"  # NDJSON is raw


def test_export_is_audited_with_its_filters(scenario, carl):
    export(carl, format="csv", actor="dana", **{"from": "2026-01-01"})
    event = AuditEvent.objects.filter(action="report.export").latest("seq")
    assert event.actor_name == "carl" and event.target_name == "audit-log"
    assert event.details["format"] == "csv" and event.details["rows"] == {"events": 2}
    assert event.details["filters"]["actor"] == "dana"
    assert event.details["filters"]["from"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"format": "json"}, "format"),
        ({"outcome": "meh"}, "outcome"),
        ({"target": "run:1; drop"}, "target"),
        ({"action": "Gate Approve"}, "action"),
        ({"from": "2026-01-02", "to": "2026-01-01"}, "from"),
        ({"to": "soon"}, "to"),
    ],
)
def test_bad_filters(scenario, carl, params, parameter):
    response = api_for(carl).get(URL, params)
    assert response.status_code == 400 and response.json()["parameter"] == parameter


def test_events_after_the_export_started_are_not_included(people, carl, monkeypatch):
    audit.record(None, "test.one", at=datetime(2026, 1, 1, tzinfo=UTC))
    from governance import reports

    original = reports.write_ndjson

    def late_write(evidence, rows, **kw):
        audit.record(None, "test.late")  # lands while the stream is being written
        return original(evidence, rows, **kw)

    monkeypatch.setattr(reports.exports, "write_ndjson", late_write)
    _, data = export(carl, format="ndjson")
    actions = [r["action"] for r in ndjson(data) if r["type"] == "event"]
    assert "test.one" in actions and "test.late" not in actions
    assert AuditEvent.objects.filter(action="test.late").exists()

"""The change report over the API: rows, exceptions, filters, evidence header and trailer,
CSV injection, unicode, empty periods and bad filters."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.conf import settings
from django.db.models import Max, Min, Q

from governance import audit, reports
from governance.models import AuditEvent
from orchestrator.models import StageRun

from .test_reports_support import (  # noqa: F401  (fixtures: people, scenario)
    PERIOD,
    api_for,
    body_of,
    parse_csv,
    parse_json,
    people_fixture,
    scenario_fixture,
    split_trailer,
)

URL = "/api/v1/reports/changes"


def get(user, **params):
    return api_for(user).get(URL, params)


def export(user, fmt, **params):
    response = get(user, format=fmt, **{**PERIOD, **params})
    assert response.status_code == 200, getattr(response, "data", response)
    data = body_of(response)
    return response, data, (parse_csv(data) if fmt == "csv" else parse_json(data))


@pytest.fixture
def carl(people):
    return people["compliance-manager"]


def ids(rows):
    return [r["change_id"] for r in rows]


def test_csv_lists_every_deployment_in_the_period_in_order(scenario, carl):
    s = scenario
    _, _, doc = export(carl, "csv")
    expected = [f"CHG-{s.stages[k].pk}" for k in "ABCDE"]
    assert ids(doc["changes"]) == expected
    a, b, c, d, e = doc["changes"]
    assert a["url"] == f"/runs/{s.runs['A'].pk}/"
    assert (a["pipeline"], a["run_number"], a["version"], a["commit"], a["branch"]) == (
        "payments-api", "1", "2.14.0", "abc1234", "main",
    )  # fmt: skip
    assert (a["environment"], a["requested_by"], a["trigger"]) == ("production", "dana", "manual")
    assert a["reason"] == "CHG-42 quarterly release"
    assert "zoë.ångström (sre) approve" in a["approvals"] and "looks good, Zoë" in a["approvals"]
    assert "李雷 (sre) approve" in a["approvals"] and "同意" in a["approvals"]
    assert (a["approvals_required"], a["approvals_given"]) == ("3", "3")
    assert a["separation_of_duties"].startswith("self-approval attempt refused: dana")
    # Only the current decision is reported.
    assert a["policy_decisions"] == "freeze v1 soft-mandatory pass"
    assert a["outcome"] == "succeeded" and a["exceptions"] == "refused-approval"
    assert a["started"] == "2026-01-05T09:10:00Z" and a["finished"] == "2026-01-05T09:20:00Z"
    assert b["overrides"].startswith("olga 2026-01-07T09:08:00Z: =HYPERLINK")
    assert b["exceptions"] == "override, failed-deployment"
    assert b["related_run"] == f"retried by #4 (/runs/{s.runs['D'].pk}/)"
    assert c["gate_status"] == "rejected" and c["outcome"] == "blocked"
    assert "sofia (security) reject" in c["approvals"] and "'@risk" not in c["approvals"]
    assert d["related_run"] == f"retry of #2 (/runs/{s.runs['B'].pk}/)"
    assert d["reason"] == "Zoë Ångström 李雷 fix"
    assert (d["approvals_given"], "[void: expired]" in d["approvals"]) == ("1", True)
    assert (e["pipeline"], e["environment"], e["approvals_required"]) == (
        "claims-service", "staging", "1",
    )  # fmt: skip


def test_audit_seq_range_matches_the_log(scenario, carl):
    s = scenario
    _, _, doc = export(carl, "json")
    row = doc["changes"][0]
    targets = (
        Q(target_type="run", target_id=str(s.runs["A"].pk))
        | Q(target_type="stagerun", target_id=str(s.stages["A"].pk))
        | Q(target_type="gate", target_id=str(s.gates["A"].pk))
    )
    agg = AuditEvent.objects.filter(targets).aggregate(lo=Min("seq"), hi=Max("seq"))
    assert (row["audit_seq_first"], row["audit_seq_last"]) == (agg["lo"], agg["hi"])


def test_exceptions_section(scenario, carl):
    s = scenario
    for fmt in ("csv", "json"):
        _, _, doc = export(carl, fmt)
        kinds = [(e["kind"], e["change_id"]) for e in doc["exceptions"]]
        assert kinds == [
            ("override", f"CHG-{s.stages['B'].pk}"),
            ("gate-rejected", f"CHG-{s.stages['C'].pk}"),
            ("failed-deployment", f"CHG-{s.stages['B'].pk}"),
            ("refused-approval", f"CHG-{s.stages['A'].pk}"),
            ("policy-change", ""),
        ], fmt
        by_kind = {e["kind"]: e for e in doc["exceptions"]}
        assert by_kind["override"]["actor"] == "olga"
        assert "INC-7" in by_kind["override"]["detail"]
        assert by_kind["override"]["url"] == f"/runs/{s.runs['B'].pk}/"
        assert by_kind["gate-rejected"]["actor"] == "sofia"
        assert "no rollback plan" in by_kind["gate-rejected"]["detail"]
        assert by_kind["refused-approval"]["actor"] == "dana"
        assert by_kind["policy-change"]["subject"] == "freeze"
        assert by_kind["policy-change"]["actor"] == "paula"
        detail = by_kind["policy-change"]["detail"]
        assert "published v2 (was v1)" in detail and "+3/-1 lines" in detail
        assert "soft-mandatory → hard-mandatory" in detail


def test_csv_and_json_agree_and_count_equals_the_database(scenario, carl):
    _, _, as_csv = export(carl, "csv")
    _, _, as_json = export(carl, "json")
    assert ids(as_csv["changes"]) == ids(as_json["changes"])
    db = StageRun.objects.filter(
        Q(gate__isnull=False) | Q(environment__protected=True, started_at__isnull=False),
        gate__created_at__gte="2026-01-01T00:00:00Z",
        gate__created_at__lt="2026-02-01T00:00:00Z",
    ).count()
    assert len(as_json["changes"]) == db == as_json["header"]["rows"]["changes"] == 5
    assert as_json["rows_written"] == {"changes": 5, "exceptions": 5}
    assert as_json["header"]["rows"]["exceptions"] == 5
    assert json.loads(as_csv["trailer"]["rows_written"]) == {"changes": 5, "exceptions": 5}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"environment": "staging"}, "E"),
        ({"pipeline": "claims-service"}, "E"),
        ({"team": "payments"}, "ABCD"),
        ({"outcome": "failed"}, "B"),
        ({"outcome": "succeeded", "environment": "production"}, "AD"),
        ({"exceptions_only": "true"}, "ABC"),
        ({"from": "2026-01-06", "to": "2026-01-08"}, "BC"),
        ({"from": "2026-01-07T09:01:00Z", "to": "2026-01-07T09:01:01Z"}, "B"),
        ({"from": "2025-12-01"}, "FABCDE"),
    ],
)
def test_filters(scenario, carl, params, expected):
    _, _, doc = export(carl, "json", **params)
    assert ids(doc["changes"]) == [f"CHG-{scenario.stages[k].pk}" for k in expected]
    assert doc["header"]["rows"]["changes"] == len(expected)


def test_exceptions_follow_the_filters(scenario, carl):
    _, _, doc = export(carl, "json", environment="staging")
    assert [e["kind"] for e in doc["exceptions"]] == ["policy-change"]


def test_evidence_header_trailer_and_sha256(scenario, carl):
    for fmt in ("csv", "json"):
        response, data, doc = export(carl, fmt, environment="production")
        body, last = split_trailer(data)
        digest = hashlib.sha256(body).hexdigest()
        head_seq, head_hash = audit.chain_head()
        event = AuditEvent.objects.filter(action="report.export").latest("seq")
        if fmt == "csv":
            header = doc["header"]
            assert last == f"#,sha256,{digest}\n".encode()
            assert json.loads(header["filters"])["environment"] == "production"
            assert json.loads(header["rows"])["changes"] == 4
            chain = json.loads(header["audit_chain_head"])
            verification = json.loads(doc["trailer"]["chain_verification"])
            assert header["generated_by"] == "carl"
            assert header["clearway_version"] == settings.CLEARWAY_VERSION
            assert header["generated_at"].endswith("Z")
        else:
            header = doc["header"]
            assert last == f'"sha256":"{digest}"}}\n'.encode() and doc["sha256"] == digest
            assert header["filters"] == {
                "from": "2026-01-01T00:00:00Z",
                "to": "2026-02-01T00:00:00Z",
                "period_basis": "gate created_at, else stage started_at (UTC; from <= t < to)",
                "environment": "production",
                "pipeline": None,
                "team": None,
                "outcome": None,
                "exceptions_only": False,
            }
            assert header["rows"]["changes"] == 4
            assert header["generated_by"] == "carl"
            chain = header["audit_chain_head"]
            verification = doc["chain_verification"]
        # The export audited itself before the first byte; the head is that event.
        assert (
            chain == {"seq": event.seq, "hash": event.hash} == {"seq": head_seq, "hash": head_hash}
        )
        assert response["X-Clearway-Audit-Seq"] == str(event.seq)
        assert event.actor_name == "carl" and event.details["format"] == fmt
        assert event.details["rows"]["changes"] == 4
        assert event.details["filters"]["environment"] == "production"
        result = audit.verify(up_to_seq=chain["seq"])
        assert verification["ok"] is True and result.ok
        assert verification["checked"] == result.checked == chain["seq"]


def test_a_broken_chain_is_reported(scenario, carl):
    AuditEvent.objects.filter(action="gate.override").update(actor_name="mallory")
    _, _, doc = export(carl, "json")
    assert doc["chain_verification"]["ok"] is False
    assert doc["chain_verification"]["problem"] == "content does not match its hash"


def test_re_export_gives_the_same_rows(scenario, carl):
    _, _, first = export(carl, "json")
    _, _, second = export(carl, "json")
    assert first["changes"] == second["changes"]
    assert first["exceptions"] == second["exceptions"]
    assert first["header"]["audit_chain_head"] != second["header"]["audit_chain_head"]


def test_csv_cells_are_neutralised(scenario, carl):
    _, data, doc = export(carl, "csv")
    by_id = {r["change_id"]: r for r in doc["changes"]}
    b = by_id[f"CHG-{scenario.stages['B'].pk}"]
    assert b["overrides"].startswith("olga")  # the cell starts with the name, not "="
    override = next(e for e in doc["exceptions"] if e["kind"] == "override")
    assert override["detail"].startswith("'=HYPERLINK")
    rejected = next(e for e in doc["exceptions"] if e["kind"] == "gate-rejected")
    assert "@risk" in rejected["detail"]
    text = data.decode()
    for bad in (",=HYPERLINK", ",@risk", ",-1 day", ",+"):
        assert bad not in text
    assert reports.neutralise("=1+1") == "'=1+1"
    assert reports.neutralise("\tx") == "'\tx" and reports.neutralise("\rx") == "'\rx"
    assert reports.neutralise("-2") == "'-2" and reports.neutralise("@a") == "'@a"
    assert reports.neutralise("+a") == "'+a" and reports.neutralise("ok=") == "ok="
    assert reports.neutralise(-2) == "-2" and reports.neutralise(None) == ""


def test_a_user_name_that_looks_like_a_formula_is_neutralised_in_the_header(scenario):
    from .test_reports_support import make_user

    sneaky = make_user("=cmd|calc", "compliance-manager")
    _, data, doc = export(sneaky, "csv")
    assert doc["header"]["generated_by"] == "'=cmd|calc"


def test_unicode_survives_csv_and_json(scenario, carl):
    for fmt in ("csv", "json"):
        _, data, doc = export(carl, fmt)
        text = data.decode("utf-8")
        for name in ("zoë.ångström", "李雷", "同意", "Zoë Ångström 李雷 fix"):
            assert name in text, (fmt, name)
    _, _, doc = export(carl, "json")
    a = doc["changes"][0]
    assert [x["user"] for x in a["approvals"]] == ["zoë.ångström", "李雷", "sofia"]


def test_json_rows_are_structured(scenario, carl):
    _, _, doc = export(carl, "json")
    a, b = doc["changes"][0], doc["changes"][1]
    assert a["approvals"][0] == {
        "user": "zoë.ångström",
        "on_behalf_of": None,
        "group": "sre",
        "decision": "approve",
        "at": "2026-01-05T09:03:00Z",
        "comment": "looks good, Zoë",
        "void": False,
        "void_reason": "",
    }
    assert a["approval_rules"] == [
        {"group": "security", "required": 1},
        {"group": "sre", "required": 2},
    ]
    assert a["policy_decisions"] == [
        {
            "policy": "freeze",
            "version": 1,
            "enforcement": "soft-mandatory",
            "result": "pass",
            "messages": [],
        }
    ]
    assert b["overrides"][0]["user"] == "olga" and b["overrides"][0]["policies"] == ["freeze"]
    assert b["related_run"]["relation"] == "retried_by"


def test_empty_period_is_a_valid_report(scenario, carl):
    for fmt in ("csv", "json"):
        _, data, doc = export(carl, fmt, **{"from": "2024-01-01", "to": "2024-01-31"})
        body, last = split_trailer(data)
        assert doc["changes"] == []
        assert [e for e in doc["exceptions"]] == []
        assert hashlib.sha256(body).hexdigest() in last.decode()


def test_nothing_at_all_is_a_valid_report(people):
    _, data, doc = export(people["compliance-manager"], "json")
    assert doc["changes"] == [] and doc["header"]["rows"]["changes"] == 0
    assert doc["chain_verification"]["ok"] is True


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-45"}, "to"),
        ({"environment": "moon"}, "environment"),
        ({"pipeline": "nope"}, "pipeline"),
        ({"team": "nobody"}, "team"),
        ({"outcome": "exploded"}, "outcome"),
        ({"exceptions_only": "maybe"}, "exceptions_only"),
        ({"format": "xlsx"}, "format"),
        ({"format": "pdf"}, "format"),
    ],
)
def test_bad_filters_are_a_400_naming_the_parameter(scenario, carl, params, parameter):
    before = AuditEvent.objects.filter(action="report.export").count()
    response = get(carl, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["parameter"] == parameter and parameter in body["message"]
    assert AuditEvent.objects.filter(action="report.export").count() == before


def test_rows_are_read_in_chunks_with_a_bounded_number_of_queries(
    scenario, carl, django_assert_max_num_queries
):
    """A fixed number of queries per chunk, not per row (the artifacts are one of them)."""
    from django.utils import timezone

    filters = reports.ChangeFilters()
    qs = reports.change_queryset(carl, filters, as_of=timezone.now())
    with django_assert_max_num_queries(11):
        rows = list(reports.iter_changes(qs, chunk_size=500))
    assert len(rows) == 6


def test_expired_approval_and_refused_override_are_exceptions(scenario, carl):
    from datetime import timedelta

    s = scenario
    d = s.stages["D"]
    stale = s.gates["D"].approvals.get(user=s.people["approver"])
    stale.expires_at = d.started_at - timedelta(minutes=1)
    stale.save(update_fields=["expires_at"])
    audit.record(
        s.people["developer"],
        "gate.override",
        s.gates["D"],
        outcome="denied",
        rule="permission",
        message="dana may not override gates of production",
    )
    _, _, doc = export(carl, "json", exceptions_only="true")
    assert ids(doc["changes"]) == [f"CHG-{s.stages[k].pk}" for k in "ABCD"]
    row = doc["changes"][3]
    assert row["exceptions"] == ["refused-override", "expired-approval"]
    assert row["separation_of_duties"] == "ok"  # a refused override is not an SoD finding
    kinds = {e["kind"]: e for e in doc["exceptions"]}
    assert kinds["refused-override"]["detail"] == (
        "override attempt refused (permission): dana — dana may not override gates of production"
    )
    assert kinds["expired-approval"]["actor"] == "zoë.ångström"
    assert doc["header"]["rows"]["exceptions"] == len(doc["exceptions"]) == 7


def test_an_approval_by_the_requester_is_flagged(scenario, carl):
    from .test_reports_support import _approve

    s = scenario
    _approve(s.gates["E"], s.people["superuser"], s.stages["E"].started_at, "sre")
    _, _, doc = export(carl, "json", environment="staging")
    assert doc["changes"][0]["separation_of_duties"] == "VIOLATION: approved by the requester admin"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"environment": "prod\x00uction"}, "environment"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "from"),
        ({"pipeline": "x" * 500}, "pipeline"),
    ],
)
def test_hostile_filters_are_400_not_500(people, params, parameter):
    response = get(people["compliance-manager"], **params)
    assert response.status_code == 400 and response.json()["parameter"] == parameter


def test_edge_dates_and_an_unencoded_offset(scenario, carl):
    _, _, doc = export(carl, "json", **{"from": "2026-01-07T10:01:00 01:00", "to": "9999-12-31"})
    assert doc["header"]["filters"]["from"] == "2026-01-07T09:01:00Z"
    assert ids(doc["changes"]) == [f"CHG-{scenario.stages[k].pk}" for k in "BCDE"]


def test_under_asgi_the_stream_is_an_async_iterator(scenario, carl):
    """Django would read a synchronous iterator to the end before sending under ASGI; the
    export hands it an async one that passes each part on as it is made, the header first."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    client = AsyncClient()
    client.force_login(carl)
    response = async_to_sync(client.get)(URL, {**PERIOD, "format": "csv"})
    assert response.status_code == 200 and response.is_async

    async def collect():
        return [part async for part in response.streaming_content]

    parts = async_to_sync(collect)()
    assert parts[0].startswith("\ufeff#,Clearway change report".encode())
    assert b"## changes" not in parts[0]  # the evidence header goes out on its own
    doc = parse_csv(b"".join(parts))
    assert len(doc["changes"]) == 5


def test_the_async_adapter_batches_and_closes():
    import asyncio

    from governance.api_reports import _aiter

    closed = []

    def gen():
        try:
            yield b"header"
            for _ in range(10):
                yield b"x" * 40
        finally:
            closed.append(True)

    async def first_two():
        it = _aiter(gen())
        out = [await it.__anext__(), await it.__anext__()]
        await it.aclose()
        return out

    assert asyncio.run(first_two()) == [b"header", b"x" * 40]
    assert closed == [True]


def test_rows_say_whether_the_deployment_ran_sandboxed_and_which_secrets_it_got(scenario, carl):
    from orchestrator.models import Run, StepRun

    _, _, doc = export(carl, "json")
    first = doc["changes"][0]
    assert first["sandboxed"] is True and first["secrets"] == []
    stage = StageRun.objects.get(pk=int(first["change_id"].removeprefix("CHG-")))
    Run.objects.filter(pk=stage.run_id).update(sandboxed=False)
    StepRun.objects.create(
        stage=stage,
        name="ship",
        position=9,
        secrets=[{"name": "DB_PASSWORD", "version": 3, "scope": "production"}],
    )
    _, _, doc = export(carl, "json")
    row = next(r for r in doc["changes"] if r["change_id"] == first["change_id"])
    assert row["sandboxed"] is False
    assert row["secrets"] == [{"step": "ship", "name": "DB_PASSWORD", "version": 3}]
    _, text, _ = export(carl, "csv")
    assert b"ship: DB_PASSWORD v3" in text

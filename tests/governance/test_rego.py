"""Tests for the Rego policy adapter (governance/rego.py) and its isolated evaluators.

Plain pytest, no Django:
    .venv/bin/python -m pytest -p no:django tests/governance/test_rego.py -q
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from governance import rego
from governance.models import Environment

ROOT = Path(__file__).resolve().parents[2]
DEMO = rego.demo_policies()
DEMO_BY_NAME = {p["name"]: p for p in DEMO}
EXAMPLE_INPUT = DEMO_BY_NAME["freeze"]["tests"][0]["input"]

SIMPLE = """package clearway.simple

import rego.v1

deny contains msg if {
	input.run.parameters.fail
	msg := sprintf("run %v asked to fail", [input.run.number])
}

warn contains "no branch given" if {
	not input.run.parameters.branch
}
"""

# Burns CPU well past any timeout used here, with little memory.
SLOW = """package clearway.slow

import rego.v1

n := count([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000)])

deny contains "slow" if n > 0
"""


@pytest.fixture(autouse=True, scope="module")
def _pool():
    rego.shutdown_pool()
    yield
    rego.shutdown_pool()


def example(**changes) -> dict:
    doc = copy.deepcopy(EXAMPLE_INPUT)
    for path, value in changes.items():
        target = doc
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return doc


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    """Until the process is gone or a zombie (it is our child: Popen reaps it later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not die")


# --- demo policies -----------------------------------------------------------------------


def test_all_demo_policies_are_shipped():
    assert {p["name"] for p in DEMO} == {
        "prod-approvals",
        "freeze",
        "change-window",
        "tests-passed",
        "main-branch",
        "plan-no-open-ingress",
        "plan-stateful-destroy",
        "plan-required-tags",
        "plan-max-destroy",
        "plan-required",
    }
    levels = {p["name"]: p["enforcement"] for p in DEMO}
    assert levels == {
        "prod-approvals": "hard-mandatory",
        "freeze": "hard-mandatory",
        "change-window": "soft-mandatory",
        "tests-passed": "hard-mandatory",
        "main-branch": "advisory",
        "plan-no-open-ingress": "hard-mandatory",
        "plan-stateful-destroy": "hard-mandatory",
        "plan-required-tags": "soft-mandatory",
        "plan-max-destroy": "hard-mandatory",
        "plan-required": "hard-mandatory",
    }
    for policy in DEMO:
        assert policy["tests"], policy["name"]
        assert policy["title"] and policy["description"]


@pytest.mark.parametrize("name", sorted(DEMO_BY_NAME))
def test_demo_policy_compiles_and_its_cases_pass(name):
    policy = DEMO_BY_NAME[name]
    rego.compile_policy(policy["source"])
    report = rego.run_test_cases(policy["source"], policy["tests"])
    failed = [r for r in report if not r["passed"]]
    assert not failed, failed
    assert [r["name"] for r in report] == [c["name"] for c in policy["tests"]]


def test_demo_test_inputs_follow_the_input_schema():
    for policy in DEMO:
        for case in policy["tests"]:
            doc = case["input"]
            if doc["now"].endswith("Z"):  # the deliberately wrong one
                doc = {**doc, "now": rego.render_time(doc["now"])}
            jsonschema.validate(doc, rego.INPUT_SCHEMA)


def test_gate_with_all_demo_policies_in_one_round_trip():
    policies = [(p["name"], p["source"]) for p in DEMO]
    bad = example(
        environment__in_freeze=True,
        now="2026-12-22T10:00:00+00:00",
        approvals=[],
        run__parameters={"branch": "hotfix"},
        environment__in_change_window=False,
    )
    decisions = dict(zip(DEMO_BY_NAME, rego.evaluate_many(policies, bad), strict=True))
    assert decisions["freeze"].result == "deny"
    assert decisions["prod-approvals"].result == "deny"
    assert decisions["change-window"].result == "deny"
    assert decisions["tests-passed"].result == "pass"
    assert decisions["main-branch"].result == "warn"
    assert decisions["main-branch"].warn == ["run #42 deploys branch hotfix, not main"]
    good = rego.evaluate_many(policies, EXAMPLE_INPUT)
    assert [d.result for d in good] == ["pass"] * len(policies)
    assert all(d.duration_ms >= 0 and d.error is None for d in good)


# --- compile checks ----------------------------------------------------------------------


def test_syntax_error_reports_line_and_column_where_opa_does():
    # OPA's parser reports an unclosed `[` where it meets the `}` that cannot close it.
    source = 'package clearway.broken\n\ndeny contains msg if {\n  msg := "x"\n  x := [1,\n}\n'
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    first = info.value.errors[0]
    assert (first.file, first.line, first.column) == ("policy.rego", 6, 1)
    assert first.message == "rego_parse_error: unexpected } token"
    assert "line 6, column 1" in str(info.value)


def test_error_columns_count_characters_after_non_ascii_text():
    source = 'package a\n# héllo wörld ✓✓✓\ndeny contains msg if {\n  msg := "é" + )\n}\n'
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    first = info.value.errors[0]
    assert (first.line, first.column) == (4, 16)
    assert first.message == "rego_parse_error: unexpected ) token"


def test_error_columns_after_tab_indentation():
    source = "package a\n\ndeny contains msg if {\n\tmsg := 1 + )\n}\n"
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    assert (info.value.errors[0].line, info.value.errors[0].column) == (4, 13)


@pytest.mark.parametrize(
    "source",
    [
        'package a\n\ndeny[msg] {\n  input.x\n  msg := "x"\n}\n',
        'package a\n\nwarn[msg] if {\n  msg := "x"\n}\n',
    ],
)
def test_rego_v0_rule_heads_are_refused_with_the_v1_form(source):
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    err = info.value.errors[0]
    assert (err.line, err.column) == (3, 1)
    assert "v0" in err.message
    assert "contains msg if { ... }" in err.message


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ('package a\ndeny := {"x"}\n', "single-value"),
        ("package a\ndefault deny := false\ndeny if input.x\n", "single-value"),
        ('package a\nwarn contains "w" if true\n  deny := {"x"} if input.q\n', "single-value"),
        ("package a\ndeny contains 1 if true\n", "contains 1"),
        ('package a\ndeny contains {"a": 1} if true\n', "set of strings"),
        ('package a\nwarn contains ["w"] if true\n', "set of strings"),
    ],
)
def test_deny_or_warn_that_is_not_a_set_of_strings_is_refused(source, needle):
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    assert needle in str(info.value)
    assert "deny contains msg if { ... }" in str(info.value)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ('deny contains "x" if true\n', "missing package"),
        ("", "empty"),
        ("package a\nallow := true\n", "neither `deny` nor `warn`"),
        (
            "package a\ndeny contains msg if {\n  msg := foo.bar(1)\n}\n",
            "line 3, column 10: rego_type_error: undefined function foo.bar",
        ),
        ('package a\ndeny contains msg if {\n  msg := to_number("x1")\n}\n', "probe input"),
    ],
)
def test_other_refusals(source, needle):
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    assert needle in str(info.value)


def test_compile_accepts_a_warn_only_policy_and_comments_mentioning_v0():
    rego.compile_policy('package a\n# old style was deny[msg] { ... }\nwarn contains "w" if true\n')


# --- evaluation and fail-closed behaviour ------------------------------------------------


def test_decision_results():
    assert rego.evaluate(SIMPLE, example()).result == "pass"
    warned = rego.evaluate(SIMPLE, example(run__parameters={}))
    assert (warned.result, warned.warn, warned.deny) == ("warn", ["no branch given"], [])
    denied = rego.evaluate(SIMPLE, example(run__parameters={"fail": True}), name="simple")
    assert denied.result == "deny"
    assert denied.deny == ["run 42 asked to fail"]
    assert denied.warn == ["no branch given"]
    assert not denied.allowed and warned.allowed


def test_policy_errors_are_denies_not_exceptions():
    decision = rego.evaluate("package a\ndeny := true\n", {}, name="bad")
    assert decision.result == "error"
    assert decision.deny == [decision.error]
    assert decision.error.startswith("policy bad could not be evaluated:")


def test_builtin_errors_fail_closed_instead_of_going_undefined():
    source = 'package a\ndeny contains "too many" if to_number(input.replicas) > 10\n'
    assert rego.evaluate(source, {"replicas": "20"}).result == "deny"
    assert rego.evaluate(source, {"replicas": "3"}).result == "pass"
    decision = rego.evaluate(source, {"replicas": "lots"})
    assert decision.result == "error"
    assert "invalid syntax" in decision.error


def test_non_string_message_at_run_time_is_an_error():
    source = "package a\nimport rego.v1\ndeny contains input.reason if input.reason\n"
    assert rego.evaluate(source, {"reason": "because"}).deny == ["because"]
    decision = rego.evaluate(source, {"reason": 7})
    assert decision.result == "error"
    assert "set of strings" in decision.error


def test_times_with_an_offset_or_z_both_parse():
    source = (
        "package a\nimport rego.v1\n"
        'deny contains "late" if time.parse_rfc3339_ns(input.now) > '
        'time.parse_rfc3339_ns("2026-01-01T00:00:00+00:00")\n'
    )
    when = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    assert rego.render_time(when) == "2026-11-28T10:00:00+00:00"
    assert rego.evaluate(source, {"now": rego.render_time(when)}).deny == ["late"]
    assert rego.evaluate(source, {"now": "2026-11-28T10:00:00Z"}).deny == ["late"]
    bad = rego.evaluate(source, {"now": "28/11/2026"})
    assert bad.result == "error"
    assert "parsing time" in bad.error


def test_render_time_normalises_to_utc():
    cet = dt.timezone(dt.timedelta(hours=1))
    assert rego.render_time(dt.datetime(2026, 11, 28, 11, 0, tzinfo=cet)) == (
        "2026-11-28T10:00:00+00:00"
    )
    assert rego.render_time(dt.datetime(2026, 11, 28, 10, 0)) == "2026-11-28T10:00:00+00:00"
    assert rego.render_time("2026-11-28T10:00:00Z") == "2026-11-28T10:00:00+00:00"
    assert rego.render_time(dt.datetime(2026, 11, 28, 10, 0, 0, 1500, tzinfo=dt.UTC)) == (
        "2026-11-28T10:00:00.001500+00:00"
    )
    assert rego.render_time(dt.date(2026, 11, 28)) == "2026-11-28T00:00:00+00:00"
    with pytest.raises(TypeError):
        rego.render_time(1234)


def test_input_hash_is_canonical():
    a = {"b": 1, "a": {"y": "é", "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": "é"}, "b": 1}
    assert rego.input_hash(a) == rego.input_hash(b)
    assert rego.input_hash(a) != rego.input_hash({**a, "b": 2})
    import hashlib

    canonical = '{"a":{"x":[1,2],"y":"é"},"b":1}'.encode()
    assert rego.input_hash(a) == hashlib.sha256(canonical).hexdigest()


def test_evaluate_many_keeps_order_and_isolates_bad_policies():
    policies = [
        ("simple", SIMPLE),
        ("broken", "package b\ndeny contains msg if {\n"),
        ("freeze", DEMO_BY_NAME["freeze"]["source"]),
    ]
    decisions = rego.evaluate_many(policies, example(run__parameters={"fail": True}))
    assert [d.result for d in decisions] == ["deny", "error", "pass"]
    assert "policy broken could not be evaluated" in decisions[1].error
    assert "line" in decisions[1].error


def test_a_timeout_in_the_middle_of_a_batch_does_not_lose_the_rest():
    policies = [("simple", SIMPLE), ("slow", SLOW), ("freeze", DEMO_BY_NAME["freeze"]["source"])]
    decisions = rego.evaluate_many(policies, example(), timeout=0.5)
    assert [d.result for d in decisions] == ["pass", "error", "pass"]
    assert decisions[1].error == "policy slow could not be evaluated: timeout after 0.5 s"


def test_an_evaluator_that_cannot_start_denies_everything(monkeypatch, tmp_path):
    rego.shutdown_pool()
    monkeypatch.setattr(rego, "WORKER_PATH", tmp_path / "missing_worker.py")
    decisions = rego.evaluate_many([("a", SIMPLE), ("b", SIMPLE)], example())
    assert [d.result for d in decisions] == ["error", "error"]
    assert all("evaluator could not start" in d.error for d in decisions)
    with pytest.raises(rego.PolicyCompileError, match="could not be compiled"):
        rego.compile_policy(SIMPLE)
    monkeypatch.undo()
    rego.shutdown_pool()
    assert rego.evaluate(SIMPLE, example()).result == "pass"


def test_non_json_input_fails_closed():
    decision = rego.evaluate(SIMPLE, {"when": dt.datetime.now()})
    assert decision.result == "error"
    assert "not JSON" in decision.error


def test_unknown_rule_in_run_test_cases_reports_mismatches():
    report = rego.run_test_cases(
        SIMPLE,
        [
            {"name": "right", "input": example(), "expect": {"deny": [], "warn": 0}},
            {"name": "wrong", "input": example(), "expect": {"deny": ["nope"]}},
            {"name": "count", "input": example(run__parameters={}), "expect": {"warn": 2}},
        ],
    )
    assert [r["passed"] for r in report] == [True, False, False]
    assert "missing deny ['nope']" in report[1]["message"]
    assert "expected 2 warn" in report[2]["message"]
    broken = rego.run_test_cases("package a\ndeny[x] { x := 1 }\n", [{"name": "c", "input": {}}])
    assert broken[0]["passed"] is False
    assert "does not compile" in broken[0]["message"]


# --- resource guards -----------------------------------------------------------------------


def test_a_looping_policy_times_out_and_denies():
    started = time.monotonic()
    decision = rego.evaluate(SLOW, example(), name="slow", timeout=0.5)
    assert time.monotonic() - started < 5
    assert decision.result == "error"
    assert decision.deny == ["policy slow could not be evaluated: timeout after 0.5 s"]
    assert rego.evaluate(SIMPLE, example()).result == "pass"


def test_a_huge_value_hits_the_memory_limit_and_denies():
    source = (
        "package a\nimport rego.v1\n"
        'deny contains "big" if count(numbers.range(1, 1000000000)) > 0\n'
    )
    decision = rego.evaluate(source, example(), name="huge", timeout=20)
    assert decision.result == "error"
    assert decision.error == "policy huge could not be evaluated: memory limit exceeded (512 MiB)"
    assert rego.evaluate(SIMPLE, example()).result == "pass"


def test_a_big_comprehension_is_stopped():
    source = (
        "package a\nimport rego.v1\n"
        'xs := [sprintf("%d", [i]) | some i in numbers.range(1, 100000000)]\n'
        'deny contains "big" if count(xs) > 0\n'
    )
    decision = rego.evaluate(source, example(), name="compr", timeout=1)
    assert decision.result == "error"
    assert re.search(r"timeout after 1 s|memory limit exceeded", decision.error)


def test_recursion_is_an_error_not_a_pass():
    source = (
        "package a\nimport rego.v1\n"
        "f(n) := 0 if n <= 0\n"
        "f(n) := f(n - 1) + 1 if n > 0\n"
        'deny contains "deep" if f(100000) > 0\n'
    )
    decision = rego.evaluate(source, example(), name="rec")
    assert decision.result == "error"
    assert "rego_recursion_error: rule data.a.f is recursive" in decision.error


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_evaluator_killed_mid_evaluation_denies_and_is_replaced(sig):
    rego.evaluate(SIMPLE, example())  # make sure an evaluator is running
    assert rego.pool_pids()
    result = {}

    def run():
        result["decision"] = rego.evaluate(SLOW, example(), name="victim", timeout=10)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.4)
    victims = rego.pool_pids()
    for pid in victims:
        os.kill(pid, sig)
    thread.join(15)
    decision = result["decision"]
    assert decision.result == "error"
    # Go's runtime handles a SIGSEGV sent from outside and dies of SIGQUIT instead.
    shown = int(signal.SIGQUIT) if sig == signal.SIGSEGV else int(sig)
    assert decision.error == (
        f"policy victim could not be evaluated: evaluator crashed (signal {shown})"
    )
    after = rego.evaluate(SIMPLE, example(run__parameters={"fail": True}))
    assert after.result == "deny"
    assert not set(rego.pool_pids()) & set(victims)


def test_evaluator_killed_while_idle_denies_once_then_recovers():
    rego.evaluate(SIMPLE, example())
    victims = rego.pool_pids()
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    for pid in victims:
        wait_dead(pid)
    decision = rego.evaluate(SIMPLE, example(), name="unlucky")
    assert decision.result == "error"
    assert decision.error == "policy unlucky could not be evaluated: evaluator crashed (signal 9)"
    assert rego.evaluate(SIMPLE, example()).result == "pass"


def test_evaluator_environment_is_scrubbed(monkeypatch):
    rego.shutdown_pool()  # new evaluators are started with the parent's current environment
    monkeypatch.setenv("CLEARWAY_TEST_SECRET", "hunter2")
    source = (
        "package a\nimport rego.v1\n"
        "deny contains name if some name, _ in opa.runtime().env\n"
        "warn contains value if some _, value in opa.runtime().env\n"
    )
    decision = rego.evaluate(source, {})
    assert "CLEARWAY_TEST_SECRET" not in decision.deny
    assert "hunter2" not in decision.warn
    assert set(decision.deny) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE"}


def test_pool_is_thread_safe():
    policies = [(p["name"], p["source"]) for p in DEMO]
    errors = []

    def worker(i):
        try:
            doc = example(run__parameters={"branch": f"b{i}"})
            decisions = rego.evaluate_many(policies, doc)
            assert [d.result for d in decisions] == [
                "warn" if n == "main-branch" else "pass" for n in DEMO_BY_NAME
            ]
            assert decisions[list(DEMO_BY_NAME).index("main-branch")].warn == [
                f"run #42 deploys branch b{i}, not main"
            ]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert 1 <= len(rego.pool_pids()) <= rego.DEFAULT_POOL_SIZE


def test_pool_works_after_fork():
    rego.evaluate(SIMPLE, example())
    parent_pids = rego.pool_pids()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_end)
            decision = rego.evaluate(SIMPLE, example(run__parameters={"fail": True}))
            pids = rego.pool_pids()
            ok = decision.result == "deny" and pids and not set(pids) & set(parent_pids)
            os.write(write_end, json.dumps({"ok": bool(ok), "pids": pids}).encode())
            rego.shutdown_pool()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        report = json.loads(fh.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["ok"], report
    assert rego.pool_pids() == parent_pids
    assert rego.evaluate(SIMPLE, example()).result == "pass"


# --- the evaluator entry point -----------------------------------------------------------


@pytest.mark.parametrize("how", ["module", "path"])
def test_worker_starts_from_any_cwd_without_django(how, tmp_path):
    if how == "module":
        cmd, cwd = [sys.executable, "-m", "governance.rego_worker"], ROOT
    else:
        cmd, cwd = [sys.executable, str(ROOT / "governance" / "rego_worker.py")], tmp_path
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        input=b'{"id": 1, "op": "ping"}\n',
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert lines[0]["ready"] is True
    assert lines[1] == {"id": 1, "pong": True, "django_loaded": False}


def test_the_web_process_does_not_load_opa():
    code = "import sys, governance.rego; print('opa_bindings' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "False", out.stderr


# --- environment flags and the input document ---------------------------------------------


def test_environment_flags():
    """The freeze and change-window rules live on the Environment model."""
    freeze = [{"start": "2026-12-20T00:00:00+00:00", "end": "2027-01-04T00:00:00+00:00"}]
    weekdays = [{"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"}]
    utc = dt.UTC

    def flags(when, windows=weekdays, tz="Europe/Amsterdam"):
        env = Environment(timezone=tz, freeze_windows=freeze, change_windows=windows)
        return {
            "in_freeze": env.freeze_at(when) is not None,
            "in_change_window": env.in_change_window(when),
        }

    # Tuesday 07:30 UTC is 08:30 in Amsterdam (CET, UTC+1)
    assert flags(dt.datetime(2026, 11, 24, 7, 30, tzinfo=utc)) == {
        "in_freeze": False,
        "in_change_window": True,
    }
    assert flags(dt.datetime(2026, 11, 24, 6, 30, tzinfo=utc))["in_change_window"] is False
    assert flags(dt.datetime(2026, 11, 28, 10, 0, tzinfo=utc))["in_change_window"] is False
    assert flags(dt.datetime(2026, 12, 20, 0, 0, tzinfo=utc))["in_freeze"] is True
    assert flags(dt.datetime(2027, 1, 4, 0, 0, tzinfo=utc))["in_freeze"] is False
    assert flags(dt.datetime(2026, 11, 28, 3, 0, tzinfo=utc), windows=[])["in_change_window"]
    overnight = [{"days": [4], "start": "22:00", "end": "02:00"}]  # Friday night
    assert flags(dt.datetime(2026, 11, 28, 1, 0, tzinfo=utc), overnight, "UTC")["in_change_window"]
    assert not flags(dt.datetime(2026, 11, 27, 21, 0, tzinfo=utc), overnight, "UTC")[
        "in_change_window"
    ]


def _json_blocks(markdown: str) -> list:
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", markdown, re.S)]


def test_docs_show_the_schema_and_a_valid_full_example():
    text = (ROOT / "docs" / "policy-input.md").read_text(encoding="utf-8")
    blocks = _json_blocks(text)
    schema = next(b for b in blocks if b.get("$schema"))
    assert schema == rego.INPUT_SCHEMA
    full = next(b for b in blocks if b.get("schema_version") == 2 and "approvals" in b)
    jsonschema.validate(full, rego.INPUT_SCHEMA)
    assert full == EXAMPLE_INPUT
    jsonschema.validate(rego.PROBE_INPUT, rego.INPUT_SCHEMA)


def test_a_batch_request_is_answered_in_one_line():
    request = {
        "id": 7,
        "op": "evaluate",
        "batch": True,
        "input": example(run__parameters={"fail": True}),
        "policies": [{"name": "simple", "source": SIMPLE}, {"name": "broken", "source": "x"}],
    }
    proc = subprocess.run(
        [sys.executable, "-I", str(ROOT / "governance" / "rego_worker.py")],
        input=(json.dumps(request) + "\n").encode(),
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    assert len(lines) == 2 and lines[0]["ready"] is True
    (first, second) = lines[1]["results"]
    assert lines[1]["id"] == 7
    assert (first["deny"], first["warn"], first["error"]) == (
        ["run 42 asked to fail"],
        ["no branch given"],
        None,
    )
    assert "missing package declaration" in second["error"]

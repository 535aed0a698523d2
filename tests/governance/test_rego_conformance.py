"""Conformance of Clearway's policy engine with Open Policy Agent.

Every expected value below is written from OPA's documentation (the policy reference of
built-in functions, the policy language page, conftest's documentation), not computed by the
engine under test. Each case asserts the exact deny and warn sets. The first group covers
each way the previous engine (rego-cpp) differed from OPA (issue 13, "Why"); the rest covers
the built-ins and language features policy authors use.

Plain pytest, no Django:
    .venv/bin/python -m pytest -p no:django tests/governance/test_rego_conformance.py -q
"""

from __future__ import annotations

import pytest

from governance import rego


@pytest.fixture(autouse=True, scope="module")
def _pool():
    rego.shutdown_pool()
    yield
    rego.shutdown_pool()


def policy(body: str) -> str:
    return "package clearway.conformance\n\nimport rego.v1\n\n" + body.strip() + "\n"


# (id, rules, input, expected deny, expected warn)
CASES = [
    # --- where rego-cpp differed from OPA ---------------------------------------------------
    (
        "some-i-call-argument",
        """
deny contains msg if {
	some i
	endswith(input.a[i], "b")
	msg := sprintf("item %d ends with b", [i])
}
""",
        {"a": ["xa", "xb", "cb"]},
        {"item 1 ends with b", "item 2 ends with b"},
        set(),
    ),
    (
        "semver-compare-minimum-version",
        """
deny contains "1.10.0 sorts before 1.9.3" if semver.compare("1.10.0", "1.9.3") != 1
deny contains msg if {
	semver.compare(input.version, "1.9.0") < 0
	msg := sprintf("version %s is older than 1.9.0", [input.version])
}
warn contains "same version" if semver.compare("2.0.0", "2.0.0") == 0
warn contains "1.9.3 before 1.10.0" if semver.compare("1.9.3", "1.10.0") == -1
""",
        {"version": "1.8.12"},
        {"version 1.8.12 is older than 1.9.0"},
        {"same version", "1.9.3 before 1.10.0"},
    ),
    (
        "semver-newer-minor-passes",
        """
deny contains msg if {
	semver.compare(input.version, "1.9.0") < 0
	msg := sprintf("version %s is older than 1.9.0", [input.version])
}
""",
        {"version": "1.10.0"},
        set(),
        set(),
    ),
    (
        "time-diff",
        # [years, months, days, hours, minutes, seconds] between two instants
        """
deny contains sprintf("%v", [d]) if {
	d := time.diff(
		time.parse_rfc3339_ns("2021-03-04T05:06:07Z"),
		time.parse_rfc3339_ns("2020-01-01T00:00:00Z"),
	)
}
""",
        {},
        {"[1, 2, 3, 5, 6, 7]"},
        set(),
    ),
    (
        "object-union-is-recursive",
        """
merged := object.union({"a": {"b": 1, "c": 2}, "x": 1}, {"a": {"b": 3}, "y": 2})
deny contains "nested merge" if merged == {"a": {"b": 3, "c": 2}, "x": 1, "y": 2}
""",
        {},
        {"nested merge"},
        set(),
    ),
    (
        "sort-of-a-set-is-an-array",
        """
sorted := sort({"b", "c", "a"})
deny contains "array" if is_array(sorted)
deny contains concat(",", sorted) if true
""",
        {},
        {"array", "a,b,c"},
        set(),
    ),
    (
        "time-format",
        # RFC 3339 with the fraction trimmed (no ".000000000"); a layout and a zone on request
        """
deny contains time.format(1700000000000000000) if true
deny contains time.format([1700000000000000000, "UTC", "2006-01-02"]) if true
deny contains time.format(1700000000500000000) if true
""",
        {},
        {"2023-11-14T22:13:20Z", "2023-11-14", "2023-11-14T22:13:20.5Z"},
        set(),
    ),
    (
        "urlquery-encode",
        """
deny contains urlquery.encode("a b&c=d/é") if true
deny contains urlquery.encode_object({"q": "x y", "n": "1"}) if true
deny contains urlquery.decode("a%20b+c") if true
""",
        {},
        {"a+b%26c%3Dd%2F%C3%A9", "n=1&q=x+y", "a b c"},
        set(),
    ),
    (
        "sprintf-s-of-object-and-array",
        """
deny contains sprintf("labels: %s", [{"team": "payments"}]) if true
deny contains sprintf("hosts: %s", [["a", "b"]]) if true
deny contains sprintf("%v and %v", [[1, 2], {"k": true}]) if true
""",
        {},
        {'labels: {"team": "payments"}', 'hosts: ["a", "b"]', '[1, 2] and {"k": true}'},
        set(),
    ),
    (
        "sprintf-q-and-widths",
        """
deny contains sprintf("image %q is not pinned (%s)", ["nginx", "latest"]) if true
deny contains sprintf("|%-8s|%8s|", ["left", "right"]) if true
deny contains sprintf("|%5d|%-5d|%05d|", [42, 42, 42]) if true
""",
        {},
        {'image "nginx" is not pinned (latest)', "|left    |   right|", "|   42|42   |00042|"},
        set(),
    ),
    (
        "any-element-in-call-arguments",
        """
deny contains msg if {
	endswith(input.services[_].image, ":latest")
	msg := "a service uses a :latest image"
}
deny contains msg if {
	some s in input.services
	endswith(s.image, ":latest")
	msg := sprintf("%s uses %s", [s.name, s.image])
}
""",
        {"services": [{"name": "web", "image": "nginx:latest"}, {"name": "db", "image": "pg:16"}]},
        {"a service uses a :latest image", "web uses nginx:latest"},
        set(),
    ),
    (
        "set-lookup-with-a-variable-key",
        """
deny contains msg if {
	review := {"update", "delete"}
	some action in input.actions
	review[action]
	msg := sprintf("%s needs a review", [action])
}
""",
        {"actions": ["create", "update", "delete", "read"]},
        {"update needs a review", "delete needs a review"},
        set(),
    ),
    (
        "net-cidr",
        """
deny contains msg if {
	some rule in input.ingress
	net.cidr_contains(rule.cidr, "8.8.8.8")
	msg := sprintf("ingress %s is open to the internet", [rule.cidr])
}
deny contains "contains" if net.cidr_contains("10.0.0.0/8", "10.1.2.3")
deny contains "intersects" if net.cidr_intersects("10.0.0.0/8", "10.255.0.0/16")
deny contains "disjoint" if not net.cidr_intersects("10.0.0.0/8", "192.168.0.0/16")
deny contains concat(",", sort(net.cidr_merge(["192.0.128.0/24", "192.0.129.0/24"]))) if true
deny contains concat(",", sort(net.cidr_expand("192.168.0.0/30"))) if true
warn contains "valid" if net.cidr_is_valid("0.0.0.0/0")
warn contains "invalid" if not net.cidr_is_valid("10.0.0.0/33")
""",
        {"ingress": [{"cidr": "0.0.0.0/0"}, {"cidr": "10.0.0.0/16"}]},
        {
            "ingress 0.0.0.0/0 is open to the internet",
            "contains",
            "intersects",
            "disjoint",
            "192.0.128.0/23",
            "192.168.0.0,192.168.0.1,192.168.0.2,192.168.0.3",
        },
        {"valid", "invalid"},
    ),
    (
        "trace-and-print-do-not-change-the-result",
        """
deny contains msg if {
	trace("checking the branch")
	print("branch is", input.branch)
	input.branch != "main"
	msg := sprintf("branch %s", [input.branch])
}
""",
        {"branch": "dev"},
        {"branch dev"},
        set(),
    ),
    (
        "time-parse-rfc3339-with-z",
        """
deny contains sprintf("%d", [time.parse_rfc3339_ns("2026-01-01T00:00:00Z")]) if true
deny contains "same instant" if {
	plus_one := time.parse_rfc3339_ns("2026-01-01T01:00:00+01:00")
	plus_one == time.parse_rfc3339_ns("2026-01-01T00:00:00Z")
}
""",
        {},
        {"1767225600000000000", "same instant"},
        set(),
    ),
    # --- built-ins policy authors use ---------------------------------------------------------
    (
        "regex",
        """
deny contains "match" if regex.match(`^v[0-9]+\\.[0-9]+$`, "v1.12")
deny contains "no match" if not regex.match(`^v[0-9]+$`, "version1")
deny contains regex.replace("a-b-c", "-", "_") if true
deny contains concat("|", regex.split(`,\\s*`, "a, b,c")) if true
deny contains concat("|", regex.find_n(`[0-9]+`, "a1b22c333", 2)) if true
""",
        {},
        {"match", "no match", "a_b_c", "a|b|c", "1|22"},
        set(),
    ),
    (
        "glob",
        """
deny contains "subdomain" if glob.match("*.example.com", ["."], "api.example.com")
deny contains "one label only" if not glob.match("*.example.com", ["."], "a.b.example.com")
deny contains "super glob" if glob.match("**.example.com", ["."], "a.b.example.com")
deny contains "character class" if glob.match("release-[0-9]*", [], "release-42")
""",
        {},
        {"subdomain", "one label only", "super glob", "character class"},
        set(),
    ),
    (
        "time",
        """
ns := time.parse_rfc3339_ns("2026-11-24T07:30:00Z")
deny contains time.weekday(ns) if true
deny contains sprintf("%v", [time.date(ns)]) if true
deny contains sprintf("%v", [time.clock([ns, "Europe/Amsterdam"])]) if true
deny contains time.format(time.add_date(ns, 0, 1, 7)) if true
day := time.parse_ns("2006-01-02", "2026-11-24")
deny contains "parse_ns" if day == time.parse_rfc3339_ns("2026-11-24T00:00:00Z")
deny contains "duration" if time.parse_duration_ns("1h30m") == 5400000000000
""",
        {},
        {
            "Tuesday",
            "[2026, 11, 24]",
            "[8, 30, 0]",
            "2026-12-31T07:30:00Z",
            "parse_ns",
            "duration",
        },
        set(),
    ),
    (
        "semver",
        """
deny contains "valid" if semver.is_valid("1.2.3-rc.1+build.5")
deny contains "not semver" if not semver.is_valid("1.2")
deny contains "prerelease sorts first" if semver.compare("1.0.0-alpha", "1.0.0") == -1
""",
        {},
        {"valid", "not semver", "prerelease sorts first"},
        set(),
    ),
    (
        "json-and-yaml",
        """
deny contains json.marshal({"b": 1, "a": [true, null]}) if true
deny contains sprintf("%v", [json.unmarshal(`{"x": [1, 2]}`).x[1]]) if true
deny contains "json valid" if json.is_valid(`{"a": 1}`)
deny contains "yaml" if yaml.unmarshal("a: 1\\nb: [web, db]\\n") == {"a": 1, "b": ["web", "db"]}
deny contains "yaml valid" if not yaml.is_valid("a: [")
deny contains sprintf("%v", [json.filter({"a": {"b": 1, "c": 2}, "d": 3}, ["a/b"])]) if true
""",
        {},
        {'{"a":[true,null],"b":1}', "2", "json valid", "yaml", "yaml valid", '{"a": {"b": 1}}'},
        set(),
    ),
    (
        "strings",
        """
deny contains concat("-", ["a", "b", "c"]) if true
deny contains upper("abc") if true
deny contains lower("ABC") if true
deny contains trim_space("  padded  ") if true
deny contains substring("hello", 1, 3) if true
deny contains sprintf("%d", [indexof("hello", "l")]) if true
deny contains replace("a.b.c", ".", "/") if true
deny contains strings.replace_n({"{name}": "web", "{env}": "prod"}, "{name}-{env}") if true
deny contains trim_prefix(trim_suffix("v1.2.3-dirty", "-dirty"), "v") if true
deny contains format_int(255, 16) if true
deny contains concat("+", split("x,y", ",")) if true
deny contains "starts/ends/contains" if {
	startswith("release/1.8", "release/")
	endswith("image:latest", ":latest")
	contains("payments-api", "-api")
}
deny contains sprintf("%d", [strings.count("banana", "a")]) if true
""",
        {},
        {
            "a-b-c",
            "ABC",
            "abc",
            "padded",
            "ell",
            "2",
            "a/b/c",
            "web-prod",
            "1.2.3",
            "ff",
            "x+y",
            "starts/ends/contains",
            "3",
        },
        set(),
    ),
    (
        "objects",
        """
deny contains object.get(input, ["a", "b"], "default") if true
deny contains object.get(input, ["a", "missing"], "default") if true
deny contains concat(",", sort(object.keys({"x": 1, "y": 2}))) if true
deny contains sprintf("%v", [object.remove({"a": 1, "b": 2}, ["a"])]) if true
deny contains sprintf("%v", [object.filter({"a": 1, "b": 2, "c": 3}, {"a", "c"})]) if true
deny contains "subset" if object.subset({"a": 1, "b": {"c": 2}}, {"b": {"c": 2}})
""",
        {"a": {"b": "found"}},
        {"found", "default", "x,y", '{"b": 2}', '{"a": 1, "c": 3}', "subset"},
        set(),
    ),
    (
        "arrays-and-aggregates",
        """
deny contains sprintf("%v", [array.concat([1], [2, 3])]) if true
deny contains sprintf("%v", [array.slice([1, 2, 3, 4], 1, 3)]) if true
deny contains sprintf("%v", [array.reverse([1, 2, 3])]) if true
xs := [4, 5, 6]
deny contains sprintf("n=%d sum=%d max=%d min=%d", [count(xs), sum(xs), max(xs), min(xs)]) if true
""",
        {},
        {"[1, 2, 3]", "[2, 3]", "[3, 2, 1]", "n=3 sum=15 max=6 min=4"},
        set(),
    ),
    (
        "sets",
        """
# (inside brackets `[a | b]` would be an array comprehension, so bind the results first)
both := {1, 2} | {2, 3}
common := {1, 2} & {2, 3}
rest := {1, 2, 3} - {2}
deny contains sprintf("%v", [both]) if true
deny contains sprintf("%v", [common]) if true
deny contains sprintf("%v", [rest]) if true
deny contains sprintf("%v", [intersection({{1, 2}, {2, 3}})]) if true
deny contains sprintf("%v", [union({{1}, {2}})]) if true
""",
        {},
        {"{1, 2, 3}", "{2}", "{1, 3}", "{1, 2}"},
        set(),
    ),
    (
        "sprintf-verbs",
        """
deny contains sprintf("%.2f", [3.14159]) if true
deny contains sprintf("%x %X %o %b", [255, 255, 8, 5]) if true
deny contains sprintf("%v", [true]) if true
deny contains sprintf("%v%%", [50]) if true
deny contains sprintf("%s has %d replicas", ["web", 3]) if true
""",
        {},
        {"3.14", "ff FF 10 101", "true", "50%", "web has 3 replicas"},
        set(),
    ),
    # --- the language --------------------------------------------------------------------------
    (
        "every",
        """
all_limited if {
	every c in input.containers {
		c.limits.memory
	}
}
deny contains "a container has no memory limit" if not all_limited
warn contains "empty list passes every" if every x in [] { x == 1 }
""",
        {"containers": [{"limits": {"memory": "1Gi"}}, {"limits": {}}]},
        {"a container has no memory limit"},
        {"empty list passes every"},
    ),
    (
        "some-in-with-keys",
        """
deny contains msg if {
	some name, value in input.labels
	value == ""
	msg := sprintf("label %s is empty", [name])
}
deny contains msg if {
	some i, port in input.ports
	port < 1024
	msg := sprintf("port %d (#%d) is privileged", [port, i])
}
""",
        {"labels": {"team": "payments", "owner": ""}, "ports": [8080, 443]},
        {"label owner is empty", "port 443 (#1) is privileged"},
        set(),
    ),
    (
        "functions-with-else",
        """
size(n) := "large" if {
	n > 100
} else := "medium" if {
	n > 10
} else := "small"

deny contains sprintf("%d is %s", [n, size(n)]) if some n in input.values
""",
        {"values": [5, 50, 500]},
        {"5 is small", "50 is medium", "500 is large"},
        set(),
    ),
    (
        "default-rules",
        """
default level := "low"

level := "high" if input.critical

deny contains sprintf("level %s", [level]) if true
""",
        {"critical": False},
        {"level low"},
        set(),
    ),
    (
        "comprehensions",
        """
names := [s.name | some s in input.services; s.public]
owners := {s.owner | some s in input.services}
by_name := {s.name: s.owner | some s in input.services}
deny contains sprintf("public: %v", [names]) if count(names) > 0
deny contains sprintf("owners: %v", [owners]) if true
deny contains sprintf("web is owned by %s", [by_name.web]) if true
""",
        {
            "services": [
                {"name": "web", "owner": "alice", "public": True},
                {"name": "db", "owner": "alice", "public": False},
                {"name": "api", "owner": "bob", "public": True},
            ]
        },
        {'public: ["web", "api"]', 'owners: {"alice", "bob"}', "web is owned by alice"},
        set(),
    ),
    (
        "several-rules-and-helpers",
        """
is_prod if input.environment == "production"

approvers contains a.user if {
	some a in input.approvals
	a.decision == "approve"
}

deny contains "production needs two approvers" if {
	is_prod
	count(approvers) < 2
}

deny contains msg if {
	is_prod
	some u in approvers
	u == input.triggered_by
	msg := sprintf("%s approved their own run", [u])
}

warn contains "no approvals yet" if count(approvers) == 0
""",
        {
            "environment": "production",
            "triggered_by": "alice",
            "approvals": [
                {"user": "alice", "decision": "approve"},
                {"user": "bob", "decision": "reject"},
            ],
        },
        {"production needs two approvers", "alice approved their own run"},
        set(),
    ),
    # --- conftest's conventions ------------------------------------------------------------------
    (
        "conftest-rule-names",
        """
deny_latest contains msg if {
	some c in input.containers
	endswith(c.image, ":latest")
	msg := sprintf("%s uses :latest", [c.name])
}
violation contains {"msg": "root user", "details": {"container": c.name}} if {
	some c in input.containers
	c.user == "root"
}
violation_privileged contains {"msg": sprintf("%s is privileged", [c.name])} if {
	some c in input.containers
	c.privileged
}
warn_resources contains sprintf("%s has no limits", [c.name]) if {
	some c in input.containers
	not c.limits
}
deny contains {"msg": "an object with msg from deny"} if true
""",
        {
            "containers": [
                {"name": "web", "image": "nginx:latest", "user": "root", "privileged": True},
                {"name": "db", "image": "pg:16", "limits": {"cpu": 1}},
            ]
        },
        {"web uses :latest", "root user", "web is privileged", "an object with msg from deny"},
        {"web has no limits"},
    ),
]


@pytest.mark.parametrize(
    ("rules", "input_doc", "deny", "warn"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_opa_semantics(rules, input_doc, deny, warn):
    decision = rego.evaluate(policy(rules), input_doc, name="conformance")
    assert decision.error is None, decision.error
    assert set(decision.deny) == deny
    assert set(decision.warn) == warn
    assert len(decision.deny) == len(deny) and len(decision.warn) == len(warn)
    assert decision.result == ("deny" if deny else "warn" if warn else "pass")


def test_each_case_compiles_as_it_would_be_saved():
    for case in CASES:
        rego.compile_policy(policy(case[1]))


# --- broken policies are refused where OPA puts the error ---------------------------------


def refused(source: str) -> list[rego.PolicyError]:
    with pytest.raises(rego.PolicyCompileError) as info:
        rego.compile_policy(source)
    return info.value.errors


def test_a_stray_parenthesis_is_refused_at_its_position():
    errors = refused('package a\n\ndeny contains msg if {\n  msg := "x")\n}\n')
    assert [(e.file, e.line, e.column) for e in errors] == [("policy.rego", 4, 13)]
    assert errors[0].message.startswith("rego_parse_error: unexpected ) token")


def test_a_dangling_comparison_is_refused():
    # OPA reads on to the next token for the right-hand side and stops at the `}`
    errors = refused('package a\n\ndeny contains "x" if {\n  input.a ==\n}\n')
    assert [(e.line, e.column) for e in errors] == [(5, 1)]
    assert errors[0].message == "rego_parse_error: unexpected } token"


@pytest.mark.parametrize(
    ("body", "message", "line", "column"),
    [
        (
            'deny contains msg if {\n  msg := foo.bar("x")\n}',
            "rego_type_error: undefined function foo.bar",
            2,
            10,
        ),
        (
            "deny contains msg if {\n  input.x\n  msg := y\n}",
            "rego_unsafe_var_error: var y is unsafe",
            3,
            10,
        ),
        (
            'deny contains msg if {\n  x := 1\n  x := 2\n  msg := "m"\n}',
            "rego_compile_error: var x assigned above",
            3,
            3,
        ),
        (
            'deny contains msg if {\n  msg := concat(",", "not an array")\n}',
            "rego_type_error: concat: invalid argument(s)",
            2,
            10,
        ),
        (
            'x := 1\nx := 2\ndeny contains "d" if x',
            "eval_conflict_error: complete rules must not produce multiple outputs",
            2,
            1,
        ),
        # OPA 1.x's strict checks that are always on (its "strict mode" page)
        (
            'deny contains "x" if {\n  re_match("a", "a")\n}',
            "rego_type_error: deprecated built-in function calls in expression: re_match",
            2,
            3,
        ),
        (
            'import data.a\nimport data.a\ndeny contains "x" if true',
            "rego_compile_error: import must not shadow import data.a",
            2,
            1,
        ),
        (
            'deny contains "x" if {\n  input := 1\n}',
            "rego_compile_error: variables must not shadow input",
            2,
            3,
        ),
    ],
    ids=[
        "undefined-function",
        "unsafe-variable",
        "assigned-twice",
        "type-error",
        "conflict",
        "deprecated-builtin",
        "duplicate-import",
        "input-shadowed",
    ],
)
def test_compile_errors_are_refused_with_opas_message(body, message, line, column):
    errors = refused(policy(body))
    # policy() puts four lines in front of the body
    found = [(e.line, e.column) for e in errors if message in e.message]
    assert found == [(line + 4, column)], errors


def test_rego_v0_is_refused_with_the_hint():
    errors = refused('package a\n\ndeny[msg] {\n  msg := "x"\n}\n')
    assert (errors[0].line, errors[0].column) == (3, 1)
    assert "Rego v0" in errors[0].message and "deny contains msg if { ... }" in errors[0].message


def test_a_policy_without_deny_or_warn_is_refused():
    errors = refused("package a\n\nallow if input.ok\n")
    assert "neither `deny` nor `warn`" in errors[0].message


def test_single_value_conftest_rules_are_refused():
    errors = refused('package a\n\nviolation_x := {"msg": "m"}\n')
    assert (errors[0].line, errors[0].column) == (3, 1)
    assert "`violation_x` must be a set of messages" in errors[0].message


def test_a_violation_without_msg_fails_closed():
    decision = rego.evaluate('package a\n\nviolation contains {"text": "no msg"} if true\n', {})
    assert decision.result == "error"
    assert "objects with a `msg` string" in decision.error

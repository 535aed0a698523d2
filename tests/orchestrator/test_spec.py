"""Tests for the pipeline-as-code parser/validator (orchestrator.spec): pure Python, no DB."""

from __future__ import annotations

import pickle
import textwrap
import time

import jsonschema
import pytest

from orchestrator.spec import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_RUN_BYTES,
    MAX_STAGES,
    MAX_STEPS_PER_STAGE,
    SPEC_SCHEMA,
    ParameterError,
    SpecError,
    parse_pipeline,
    topological_order,
    validate_parameters,
)

STEP = "{name: s, run: 'true'}"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(text: str, **kwargs) -> list[dict]:
    with pytest.raises(SpecError) as info:
        parse_pipeline(text, **kwargs)
    return info.value.errors


def only_error(text: str, **kwargs) -> dict:
    errors = errors_of(text, **kwargs)
    assert len(errors) == 1, errors
    return errors[0]


def where(error: dict) -> tuple[int | None, int | None]:
    return error["line"], error["column"]


# ----------------------------------------------------------------- valid documents

VALID = doc(
    """
    name: payments-api
    description: Build, test and ship the payments API
    parameters:
      - name: version
        description: Release version
        required: true
        default: "1.0"
        allowed: ["1.0", "2.0"]
      - name: region
    stages:
      - name: build
        steps:
          - name: compile
            run: "make build"
            env: {KEY: value}
      - name: test
        needs: [build]
        environment: production
        steps:
          - name: unit
            run: make test
            timeout: 120
            retries: 2
          - name: smoke
            http:
              url: https://example.org/health
              method: POST
              headers: {Accept: application/json}
              body: '{"ping": true}'
              expect: [200, 204]
            timeout: 30
      - name: docs
        needs: [build]
        steps:
          - name: ping
            http:
              url: http://docs.internal:8080/ready
    schedule: "0   3 * * 1-5"
    """
)


def test_valid_document_is_normalized_with_defaults():
    spec = parse_pipeline(VALID, environments=["production", "staging"])
    assert spec == {
        "name": "payments-api",
        "description": "Build, test and ship the payments API",
        "parameters": [
            {
                "name": "version",
                "description": "Release version",
                "required": True,
                "default": "1.0",
                "allowed": ["1.0", "2.0"],
            },
            {
                "name": "region",
                "description": "",
                "required": False,
                "default": None,
                "allowed": None,
            },
        ],
        "stages": [
            {
                "name": "build",
                "needs": [],
                "environment": None,
                "steps": [
                    {
                        "name": "compile",
                        "type": "run",
                        "run": "make build",
                        "timeout": 600,
                        "retries": 0,
                        "env": {"KEY": "value"},
                        "secrets": [],
                    }
                ],
            },
            {
                "name": "test",
                "needs": ["build"],
                "environment": "production",
                "steps": [
                    {
                        "name": "unit",
                        "type": "run",
                        "run": "make test",
                        "timeout": 120,
                        "retries": 2,
                        "env": {},
                        "secrets": [],
                    },
                    {
                        "name": "smoke",
                        "type": "http",
                        "http": {
                            "url": "https://example.org/health",
                            "method": "POST",
                            "headers": {"Accept": "application/json"},
                            "body": '{"ping": true}',
                            "expect": [200, 204],
                        },
                        "timeout": 30,
                        "retries": 0,
                        "env": {},
                        "secrets": [],
                    },
                ],
            },
            {
                "name": "docs",
                "needs": ["build"],
                "environment": None,
                "steps": [
                    {
                        "name": "ping",
                        "type": "http",
                        "http": {
                            "url": "http://docs.internal:8080/ready",
                            "method": "GET",
                            "headers": {},
                            "body": None,
                            "expect": [200],
                        },
                        "timeout": 600,
                        "retries": 0,
                        "env": {},
                        "secrets": [],
                    }
                ],
            },
        ],
        "schedule": "0 3 * * 1-5",
    }
    # plain JSON types only (no ruamel subclasses)
    assert type(spec["stages"][0]["steps"][0]["run"]) is str
    assert type(spec["stages"][1]["steps"][0]["timeout"]) is int


def test_minimal_document_and_null_optional_keys():
    spec = parse_pipeline(
        doc(
            """
            name: tiny
            description:
            parameters:
            schedule:
            stages:
              - name: only
                needs:
                environment:
                steps:
                  - name: s
                    run: echo hi
                    timeout:
                    env:
            """
        )
    )
    assert spec["description"] == ""
    assert spec["parameters"] == []
    assert spec["schedule"] is None
    assert spec["stages"][0]["needs"] == []
    assert spec["stages"][0]["environment"] is None
    assert spec["stages"][0]["steps"][0]["timeout"] == 600
    assert spec["stages"][0]["steps"][0]["env"] == {}


def test_unicode_descriptions_commands_and_step_names():
    spec = parse_pipeline(
        doc(
            """
            name: Zahlungen — Ωmega ✓
            description: "Überprüfen, 测试 und ausliefern 🚀"
            stages:
              - name: build
                steps:
                  - name: Kompilieren ✓
                    run: echo "héllo wörld ✓"
                    env: {GREETING: こんにちは}
            """
        )
    )
    assert spec["name"] == "Zahlungen — Ωmega ✓"
    assert spec["description"] == "Überprüfen, 测试 und ausliefern 🚀"
    step = spec["stages"][0]["steps"][0]
    assert step["name"] == "Kompilieren ✓"
    assert step["run"] == 'echo "héllo wörld ✓"'
    assert step["env"] == {"GREETING": "こんにちは"}


def test_bytes_input_is_decoded_as_utf8():
    text = "name: p\nstages: [{name: a, steps: [{name: ✓, run: x}]}]\n"
    assert parse_pipeline(text.encode())["stages"][0]["steps"][0]["name"] == "✓"
    error = only_error(b"name: \xff\n")
    assert "not valid UTF-8" in error["message"]


def test_parallel_stages_needing_the_same_stage():
    spec = parse_pipeline(
        doc(
            f"""
            name: fan-out
            stages:
              - {{name: deploy, needs: [unit, lint], steps: [{STEP}]}}
              - {{name: build, steps: [{STEP}]}}
              - {{name: unit, needs: [build], steps: [{STEP}]}}
              - {{name: lint, needs: [build], steps: [{STEP}]}}
            """
        )
    )
    assert [s["needs"] for s in spec["stages"]] == [["unit", "lint"], [], ["build"], ["build"]]
    # stable: among stages ready at the same time, document order wins
    assert topological_order(spec) == ["build", "unit", "lint", "deploy"]


def test_topological_order_is_stable_without_needs():
    spec = parse_pipeline(
        f"name: p\nstages: [{{name: c, steps: [{STEP}]}}, {{name: a, steps: [{STEP}]}},"
        f" {{name: b, needs: [c], steps: [{STEP}]}}]\n"
    )
    assert topological_order(spec) == ["c", "a", "b"]


def test_topological_order_rejects_cycles_in_hand_made_specs():
    spec = {"stages": [{"name": "a", "needs": ["b"]}, {"name": "b", "needs": ["a"]}]}
    with pytest.raises(SpecError, match="cycle"):
        topological_order(spec)


# ----------------------------------------------------------------- YAML-level errors


def test_yaml_syntax_error_reports_problem_mark():
    error = only_error("name: p\nstages:\n  a: b: c\n")
    assert where(error) == (3, 7)
    assert error["path"] == ""
    assert error["message"] == "could not parse YAML: mapping values are not allowed here"
    assert str(SpecError([error])) == (
        "line 3, column 7: could not parse YAML: mapping values are not allowed here"
    )


def test_yaml_syntax_error_includes_context():
    error = only_error("name: p\nstages:\n  - name: 'abc\n")
    assert where(error) == (4, 1)
    assert error["message"].startswith("could not parse YAML: found unexpected end of stream")
    assert "quoted scalar that starts at line 3, column 11" in error["message"]


def test_non_mapping_top_level():
    error = only_error("- name: p\n- stages: []\n")
    assert where(error) == (1, 1)
    assert "expected a mapping at the top level" in error["message"]
    assert "got a list" in error["message"]
    assert "got a string" in only_error("just text\n")["message"]


def test_empty_document():
    for text in ("", "# only a comment\n"):
        assert "document is empty" in only_error(text)["message"]


def test_duplicate_yaml_keys():
    errors = errors_of("name: p\nstages: []\nname: q\nstages: []\n")
    assert [(where(e), e["message"]) for e in errors] == [
        ((3, 1), 'duplicate key "name" — each key may appear only once'),
        ((4, 1), 'duplicate key "stages" — each key may appear only once'),
    ]


def test_several_documents_refused():
    error = only_error("name: p\n---\nname: q\n")
    assert where(error) == (2, 1)
    assert "only one YAML document" in error["message"]


def test_tags_refused():
    error = only_error("name: !!python/object:os.system p\n")
    assert where(error) == (1, 7)
    assert "tags" in error["message"]


def test_merge_keys_and_complex_keys_refused():
    error = only_error("name: p\n<<: {description: x}\n")
    assert where(error) == (2, 1)
    assert "merge keys" in error["message"]
    error = only_error("name: p\n? [a, b]\n: c\n")
    assert where(error) == (2, 3)
    assert "keys must be plain strings" in error["message"]


def test_yaml_1_2_scalars_need_quotes_where_text_is_expected():
    text = doc(
        f"""
        name: p
        parameters:
          - {{name: day, default: 2024-01-01, required: yes}}
        stages: [{{name: a, steps: [{STEP}]}}]
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["message"]) for e in errors] == [
        (
            (3, 26),
            "expected a string, got a date (2024-01-01) — put the value in quotes to use it "
            "as text",
        ),
        ((3, 48), 'expected true or false, got a string ("yes") — write true or false'),
    ]


def test_control_characters_refused_with_position():
    error = only_error("name: p\nstages: \x07\n")
    assert where(error) == (2, 9)
    assert "#x0007" in error["message"]


# -------------------------------------------------------------------- hostile input


def test_billion_laughs_refused_quickly():
    lines = ['lol: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghij"):
        previous = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    started = time.perf_counter()
    error = only_error("\n".join(lines) + "\n")
    assert time.perf_counter() - started < 1
    assert where(error) == (1, 6)
    assert "anchors and aliases" in error["message"]
    assert "not supported" in error["message"]


def test_any_alias_refused():
    text = doc(
        f"""
        name: p
        stages:
          - &base {{name: a, steps: [{STEP}]}}
          - *base
        """
    )
    error = only_error(text)
    assert where(error) == (3, 5)
    assert error["path"] == "stages[0]"


def test_deep_block_nesting_refused():
    text = "name: p\nx:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 40))
    error = only_error(text)
    # the top-level mapping is level 1, x's mapping level 2, ... the mapping that
    # starts with k20 (line 22, column 41) is level 21
    assert where(error) == (22, 41)
    assert f"at most {MAX_DEPTH} levels" in error["message"]


def test_deep_flow_nesting_refused_quickly():
    started = time.perf_counter()
    error = only_error("name: p\nx: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert time.perf_counter() - started < 1
    # the scanner stops at the first bracket past MAX_DEPTH flow levels
    assert where(error) == (2, 4 + MAX_DEPTH)
    assert "nested too deeply" in error["message"]


def test_document_too_large():
    text = "name: p\ndescription: " + "x" * MAX_DOCUMENT_BYTES + "\n"
    error = only_error(text)
    assert where(error) == (None, None)
    assert "too large" in error["message"]
    # the limit is in UTF-8 bytes, not characters
    text = "name: p\ndescription: " + "é" * (MAX_DOCUMENT_BYTES // 2) + "\n"
    assert "too large" in only_error(text)["message"]


def test_too_many_stages_refused():
    stages = "".join(f"  - {{name: s{i}, steps: [{STEP}]}}\n" for i in range(MAX_STAGES + 5))
    error = only_error("name: p\nstages:\n" + stages)
    assert where(error) == (3 + MAX_STAGES, 5)
    assert error["path"] == "stages"
    assert f"too many stages — at most {MAX_STAGES}" in error["message"]


def test_too_many_steps_refused():
    steps = ", ".join(f"{{name: s{i}, run: x}}" for i in range(MAX_STEPS_PER_STAGE + 1))
    error = only_error(f"name: p\nstages:\n  - name: a\n    steps: [{steps}]\n")
    assert error["path"] == "stages[0].steps"
    assert f"at most {MAX_STEPS_PER_STAGE}" in error["message"]


def test_run_command_too_long():
    long_ascii = "x" * (MAX_RUN_BYTES + 1)
    text = (
        f"name: p\nstages:\n  - name: a\n    steps:\n      - name: s\n        run: {long_ascii}\n"
    )
    error = only_error(text)
    assert where(error) == (6, 14)
    assert error["path"] == "stages[0].steps[0].run"
    assert "too long" in error["message"]
    # measured in UTF-8 bytes: fewer characters than the limit can still be too long
    long_unicode = "é" * (MAX_RUN_BYTES // 2 + 1)
    error = only_error(text.replace(long_ascii, long_unicode))
    assert "bytes" in error["message"] and "too long" in error["message"]


# ------------------------------------------------------------------- schema errors


def test_unknown_key_with_did_you_mean():
    text = doc(
        """
        name: p
        stages:
          - name: build
            steps:
              - name: a
                run: x
              - name: b
                rn: make
        """
    )
    error = only_error(text)
    assert where(error) == (8, 9)
    assert str(SpecError([error])) == (
        'line 8, column 9: stages[0].steps[1]: unknown key "rn" — did you mean "run"?'
    )


def test_unknown_key_without_suggestion_lists_expected_keys():
    error = only_error(f"name: p\nstages: [{{name: a, steps: [{STEP}]}}]\nzzz: 1\n")
    assert where(error) == (3, 1)
    assert error["path"] == ""
    assert error["message"] == (
        'unknown key "zzz" — expected one of: name, description, parameters, stages, schedule, '
        "retention_days"
    )


def test_missing_required_keys():
    errors = errors_of("description: nothing else\n")
    assert [(where(e), e["message"]) for e in errors] == [
        ((1, 1), 'missing required key "name" — add a name for the pipeline'),
        ((1, 1), 'missing required key "stages" — add a non-empty list of stages'),
    ]
    error = only_error("name: p\nstages:\n  - name: a\n")
    assert where(error) == (3, 5)
    assert error["path"] == "stages[0]"
    assert error["message"].startswith('missing required key "steps"')


def test_typo_of_required_key_reports_only_the_typo():
    error = only_error(f"name: p\nstages:\n  - nmae: a\n    steps: [{STEP}]\n")
    assert where(error) == (3, 5)
    assert error["message"] == 'unknown key "nmae" — did you mean "name"?'


def test_type_errors_say_what_was_expected():
    text = doc(
        f"""
        name: 42
        stages:
          - {{name: build, steps: [{STEP}]}}
          - name: test
            needs: build
            steps:
              - name: s
                run: x
                timeout: soon
                env: {{PORT: 8080}}
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["path"], e["message"]) for e in errors] == [
        (
            (1, 7),
            "name",
            "expected a string, got a number (42) — put the value in quotes to use it as text",
        ),
        (
            (5, 12),
            "stages[1].needs",
            'expected a list, got a string ("build") — write a list, e.g. [build]',
        ),
        ((9, 18), "stages[1].steps[0].timeout", 'expected a whole number, got a string ("soon")'),
        (
            (10, 21),
            "stages[1].steps[0].env.PORT",
            "expected a string, got a number (8080) — put the value in quotes to use it as text",
        ),
    ]


def test_empty_value_points_at_its_key():
    error = only_error("name:\nstages: [{name: a, steps: [{name: s, run: x}]}]\n")
    assert where(error) == (1, 1)
    assert error["message"] == "expected a string, got an empty value"


def test_out_of_range_numbers():
    text = doc(
        """
        name: p
        stages:
          - name: a
            steps:
              - {name: s, run: x, timeout: 0, retries: 11}
              - {name: t, run: x, timeout: 86401}
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["message"]) for e in errors] == [
        ((5, 36), "timeout 0 is out of range — it must be between 1 and 86400"),
        ((5, 48), "retries 11 is out of range — it must be between 0 and 10"),
        ((6, 36), "timeout 86401 is out of range — it must be between 1 and 86400"),
    ]


def test_name_patterns():
    text = doc(
        """
        name: p
        parameters:
          - name: 1st
        stages:
          - name: Build
            steps:
              - name: s
                run: x
                env: {9LIVES: "yes", "build\\n": "x"}
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["path"]) for e in errors] == [
        ((3, 11), "parameters[0].name"),
        ((5, 11), "stages[0].name"),
        ((9, 15), "stages[0].steps[0].env"),
        ((9, 30), "stages[0].steps[0].env"),
    ]
    assert errors[0]["message"].startswith('parameter name "1st" is not valid')
    assert errors[1]["message"] == (
        'stage name "Build" is not valid — use lowercase letters, digits, "-" and "_", '
        "starting with a letter or digit"
    )
    assert errors[2]["message"].startswith('variable name "9LIVES" is not valid')
    # a trailing newline does not sneak past the "$" of the pattern
    assert errors[3]["message"].startswith('variable name "build\\n" is not valid')


def test_empty_stages_and_steps():
    error = only_error("name: p\nstages: []\n")
    assert where(error) == (2, 9)
    assert error["message"] == "stages must not be empty — add at least one stage"
    error = only_error("name: p\nstages:\n  - name: a\n    steps: []\n")
    assert where(error) == (4, 12)
    assert error["message"] == "steps must not be empty — add at least one step"


def test_run_and_http_exactly_one():
    text = doc(
        """
        name: p
        stages:
          - name: a
            steps:
              - name: both
                run: x
                http: {url: "https://example.org"}
              - name: neither
                timeout: 5
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["path"]) for e in errors] == [
        ((7, 9), "stages[0].steps[0]"),
        ((8, 9), "stages[0].steps[1]"),
    ]
    assert "exactly one of" in errors[0]["message"]
    assert 'but has "run" and "http"' in errors[0]["message"]
    assert errors[1]["message"].startswith('a step needs exactly one of "run"')


def test_http_step_checks():
    text = doc(
        """
        name: p
        stages:
          - name: a
            steps:
              - name: call
                http:
                  url: ftp://example.org/file
                  method: get
                  headers: {"Bad Header": x, X-Ok: "a\\nb"}
                  expect: [200, 99, 200]
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["path"]) for e in errors] == [
        ((7, 16), "stages[0].steps[0].http.url"),
        ((8, 19), "stages[0].steps[0].http.method"),
        ((9, 21), "stages[0].steps[0].http.headers"),
        ((9, 44), "stages[0].steps[0].http.headers.X-Ok"),
        ((10, 25), "stages[0].steps[0].http.expect[1]"),
        ((10, 29), "stages[0].steps[0].http.expect[2]"),
    ]
    assert "http:// or https://" in errors[0]["message"]
    assert 'did you mean "GET"?' in errors[1]["message"]
    assert "expected one of: GET, POST, PUT, PATCH, DELETE, HEAD" in errors[1]["message"]
    assert "duplicate entry 200" in errors[5]["message"]


def test_all_errors_are_reported_in_document_order():
    text = doc(
        """
        name: p
        colour: blue
        stages:
          - name: Build
            steps:
              - {name: s, rn: x}
          - name: test
            needs: [biuld]
            steps: []
        """
    )
    errors = errors_of(text)
    assert [e["line"] for e in errors] == sorted(e["line"] for e in errors)
    assert len(errors) == 5
    message = str(SpecError(errors))
    assert message.count("\n") == 4
    assert message.splitlines()[0] == (
        'line 2, column 1: unknown key "colour" — expected one of: name, description, '
        "parameters, stages, schedule, retention_days"
    )


# ------------------------------------------------------------------ semantic errors


def test_unknown_stage_in_needs_with_did_you_mean():
    text = (
        "name: p\n"
        f"stages: [{{name: build, steps: [{STEP}]}}, {{name: test, steps: [{STEP}]}},\n"
        f"  {{name: deploy, steps: [{STEP}],\n"
        "   needs: [tset]}]\n"
    )
    error = only_error(text)
    assert error == {
        "message": 'unknown stage "tset" — did you mean "test"?',
        "line": 4,
        "column": 12,
        "path": "stages[2].needs",
    }
    assert str(SpecError([error])) == (
        'line 4, column 12: stages[2].needs: unknown stage "tset" — did you mean "test"?'
    )


def test_unknown_stage_without_suggestion_lists_stages():
    text = (
        f"name: p\nstages:\n  - {{name: a, steps: [{STEP}]}}\n"
        f"  - {{name: b, needs: [zzz], steps: [{STEP}]}}\n"
    )
    error = only_error(text)
    assert where(error) == (4, 23)
    assert error["message"] == 'unknown stage "zzz" (known stages: a)'


def test_stage_needing_itself():
    error = only_error(f"name: p\nstages:\n  - {{name: a, needs: [a], steps: [{STEP}]}}\n")
    assert where(error) == (3, 23)
    assert error["message"] == 'stage "a" cannot need itself — remove it from needs'


def test_cycle_in_needs_is_named():
    text = doc(
        f"""
        name: p
        stages:
          - name: build
            needs: [test]
            steps: [{STEP}]
          - name: test
            needs: [build]
            steps: [{STEP}]
          - name: deploy
            needs: [test]
            steps: [{STEP}]
        """
    )
    error = only_error(text)
    assert where(error) == (4, 13)
    assert error["path"] == "stages[0].needs"
    assert error["message"] == "cycle in needs: build → test → build"


def test_longer_cycle_reported_once():
    text = doc(
        f"""
        name: p
        stages:
          - {{name: a, needs: [c], steps: [{STEP}]}}
          - {{name: b, needs: [a], steps: [{STEP}]}}
          - {{name: c, needs: [b], steps: [{STEP}]}}
        """
    )
    error = only_error(text)
    assert where(error) == (3, 23)
    assert error["message"] == "cycle in needs: a → c → b → a"


def test_duplicate_names():
    text = doc(
        """
        name: p
        parameters:
          - name: version
          - name: version
        stages:
          - name: build
            steps:
              - {name: s, run: x}
              - {name: s, run: y}
          - name: build
            steps:
              - {name: s, run: x}
        """
    )
    errors = errors_of(text)
    assert [(where(e), e["path"], e["message"]) for e in errors] == [
        (
            (4, 11),
            "parameters[1].name",
            'duplicate parameter name "version" — already used by parameters[0]',
        ),
        (
            (9, 16),
            "stages[0].steps[1].name",
            'duplicate step name "s" — already used by steps[0] in this stage',
        ),
        (
            (10, 11),
            "stages[1].name",
            'duplicate stage name "build" — already used by stages[0]; stage names must be unique',
        ),
    ]


def test_unknown_environment():
    text = f"name: p\nstages:\n  - name: a\n    environment: prodution\n    steps: [{STEP}]\n"
    error = only_error(text, environments=["staging", "production"])
    assert where(error) == (4, 18)
    assert error["path"] == "stages[0].environment"
    assert error["message"] == (
        'unknown environment "prodution" — did you mean "production"? '
        "(known environments: staging, production)"
    )
    error = only_error(text, environments=[])
    assert "no environments are configured" in error["message"]
    # environments=None skips the check; a generator is fine too
    assert parse_pipeline(text)["stages"][0]["environment"] == "prodution"
    assert parse_pipeline(text, environments=(e for e in ["prodution"]))


def test_default_must_be_allowed():
    text = doc(
        f"""
        name: p
        parameters:
          - name: version
            default: "3.0"
            allowed: ["1.0", "2.0"]
        stages: [{{name: a, steps: [{STEP}]}}]
        """
    )
    error = only_error(text)
    assert where(error) == (4, 14)
    assert error["path"] == "parameters[0].default"
    assert error["message"].startswith('default "3.0" is not one of the allowed values')
    assert '(allowed: "1.0", "2.0")' in error["message"]


@pytest.mark.parametrize(
    "schedule",
    ["0 3 * * 1-5", "*/15 9-17 * * mon-fri", "0 0 1 jan,jul *", "5,10 0-23/2 1-31 * SUN"],
)
def test_valid_schedules(schedule):
    text = f"name: p\nstages: [{{name: a, steps: [{STEP}]}}]\nschedule: '{schedule}'\n"
    assert parse_pipeline(text)["schedule"] == schedule


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("0 3 * *", "expected 5 cron fields"),
        ("@daily", "expected 5 cron fields"),
        ("60 * * * *", 'minute field "60": 60 is out of range 0-59'),
        ("0 25 * * *", 'hour field "25": 25 is out of range 0-23'),
        ("0 0 0 * *", "day of month field"),
        ("0 0 * 13 *", "month field"),
        ("0 0 * * 7", 'day of week field "7": 7 is out of range 0-6'),
        ("*/0 * * * *", "step"),
        ("0 5-1 * * *", "backwards"),
        ("0 0 * * funday", "is not a valid value"),
        ("0 3/2 * * *", "is not supported"),
    ],
)
def test_invalid_schedules(schedule, expected):
    text = f"name: p\nstages: [{{name: a, steps: [{STEP}]}}]\nschedule: '{schedule}'\n"
    error = only_error(text)
    assert where(error) == (3, 11)
    assert error["path"] == "schedule"
    assert expected in error["message"]


# ------------------------------------------------------------------------- parameters

PARAMS_SPEC = parse_pipeline(
    doc(
        f"""
        name: p
        parameters:
          - {{name: version, required: true, allowed: ["1.0", "2.0"]}}
          - {{name: region, default: eu-west}}
          - {{name: note}}
        stages: [{{name: a, steps: [{STEP}]}}]
        """
    )
)


def test_parameter_defaults_applied():
    assert validate_parameters(PARAMS_SPEC, {"version": "2.0"}) == {
        "version": "2.0",
        "region": "eu-west",
    }
    assert validate_parameters(PARAMS_SPEC, {"version": "1.0", "region": None, "note": 5}) == {
        "version": "1.0",
        "region": "eu-west",
        "note": "5",
    }
    assert validate_parameters(PARAMS_SPEC, {"version": "1.0", "note": True})["note"] == "true"


def test_missing_required_parameter():
    with pytest.raises(ParameterError) as info:
        validate_parameters(PARAMS_SPEC, {})
    assert info.value.errors == [
        {"parameter": "version", "message": 'parameter "version" is required — supply a value'}
    ]
    with pytest.raises(ParameterError, match="must not be empty"):
        validate_parameters(PARAMS_SPEC, {"version": ""})


def test_unknown_parameter_with_did_you_mean():
    with pytest.raises(ParameterError) as info:
        validate_parameters(PARAMS_SPEC, {"version": "1.0", "regoin": "x"})
    assert info.value.errors == [
        {"parameter": "regoin", "message": 'unknown parameter "regoin" — did you mean "region"?'}
    ]
    no_params = parse_pipeline(f"name: p\nstages: [{{name: a, steps: [{STEP}]}}]\n")
    with pytest.raises(ParameterError, match="takes no parameters"):
        validate_parameters(no_params, {"x": "1"})


def test_parameter_value_not_allowed_and_non_scalar():
    with pytest.raises(ParameterError) as info:
        validate_parameters(PARAMS_SPEC, {"version": "3.0", "note": ["a"], "region": {"a": 1}})
    errors = {e["parameter"]: e["message"] for e in info.value.errors}
    assert errors["version"].startswith('"3.0" is not an allowed value for parameter "version"')
    assert '(allowed: "1.0", "2.0")' in errors["version"]
    assert "must be a single value" in errors["note"]
    assert "got a list" in errors["note"]
    assert "got a mapping" in errors["region"]
    assert isinstance(info.value, ValueError)
    assert str(info.value).count("\n") == 2


# ---------------------------------------------------------------------- the exports


def test_exceptions_pickle_and_format():
    error = SpecError([{"message": "boom", "line": 2, "column": 3, "path": "stages[0]"}])
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert copy.errors == error.errors
    assert str(copy) == "line 2, column 3: stages[0]: boom"
    assert str(SpecError("plain")) == "plain"
    assert SpecError("plain").errors == [
        {"message": "plain", "line": None, "column": None, "path": ""}
    ]
    data = pickle.dumps(ParameterError([{"parameter": "x", "message": "bad"}]))
    perror = pickle.loads(data)  # noqa: S301 - our own bytes
    assert perror.errors == [{"parameter": "x", "message": "bad"}]


def test_spec_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SPEC_SCHEMA)
    assert SPEC_SCHEMA["additionalProperties"] is False
    stage = SPEC_SCHEMA["properties"]["stages"]["items"]
    assert stage["additionalProperties"] is False
    assert stage["properties"]["steps"]["items"]["additionalProperties"] is False

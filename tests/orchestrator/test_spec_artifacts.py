"""`artifacts:` of a step and `retention_days:` of a pipeline (orchestrator.spec): the
normalized shape, and each mistake refused with its line and column."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.spec import SpecError, parse_pipeline


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(text: str) -> list[dict]:
    with pytest.raises(SpecError) as info:
        parse_pipeline(text)
    return info.value.errors


def with_artifacts(items: str, *, extra_step: str = "") -> str:
    return doc(
        f"""
        name: infra
        stages:
          - name: plan
            steps:
              - name: plan
                run: make plan
                artifacts: {items}
        {extra_step}
        """
    )


def test_artifacts_and_retention_are_normalized():
    spec = parse_pipeline(
        doc(
            """
            name: infra
            retention_days: 30
            stages:
              - name: plan
                steps:
                  - name: plan
                    run: make plan
                    artifacts:
                      - {name: plan, path: tfplan.json, policy_input: true}
                      - {name: reports, path: "out/**/*.xml", optional: true}
              - name: apply
                needs: [plan]
                steps:
                  - {name: apply, run: make apply}
            """
        )
    )
    assert spec["retention_days"] == 30
    assert spec["stages"][0]["steps"][0]["artifacts"] == [
        {"name": "plan", "path": "tfplan.json", "policy_input": True, "optional": False},
        {"name": "reports", "path": "out/**/*.xml", "policy_input": False, "optional": True},
    ]
    assert "artifacts" not in spec["stages"][1]["steps"][0]  # none declared: no key


def test_no_retention_means_the_installation_default():
    spec = parse_pipeline(with_artifacts("[{name: plan, path: p.json}]"))
    assert "retention_days" not in spec


@pytest.mark.parametrize(
    ("items", "column", "path", "words"),
    [
        ("[{name: plan, path: /etc/passwd}]", 40, "path", "is absolute"),
        ('[{name: plan, path: "../up.json"}]', 40, "path", 'leaves the workspace with ".."'),
        ('[{name: plan, path: "a/../../b"}]', 40, "path", 'leaves the workspace with ".."'),
        ('[{name: plan, path: "a\\\\b"}]', 40, "path", 'separate directories with "/"'),
        ("[{name: 9plan, path: p.json}]", 28, "name", 'artifact name "9plan" is not valid'),
        ('[{name: plan, path: ""}]', 40, "path", "artifact path must not be empty"),
    ],
)
def test_bad_artifact_is_refused_where_it_is(items, column, path, words):
    [error] = errors_of(with_artifacts(items))
    assert error["line"] == 7
    assert error["column"] == column
    assert error["path"] == f"stages[0].steps[0].artifacts[0].{path}"
    assert words in error["message"]


def test_missing_path_and_unknown_key():
    errors = errors_of(with_artifacts("[{name: plan, paht: p.json}]"))
    assert len(errors) == 1  # the did-you-mean covers the missing key
    assert 'unknown key "paht" — did you mean "path"?' in errors[0]["message"]
    assert (errors[0]["line"], errors[0]["column"]) == (7, 34)


def test_artifact_names_are_unique_in_the_pipeline():
    text = doc(
        """
        name: infra
        stages:
          - name: a
            steps:
              - {name: s, run: x, artifacts: [{name: plan, path: a.json}]}
          - name: b
            steps:
              - {name: s, run: x, artifacts: [{name: plan, path: b.json}]}
        """
    )
    [error] = errors_of(text)
    assert error["line"] == 8
    assert error["path"] == "stages[1].steps[0].artifacts[0].name"
    assert (
        'duplicate artifact name "plan" — already used by stages[0].steps[0].artifacts[0]'
        in (error["message"])
    )


def test_http_steps_store_no_artifacts():
    text = doc(
        """
        name: infra
        stages:
          - name: a
            steps:
              - name: ping
                http: {url: "https://example.org/"}
                artifacts: [{name: page, path: page.html}]
        """
    )
    [error] = errors_of(text)
    assert (error["line"], error["column"]) == (7, 20)
    assert "only run steps store artifacts" in error["message"]


@pytest.mark.parametrize("value", ["0", "36501", "ninety"])
def test_retention_days_out_of_range(value):
    [error] = errors_of(
        f"name: x\nretention_days: {value}\nstages: [{{name: a, steps: [{{name: s, run: x}}]}}]\n"
    )
    assert error["line"] == 2
    assert error["path"] == "retention_days"


def test_too_many_artifacts():
    items = "[" + ", ".join(f"{{name: a{i}, path: f{i}}}" for i in range(21)) + "]"
    [error] = errors_of(with_artifacts(items))
    assert "too many artifacts (21) — at most 20" in error["message"]

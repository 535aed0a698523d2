"""The gate's policy input names the secrets its stage's steps ask for (`stage.secrets`),
never their values: a policy can require or forbid a secret by name, and nothing a policy,
the decision log or the dry-run page sees holds a value."""

from __future__ import annotations

import json
import textwrap

import jsonschema
import pytest
from guardian.shortcuts import assign_perm

from governance import rego, secrets
from governance.models import GateStatus, PolicyDecision

pytestmark = pytest.mark.django_db

VALUE = "s3cr3t-Value/with+symbols"
OTHER = "another-0ne"

ASKING = textwrap.dedent(
    """\
    name: Payments API
    stages:
      - name: build
        steps:
          - name: compile
            run: echo build
      - name: deploy-production
        needs: [build]
        environment: production
        steps:
          - name: migrate
            run: ./migrate
            secrets: [DB_PASSWORD, API_TOKEN]
          - name: rollout
            run: ./rollout
            secrets: [DB_PASSWORD]
    """
)

# Blocks unless exactly the expected names are asked for, and would block (saying so) if a
# value had reached the input anywhere.
NAMES_POLICY = textwrap.dedent(
    """\
    package clearway.secretnames
    import rego.v1

    names_as_expected if input.stage.secrets == ["API_TOKEN", "DB_PASSWORD"]

    deny contains "unexpected secrets" if not names_as_expected

    deny contains "a value reached the input" if {
      walk(input, [_, value])
      is_string(value)
      contains(value, "s3cr3t")
    }
    """
)


@pytest.fixture
def keeper(make_user, production):
    user = make_user("kim", "developer")
    assign_perm("governance.manage_secrets", user, production)
    return user


@pytest.fixture
def asking_run(keeper, production, make_pipeline, run_at_gate):
    secrets.set_secret(actor=keeper, name="DB_PASSWORD", value=VALUE, environment=production)
    secrets.set_secret(actor=keeper, name="API_TOKEN", value=OTHER, environment=production)
    pipeline = make_pipeline(slug="payments-secrets", definition=ASKING)
    return run_at_gate(pipeline=pipeline)


def test_the_input_names_the_requested_secrets_once_sorted_and_never_their_values(asking_run):
    run, gate = asking_run
    doc = gate.input
    jsonschema.validate(doc, rego.INPUT_SCHEMA)
    assert doc["stage"]["secrets"] == ["API_TOKEN", "DB_PASSWORD"]
    text = json.dumps(doc)
    assert VALUE not in text and OTHER not in text
    assert "version" not in json.dumps(doc["stage"])


def test_a_policy_reads_the_names_and_finds_no_value(
    keeper, production, make_pipeline, run_at_gate, make_policy
):
    make_policy("secret-names", NAMES_POLICY)
    secrets.set_secret(actor=keeper, name="DB_PASSWORD", value=VALUE, environment=production)
    secrets.set_secret(actor=keeper, name="API_TOKEN", value=OTHER, environment=production)
    pipeline = make_pipeline(slug="payments-secrets", definition=ASKING)
    run, gate = run_at_gate(pipeline=pipeline)
    [decision] = PolicyDecision.objects.filter(gate=gate)
    assert decision.policy_version.policy.name == "secret-names"
    assert decision.result == "pass", decision.deny
    assert gate.status != GateStatus.BLOCKED


def test_a_stage_without_secrets_has_an_empty_list(run_at_gate):
    run, gate = run_at_gate()
    assert gate.input["stage"]["secrets"] == []

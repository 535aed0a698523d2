"""Secrets reach a step only when its stage's scope matches and, for a protected
environment, once the gate is open; every released value is masked in the log; no value
in events, the API, the audit log or error messages."""

from __future__ import annotations

import base64
import json
import textwrap
from urllib.parse import quote, quote_plus

import pytest
from guardian.shortcuts import assign_perm

from governance import actions as gate_actions
from governance import secrets
from governance.models import AuditEvent, Gate, GateStatus
from orchestrator import actions, executors, spec
from orchestrator.masking import MASK, Masker
from orchestrator.models import RunStatus, StepRun, StepStatus

from .conftest import client_for, log_text

pytestmark = pytest.mark.django_db(transaction=True)

VALUE = 'pa$$ word/with+symbols&"q"=x'
LINES = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----"


@pytest.fixture
def keeper(make_user, production, staging):
    user = make_user("kim", "developer")
    for env in (production, staging):
        assign_perm("governance.manage_secrets", user, env)
    return user


@pytest.fixture
def prod_secret(keeper, production):
    return secrets.set_secret(actor=keeper, name="DB_PASSWORD", value=VALUE, environment=production)


@pytest.fixture
def staging_secret(keeper, staging):
    return secrets.set_secret(
        actor=keeper, name="STAGING_TOKEN", value="stg-1", environment=staging
    )


PRINT_FORMS = r"""
echo "plain=$DB_PASSWORD"
printf '%s' "$DB_PASSWORD" | base64
python3 - <<'PY'
import os, json, urllib.parse as u
v = os.environ["DB_PASSWORD"]
print(u.quote(v, safe="")); print(u.quote_plus(v)); print(json.dumps({"p": v}))
PY
echo "len=${#DB_PASSWORD}"
"""


def deploy_pipeline(new_pipeline, script: str, names: str = "[DB_PASSWORD]"):
    body = textwrap.indent(script.strip(), " " * 18)
    return new_pipeline(
        f"""
        name: deploy
        stages:
          - name: build
            steps:
              - name: compile
                run: echo built
          - name: ship
            needs: [build]
            environment: production
            steps:
              - name: rollout
                secrets: {names}
                run: |
{body}
        """
    )


def approve(gate, *people):
    for person in people:
        gate_actions.approve_gate(gate, actor=person, comment="ok")


def test_a_production_secret_is_given_only_after_the_gate_opens_and_is_masked(
    new_pipeline,
    developer,
    worker,
    prod_secret,
    approver,
    second_approver,
    security_approver,
    published,
):
    pipeline = deploy_pipeline(new_pipeline, PRINT_FORMS)
    run = actions.trigger_run(pipeline, actor=developer, trigger="api")
    worker.drive(run)
    gate = Gate.objects.get(stage_run__run=run)
    assert gate.status == GateStatus.WAITING
    rollout = StepRun.objects.get(stage__run=run, name="rollout")
    assert rollout.status == StepStatus.PENDING
    # Asked for now — before the gate opens — the secret is refused.
    with pytest.raises(secrets.SecretRefused) as caught:
        secrets.release_for_step(
            ["DB_PASSWORD"],
            stage=rollout.stage,
            team_id=pipeline.team_id,
            gate_status=gate.status,
        )
    assert caught.value.rule == "gate" and VALUE not in str(caught.value)

    approve(gate, approver, second_approver, security_approver)
    gate.refresh_from_db()
    assert gate.status == GateStatus.OPEN
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.reason
    rollout.refresh_from_db()
    assert rollout.secrets == [
        {"name": "DB_PASSWORD", "version": 1, "scope": "environment production"}
    ]
    text = log_text(rollout)
    assert "[clearway] secrets released: DB_PASSWORD v1" in text
    assert f"len={len(VALUE)}" in text, "the step did receive the value"
    raw = VALUE.encode()
    for form in (
        VALUE,
        base64.b64encode(raw).decode(),
        quote(VALUE, safe=""),
        quote_plus(VALUE),
        json.dumps(VALUE)[1:-1],
    ):
        assert form not in text, form
    assert f"plain={MASK}" in text
    # Nor in the live events, the API or the audit log.
    assert VALUE not in json.dumps(published.events())
    body = client_for(developer).get(f"/api/v1/runs/{run.pk}/").content.decode()
    assert VALUE not in body and '"DB_PASSWORD"' in body
    assert VALUE not in json.dumps(list(AuditEvent.objects.values("details")), default=str)


def test_a_staging_secret_is_refused_for_a_production_stage_at_save_with_line_and_column(
    new_pipeline, staging_secret
):
    with pytest.raises(spec.SpecError) as caught:
        deploy_pipeline(new_pipeline, "echo hi", names="[STAGING_TOKEN]")
    [error] = caught.value.errors
    assert "STAGING_TOKEN" in error["message"] and "staging" in error["message"]
    assert "only to stages that target it" in error["message"]
    assert (error["line"], error["column"]) == (12, 19)  # the name in secrets: [...]
    refused = AuditEvent.objects.get(action="pipeline.secrets_refused")
    assert (
        refused.outcome == "failure" and "STAGING_TOKEN" in refused.details["errors"][0]["message"]
    )
    assert "stg-1" not in str(refused.details)


def test_an_unknown_secret_is_refused_at_save(new_pipeline, prod_secret):
    with pytest.raises(spec.SpecError) as caught:
        deploy_pipeline(new_pipeline, "echo hi", names="[DB_PASSWORDS]")
    assert 'unknown secret "DB_PASSWORDS"' in caught.value.errors[0]["message"]
    assert "DB_PASSWORD" in caught.value.errors[0]["message"]  # did you mean


def test_a_secret_deleted_since_the_save_is_refused_at_start(
    new_pipeline, developer, worker, keeper, staging
):
    secret = secrets.set_secret(
        actor=keeper, name="STAGING_TOKEN", value="stg", environment=staging
    )
    pipeline = new_pipeline(
        """
        name: staged
        stages:
          - name: deploy
            environment: staging
            steps:
              - name: use
                secrets: [STAGING_TOKEN]
                run: echo "token=$STAGING_TOKEN"
        """
    )
    secrets.delete_secret(actor=keeper, secret=secret)
    run = actions.trigger_run(pipeline, actor=developer, trigger="api")
    worker.drive(run)
    assert run.status == RunStatus.FAILED
    step = StepRun.objects.get(stage__run=run)
    assert "secret STAGING_TOKEN does not exist" in step.error
    outputs = [line.split(" ", 1)[1] for line in log_text(step).splitlines()]
    assert not any(line.startswith("token=") for line in outputs), "the command ran"


def test_a_team_secret_reaches_any_stage_of_the_teams_pipelines(
    new_pipeline, developer, worker, team
):
    secrets.set_secret(actor=developer, name="NPM_TOKEN", value="npm-abcdef", team=team)
    run = actions.trigger_run(
        new_pipeline(
            """
            name: team
            stages:
              - name: build
                steps:
                  - name: publish
                    secrets: [NPM_TOKEN]
                    run: echo "token=$NPM_TOKEN"
            """
        ),
        actor=developer,
        trigger="api",
    )
    worker.drive(run)
    assert run.status == RunStatus.SUCCEEDED
    text = log_text(StepRun.objects.get(stage__run=run))
    assert f"token={MASK}" in text and "npm-abcdef" not in text


def test_masker_covers_every_listed_form_and_each_line_of_a_multiline_value():
    masker = Masker([VALUE, LINES])
    raw = VALUE.encode()
    samples = [
        VALUE,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        quote(VALUE, safe=""),
        quote_plus(VALUE),
        json.dumps({"v": VALUE}),
        json.dumps(LINES),
        *LINES.splitlines(),
        base64.b64encode(LINES.encode()).decode(),
    ]
    for sample in samples:
        masked = masker.mask(f"before {sample} after")
        assert MASK in masked and sample not in masked, sample
    assert masker.mask("nothing secret here") == "nothing secret here"


def test_http_steps_cannot_ask_for_secrets(prod_secret):
    text = (
        "name: h\nstages:\n  - name: s\n    environment: production\n    steps:\n"
        "      - name: call\n        http: {url: 'https://example.org/'}\n"
        "        secrets: [DB_PASSWORD]\n"
    )
    with pytest.raises(spec.SpecError) as caught:
        spec.parse_pipeline(text, secrets={"DB_PASSWORD": {"production"}})
    assert "only run steps receive secrets" in caught.value.errors[0]["message"]


def test_release_refuses_a_secret_of_another_environment_naming_it(make_run, prod_secret, staging):
    run = make_run()
    stage = run.stages.get(name="build")
    with pytest.raises(secrets.SecretRefused) as caught:
        secrets.release_for_step(
            ["DB_PASSWORD"], stage=stage, team_id=run.pipeline.team_id, gate_status=None
        )
    assert caught.value.rule == "scope" and "belongs to environment production" in str(caught.value)
    assert executors  # the executor turns this into a failed step (test above)

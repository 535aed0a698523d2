"""Schemathesis against the OpenAPI schema the app serves at /api/schema/: every operation,
a bounded number of generated requests (valid and invalid), sent through the real WSGI
application (orchestrator.wsgi) as a superuser, a developer, an approver and a compliance
manager (API tokens), and two
checks on every response: no 5xx (`not_a_server_error`) and the response matches the schema
for its status (`response_schema_conformance`).

Path parameters are half the time those of real objects of the world (a run at its gate, its
gate, the policy, its decision, carl's report job, a finished run to retry, the step of a log),
so GET-by-id and the actions reach real rows, not only 404s. Deterministic (`derandomize`):
the same requests on every run.

Database: the requests run in this thread, on the test's connection, inside the module's
world transaction and the test's savepoint — like Django's test client, which disconnects
`close_old_connections` from the request signals for the same reason (a WSGI request would
otherwise close the connection in the middle of the test transaction). Each operation's
changes are rolled back with its test.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from orchestrator.wsgi import application

SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/", application)
MAX_EXAMPLES = 25
# A superuser and a developer; the approver and the compliance manager reach what only they
# may do (approve a gate, download carl's report), so those responses are checked too.
ROLES = ("superuser", "developer", "approver", "compliance_manager")
CHECKS = [not_a_server_error, response_schema_conformance]

# Operations left out, each with its reason. Everything else in the schema is fuzzed.
EXCLUDED: dict[str, str] = {}


def _operations() -> list[str]:
    return sorted(result.ok().label for result in SCHEMA.get_all_operations())


def _real(label: str, world) -> tuple[dict, dict]:
    """Path and query parameters that name real objects of the world for this operation."""
    path = label.split(" ", 1)[1]
    exact = {
        "/api/v1/runs/{id}/retry/": {"id": world.finished_run.pk},  # a finished run
        "/api/v1/policies/{id}/versions/{number}/": {"id": world.policy.pk, "number": 1},
    }
    prefixes = {
        "/api/v1/runs/{id}/": {"id": world.run.pk},  # waiting at its gate
        "/api/v1/gates/{id}/": {"id": world.gate.pk},
        "/api/v1/policies/{id}/": {"id": world.policy.pk},
        "/api/v1/decisions/{id}/": {"id": world.decision.pk},
        "/api/v1/reports/pdf/{id}/": {"id": world.job.pk},  # carl's
        "/api/v1/pipelines/{slug}/": {"slug": world.pipeline.slug},
        "/api/v1/environments/{name}/": {"name": "production"},
        "/api/v1/audit-events/{seq}/": {"seq": world.audit_seq},
    }
    query = {"step": world.step.pk} if path == "/api/v1/runs/{id}/log/" else {}
    if path in exact:
        return exact[path], query
    for prefix, params in prefixes.items():
        if path.startswith(prefix):
            return params, query
    return {}, query


@pytest.fixture
def same_connection():
    """Keep the test's database connection open across WSGI requests (see the docstring)."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.parametrize("label", _operations())
def test_operation(label, world, db, same_connection):
    if label in EXCLUDED:
        pytest.skip(EXCLUDED[label])
    method, path = label.split(" ", 1)
    operation = SCHEMA[path][method]
    path_parameters, query = _real(label, world)
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(mode) for mode in modes]
    if path_parameters or query:
        strategies += [
            operation.as_strategy(mode, path_parameters=path_parameters, query=query or None)
            for mode in modes
        ]
    tokens = {role: world.tokens[role] for role in ROLES}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies), role=st.sampled_from(ROLES))
    def fuzz(case, role):
        response = case.call(headers={"Authorization": f"Token {tokens[role]}"})
        case.validate_response(response, checks=CHECKS)

    fuzz()


def test_every_operation_is_fuzzed_or_excluded():
    labels = set(_operations())
    assert len(labels) > 30
    assert set(EXCLUDED) <= labels, f"stale exclusions: {set(EXCLUDED) - labels}"

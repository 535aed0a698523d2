"""The gate panel shows the plan the policies judged: "3 to add, 1 to change, 1 to destroy"
with the resources, the artifact and its digest; a damaged plan shows why it is unusable."""

from __future__ import annotations

import json
import re

import pytest

from governance.models import Gate
from tests.governance.plan_support import PLAN_PIPELINE, finish_plan, plan_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def planned(make_pipeline, make_run, artifact_storage):
    def make(content):
        run = make_run(make_pipeline("infra-network", definition=PLAN_PIPELINE))
        finish_plan(run, content)
        return run, Gate.objects.get(stage_run__run=run)

    return make


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_approver_sees_the_plan_summary_and_the_resources(
    planned, approver, client_for, django_assert_max_num_queries
):
    run, gate = planned(plan_bytes())
    client = client_for(approver)
    with django_assert_max_num_queries(30):
        body = client.get(f"/runs/{run.pk}/gate-panel/").content.decode()
    assert 'data-role="plan-summary"' in body
    headline = re.search(r'data-role="plan-headline"><strong>([^<]+)</strong>', body)
    assert headline and headline.group(1) == "3 to add, 1 to change, 1 to destroy"
    listed = re.findall(
        r'data-kind="(\w+)"><span class="plan-mark"[^>]*>([^<]+)</span> '
        r'<span class="mono">([^<]+)</span>',
        body,
    )
    assert listed == [
        ("destroy", "-", "aws_security_group_rule.legacy_ssh"),
        ("change", "~", "aws_security_group.payments_api"),
        ("add", "+", "aws_subnet.payments_private_c"),
        ("add", "+", "aws_route_table_association.payments_private_c"),
        ("add", "+", "aws_security_group_rule.payments_https_ingress"),
    ]
    digest = gate.input["artifact_files"][0]["sha256"]
    assert f'title="SHA-256 {digest}"' in body
    assert "artifact plan (tfplan.json) of stage plan" in text(body)
    # The whole run page shows it too, with the approve form under it.
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert page.index('data-role="plan-summary"') < page.index('id="approve-form"')


def test_a_damaged_plan_is_shown_with_its_error(planned, approver, client_for):
    doc = json.loads(plan_bytes())
    del doc["resource_changes"][2]["change"]
    run, gate = planned(json.dumps(doc).encode())
    body = client_for(approver).get(f"/runs/{run.pk}/gate-panel/").content.decode()
    assert 'data-role="plan-error"' in body
    assert "resource_changes[2]: has no `change` object" in body
    assert 'data-role="plan-headline"' not in body


def test_invalid_json_is_shown_on_the_blocked_gate(planned, approver, client_for):
    run, gate = planned(b"{oops")
    body = text(client_for(approver).get(f"/runs/{run.pk}/gate-panel/").content.decode())
    assert "This plan cannot be used: it is not valid JSON (line 1, column 2:" in body


def test_a_gate_without_a_plan_shows_no_plan_section(gated, approver, client_for):
    run, gate = gated
    body = client_for(approver).get(f"/runs/{run.pk}/gate-panel/").content.decode()
    assert "plan-summary" not in body

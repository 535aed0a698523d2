"""OPA's coverage of a policy by its test cases: shown in the policy editor when the cases
are run, and recorded with each published version."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from governance import policies, rego

pytestmark = pytest.mark.django_db

SOURCE = """package clearway.version

import rego.v1

deny contains msg if {
	input.run.parameters.version == "2.0.0"
	msg := "version 2.0.0 is withdrawn"
}

warn contains "a legacy build" if {
	input.run.parameters.legacy
}
"""


def case(version: str, deny: list[str]) -> dict:
    doc = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    doc["run"]["parameters"]["version"] = version
    return {"name": f"version {version}", "input": doc, "expect": {"deny": deny, "warn": []}}


CASES = [case("2.0.0", ["version 2.0.0 is withdrawn"]), case("1.0.0", [])]


def test_running_the_cases_reports_the_lines_they_covered():
    suite = rego.run_test_suite(SOURCE, CASES)
    assert all(r["passed"] for r in suite["results"])
    # the deny rule (head and body) ran; no case has `legacy`, so the warn rule never did
    assert suite["coverage"] == {"covered": [5, 6, 7], "not_covered": [10, 11], "percent": 60.0}
    assert suite["results"][0]["covered"] == [5, 6, 7]


def test_the_editor_shows_coverage_line_by_line(policy_admin, make_policy, production):
    policy = make_policy("version", SOURCE, "hard-mandatory")
    client = Client()
    client.force_login(policy_admin)
    data = {
        "action": "test",
        "description": "",
        "enforcement": "hard-mandatory",
        "environments": ["production"],
        "enabled": "on",
        "source": SOURCE,
        "test_cases": json.dumps(CASES),
        "days": "30",
    }
    page = client.post(f"/policies/{policy.pk}/", data, HTTP_HX_REQUEST="true").content.decode()
    marks = dict(re.findall(r'data-line="(\d+)" data-coverage="(\w+)"', page))
    assert marks == {
        "5": "covered",
        "6": "covered",
        "7": "covered",
        "10": "missed",
        "11": "missed",
    }
    assert "60.0% of the policy's lines (3 covered, 2 not covered)" in page


def test_publishing_records_the_coverage_with_the_version(admin_user, production):
    policy = policies.create_policy(
        actor=admin_user,
        name="version",
        source=SOURCE,
        enforcement="advisory",
        environments=["production"],
        test_cases=CASES,
    )
    version = policies.publish_policy(policy, actor=admin_user)
    version.refresh_from_db()
    assert version.coverage == {"covered": [5, 6, 7], "not_covered": [10, 11], "percent": 60.0}
    # (a policy without test cases is not published at all:
    # tests/governance/test_policy_publish_requires_cases.py)

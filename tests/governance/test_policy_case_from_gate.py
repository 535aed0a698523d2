""" "Start from a real gate's input" in the policy editor: the editor lists the recent gates
the user may view; picking one puts that gate's recorded policy input into a new test case
(name, input, expected deny or pass) at the end of the editor's test cases, to edit and save.
Nothing is saved by it. A gate the user may not view is a 404."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from governance.models import AuditEvent, Policy

pytestmark = pytest.mark.django_db

SOURCE = """package clearway.version

import rego.v1

deny contains msg if {
	input.run.parameters.version == "2.0.0"
	msg := "version 2.0.0 is withdrawn"
}
"""

EXISTING = [{"name": "kept", "input": {"schema_version": 1}, "expect": {"deny": 0}}]


@pytest.fixture
def policy(make_policy, production):
    return make_policy("version", SOURCE, "hard-mandatory")


@pytest.fixture
def editor(policy_admin) -> Client:
    client = Client()
    client.force_login(policy_admin)
    return client


@pytest.fixture
def gate(run_at_gate):
    run, gate = run_at_gate(parameters={"version": "2.0.0"})
    assert gate.input and gate.input_hash
    return gate


def post(client, policy, gate_pk, *, expect="deny", name="", cases=EXISTING, source=SOURCE):
    return client.post(
        f"/policies/{policy.pk}/",
        {
            "action": "from-gate",
            "gate": str(gate_pk),
            "gate_expect": expect,
            "gate_case_name": name,
            "description": "",
            "enforcement": "hard-mandatory",
            "environments": ["production"],
            "enabled": "on",
            "source": source,
            "test_cases": json.dumps(cases),
            "days": "30",
        },
    )


def cases_in(page: str) -> list[dict]:
    text = re.search(r'<textarea name="test_cases"[^>]*>\n?(.*?)</textarea>', page, re.S)
    return json.loads(unescape(text.group(1)))


def test_the_editor_lists_the_gates_the_user_may_view(editor, policy, gate):
    page = editor.get(f"/policies/{policy.pk}/").content.decode()
    options = re.findall(r'<select name="gate" id="id_gate">(.*?)</select>', page, re.S)
    assert options, "no gate list"
    assert f'value="{gate.pk}"' in options[0]
    assert "payments-api #1" in options[0] and "production" in options[0]


def test_a_gate_input_becomes_a_new_test_case(editor, policy, gate):
    before = (Policy.objects.get(pk=policy.pk).test_cases, AuditEvent.objects.count())
    response = post(editor, policy, gate.pk, name="2.0.0 at the real gate")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="case-added"' in page and "not saved yet" in page
    cases = cases_in(page)
    assert cases[:-1] == EXISTING  # the editor's cases are kept, the new one is last
    new = cases[-1]
    assert new["name"] == "2.0.0 at the real gate"
    gate.refresh_from_db()
    assert new["input"] == gate.input  # the recorded policy input, as the gate evaluated it
    # "deny": the messages the editor's source gives on that input
    assert new["expect"] == {"deny": ["version 2.0.0 is withdrawn"]}
    # nothing saved: the draft and the audit log are unchanged
    assert (Policy.objects.get(pk=policy.pk).test_cases, AuditEvent.objects.count()) == before


def test_a_passing_case_expects_nothing_denied_and_gets_a_name(editor, policy, gate):
    page = post(editor, policy, gate.pk, expect="pass").content.decode()
    new = cases_in(page)[-1]
    assert new["expect"] == {"deny": []}
    assert new["name"] == "payments-api #1 deploy-production (production) passes"


def test_a_deny_case_the_source_does_not_catch_expects_one_message(editor, policy, run_at_gate):
    _, other = run_at_gate(parameters={"version": "1.0.0"})
    new = cases_in(post(editor, policy, other.pk).content.decode())[-1]
    assert new["expect"] == {"deny": 1}  # fails until the policy denies it


def test_saving_keeps_the_case(editor, policy, gate):
    page = post(editor, policy, gate.pk).content.decode()
    cases = cases_in(page)
    response = editor.post(
        f"/policies/{policy.pk}/",
        {
            "action": "save",
            "description": "",
            "enforcement": "hard-mandatory",
            "environments": ["production"],
            "enabled": "on",
            "source": SOURCE,
            "test_cases": json.dumps(cases),
            "days": "30",
        },
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    gate.refresh_from_db()
    assert policy.test_cases[-1]["input"] == gate.input


def test_a_gate_the_user_may_not_view_is_404(make_user, policy, gate):
    # may edit policies, but sees no pipeline (so no run, no gate)
    pete = make_user("pete")
    pete.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="governance", codename__in=["change_policy", "view_policy"]
        )
    )
    client = Client()
    client.force_login(pete)
    page = client.get(f"/policies/{policy.pk}/").content.decode()
    assert f'<option value="{gate.pk}"' not in page
    assert post(client, policy, gate.pk).status_code == 404
    assert post(client, policy, "x").status_code == 404


def test_a_reader_cannot_use_it(client, viewer, policy, gate):
    client.force_login(viewer)
    assert post(client, policy, gate.pk).status_code == 403


def test_broken_test_case_json_is_not_overwritten(editor, policy, gate):
    response = editor.post(
        f"/policies/{policy.pk}/",
        {
            "action": "from-gate",
            "gate": str(gate.pk),
            "gate_expect": "deny",
            "enforcement": "hard-mandatory",
            "environments": ["production"],
            "source": SOURCE,
            "test_cases": "[{broken",
            "days": "30",
        },
    )
    page = response.content.decode()
    assert 'id="case-refused"' in page and "Fix the source and the test cases first" in page
    assert "[{broken" in page


def test_the_gate_list_does_not_grow_with_history(
    editor, policy, run_at_gate, django_assert_max_num_queries
):
    for _ in range(3):
        run_at_gate()
    with django_assert_max_num_queries(40) as counted:
        editor.get(f"/policies/{policy.pk}/")
    few = len(counted.captured_queries)
    for _ in range(4):
        run_at_gate()
    with django_assert_max_num_queries(few):
        editor.get(f"/policies/{policy.pk}/")

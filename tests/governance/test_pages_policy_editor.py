"""The policy pages: list, editor (save draft with compile errors at their line, run tests,
dry run, publish), version history with diffs."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from governance.models import AuditEvent, ChangeRequest, Outcome, Policy, PolicyVersion

pytestmark = pytest.mark.django_db

SOURCE = """package clearway.version

import rego.v1

deny contains msg if {
	input.run.parameters.version == "2.0.0"
	msg := "version 2.0.0 is withdrawn"
}
"""

SOURCE_V2 = """package clearway.version

import rego.v1

deny contains msg if {
	input.run.parameters.version in {"2.0.0", "2.0.1"}
	msg := sprintf("version %s is withdrawn", [input.run.parameters.version])
}
"""

# A stray `)` on line 6, column 12 (OPA: "unexpected ) token").
SYNTAX_ERROR = """package clearway.version

import rego.v1

deny contains msg if {
	msg := "x")
}
"""

V0_RULE = """package clearway.version

deny[msg] {
	msg := "old style"
}
"""

DENY_EVERYTHING = """package clearway.version

import rego.v1

deny contains "nothing may pass" if { true }
"""


def case(name: str, version: str, deny) -> dict:
    from governance import rego

    doc = json.loads(json.dumps(rego.demo_policies()[0]["tests"][0]["input"]))
    doc["run"]["parameters"]["version"] = version
    return {"name": name, "input": doc, "expect": {"deny": deny}}


@pytest.fixture
def policy(make_policy, production):
    return make_policy("version", SOURCE, "hard-mandatory")


@pytest.fixture
def editor(policy_admin) -> Client:
    client = Client()
    client.force_login(policy_admin)
    return client


def form(source: str = SOURCE, *, action: str = "save", cases=None, **extra) -> dict:
    return {
        "action": action,
        "description": "",
        "enforcement": "hard-mandatory",
        "environments": ["production"],
        "enabled": "on",
        "source": source,
        "test_cases": json.dumps(cases if cases is not None else []),
        "days": "30",
        **extra,
    }


def snapshot(policy: Policy) -> tuple:
    policy.refresh_from_db()
    return (
        policy.source,
        policy.updated_at,
        policy.current_version_id,
        PolicyVersion.objects.count(),
        AuditEvent.objects.count(),
    )


# --- saving -------------------------------------------------------------------------------


def test_broken_policy_shows_errors_at_their_line_and_saves_nothing(editor, policy):
    before = snapshot(policy)
    response = editor.post(f"/policies/{policy.pk}/", form(SYNTAX_ERROR))
    assert response.status_code == 200
    page = response.content.decode()
    errors = re.search(r'<ul class="line-errors" id="source-errors".*?</ul>', page, re.S).group(0)
    assert '<span class="muted">policy.rego,</span>' in errors  # OPA's file name
    assert (
        "line 6, column 12" in errors
        and "rego_parse_error: unexpected ) token: expected \\n or ; or }" in errors
    )
    assert '<span class="error-line" title="problem on line 6">6</span>' in page
    assert 'data-error-lines="6"' in page
    assert "msg := &quot;x&quot;)" in page  # the author's text is kept in the editor
    assert snapshot(policy) == before


def test_rego_v0_is_refused_with_its_line(editor, policy):
    before = snapshot(policy)
    page = editor.post(f"/policies/{policy.pk}/", form(V0_RULE)).content.decode()
    assert "line 3, column 1" in page and "Rego v0 rule head" in page
    assert snapshot(policy) == before


def test_broken_new_policy_is_not_created(editor, environments):
    events = AuditEvent.objects.count()
    response = editor.post("/policies/new/", form(SYNTAX_ERROR, name="fresh"))
    assert response.status_code == 200
    assert "line 6, column 12" in response.content.decode()
    assert not Policy.objects.exists()
    assert AuditEvent.objects.count() == events


def test_compile_errors_show_even_when_other_fields_are_wrong(editor, environments):
    page = editor.post("/policies/new/", form(SYNTAX_ERROR)).content.decode()  # no name
    assert "This field is required." in page
    assert "line 6, column 12" in page and 'class="error-line"' in page
    assert not Policy.objects.exists()


def test_new_policy_is_created_as_a_draft(editor, environments):
    response = editor.post("/policies/new/", form(SOURCE, name="fresh"))
    policy = Policy.objects.get(name="fresh")
    assert response.status_code == 302
    assert response["Location"] == f"/policies/{policy.pk}/"
    assert policy.current_version is None
    assert list(policy.environments.values_list("name", flat=True)) == ["production"]
    assert AuditEvent.objects.filter(action="policy.create", target_id=str(policy.pk)).exists()


def test_duplicate_name_is_shown_on_the_name_field(editor, policy):
    response = editor.post("/policies/new/", form(SOURCE, name="version"))
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Policy.objects.count() == 1


def test_save_draft_keeps_the_published_version(editor, policy):
    response = editor.post(f"/policies/{policy.pk}/", form(SOURCE_V2, enforcement="soft-mandatory"))
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.source == SOURCE_V2 and policy.enforcement == "soft-mandatory"
    assert policy.current_version.number == 1 and policy.has_unpublished_changes
    event = AuditEvent.objects.get(action="policy.update")
    assert event.details["changes"]["enforcement"] == {
        "from": "hard-mandatory",
        "to": "soft-mandatory",
    }
    page = editor.get("/policies/").content.decode()
    assert "unpublished changes" in page


def test_crlf_from_the_browser_is_stored_as_lf(editor, policy):
    editor.post(f"/policies/{policy.pk}/", form(SOURCE_V2.replace("\n", "\r\n")))
    policy.refresh_from_db()
    assert policy.source == SOURCE_V2


def test_bad_test_case_json_names_line_and_column(editor, policy):
    before = snapshot(policy)
    response = editor.post(
        f"/policies/{policy.pk}/", {**form(SOURCE_V2), "test_cases": '[\n  {"name": }\n]'}
    )
    assert response.status_code == 200
    assert "line 2, column 12" in response.content.decode()
    assert snapshot(policy) == before


def test_test_case_shape_is_checked(editor, policy):
    response = editor.post(
        f"/policies/{policy.pk}/", {**form(SOURCE_V2), "test_cases": '[{"name": "x"}]'}
    )
    assert response.status_code == 200
    assert "needs an input object" in response.content.decode()


def test_disabling_waits_for_a_second_admin_and_is_audited_as_disable(
    editor, policy, second_policy_admin
):
    from governance import change_requests

    data = form()
    del data["enabled"]
    response = editor.post(f"/policies/{policy.pk}/", data, follow=True)
    assert "Your change waits for a second policy admin" in response.content.decode()
    policy.refresh_from_db()
    assert policy.enabled  # not yet: four eyes
    proposed = change_requests.pending_for(second_policy_admin).get()
    change_requests.approve(proposed, actor=second_policy_admin)
    policy.refresh_from_db()
    assert not policy.enabled
    assert AuditEvent.objects.filter(action="policy.disable").count() == 1


# --- tests and dry runs (htmx partials) ---------------------------------------------------


def test_run_tests_partial_shows_got_and_expected(editor, policy):
    cases = [
        case("2.0.0 is refused", "2.0.0", ["version 2.0.0 is withdrawn"]),
        case("1.0.0 passes", "1.0.0", ["surely denied"]),
    ]
    before = snapshot(policy)
    response = editor.post(
        f"/policies/{policy.pk}/", form(action="test", cases=cases), headers={"HX-Request": "true"}
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in page and 'id="test-results"' in page
    assert "1 of 2 failed" in page
    passed, failed = re.findall(r'<tr class="test-(passed|failed)', page)
    assert (passed, failed) == ("passed", "failed")
    assert "missing deny" in page and "surely denied" in page
    assert snapshot(policy) == before  # testing saves nothing


def test_counted_expectations_are_shown_as_counts(editor, policy):
    cases = [case("2.0.0 denies once", "2.0.0", 1), case("1.0.0 denies nothing", "1.0.0", 0)]
    page = editor.post(
        f"/policies/{policy.pk}/", form(action="test", cases=cases), headers={"HX-Request": "true"}
    ).content.decode()
    assert "all 2 passed" in page
    assert "1 message<" in page and "0 messages<" in page


def test_readers_see_the_cases_as_a_table(client, viewer, policy):
    policy.test_cases = [case("2.0.0 is refused", "2.0.0", 1), case("1.0.0 passes", "1.0.0", [])]
    policy.save()
    client.force_login(viewer)
    page = client.get(f"/policies/{policy.pk}/").content.decode()
    table = re.search(r'<table class="table" id="case-table">.*?</table>', page, re.S).group(0)
    assert "2.0.0 is refused" in table and "1 message<" in table and "nothing" in table


def test_run_tests_on_broken_source_lists_compile_errors(editor, policy):
    response = editor.post(
        f"/policies/{policy.pk}/",
        form(SYNTAX_ERROR, action="test", cases=[case("any", "1.0.0", [])]),
        headers={"HX-Request": "true"},
    )
    page = response.content.decode()
    assert 'class="line-errors" id="test-compile-errors"' in page
    assert "line 6, column 12" in page


def test_run_tests_without_htmx_renders_the_whole_page(editor, policy):
    response = editor.post(
        f"/policies/{policy.pk}/", form(action="test", cases=[case("ok", "1.0.0", [])])
    )
    page = response.content.decode()
    assert "<html" in page and 'id="test-results"' in page and "all 1 passed" in page


@pytest.fixture
def history(policy, run_at_gate, finish_stage):
    """Two production gates in the last days: one for version 2.0.0, one for 1.0.0."""
    run_at_gate(parameters={"version": "2.0.0"})
    run_at_gate(parameters={"version": "1.0.0"})


def test_dry_run_partial_renders_the_summary(editor, policy, history):
    response = editor.post(
        f"/policies/{policy.pk}/",
        form(DENY_EVERYTHING, action="dry-run", days="7"),
        headers={"HX-Request": "true"},
    )
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page
    assert 'id="dry-run-results"' in page
    assert "would have blocked 2 of 2 releases in 7 days" in page
    # The published version denied only 2.0.0: the 1.0.0 gate is the changed decision.
    changes = re.search(r'<table class="table" id="dry-run-changes">.*?</table>', page, re.S)
    assert changes.group(0).count("<tr>") == 2  # header + one changed decision
    assert "nothing may pass" in changes.group(0)
    event = AuditEvent.objects.get(action="policy.dry_run")
    assert event.details["days"] == 7 and event.details["would_block"] == 2


def test_dry_run_refuses_a_broken_source(editor, policy, history):
    response = editor.post(
        f"/policies/{policy.pk}/",
        form(SYNTAX_ERROR, action="dry-run"),
        headers={"HX-Request": "true"},
    )
    page = response.content.decode()
    assert "line 6, column 12" in page and "nothing was replayed" in page


def test_dry_run_days_are_limited_to_the_choices(editor, policy):
    response = editor.post(
        f"/policies/{policy.pk}/",
        form(action="dry-run", days="5000"),
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not AuditEvent.objects.filter(action="policy.dry_run").exists()


def test_unknown_action_is_a_bad_request(editor, policy):
    assert editor.post(f"/policies/{policy.pk}/", form(action="delete")).status_code == 400


# --- publishing and versions --------------------------------------------------------------


def test_publish_with_a_failing_test_is_blocked(editor, policy):
    cases = [
        case("2.0.1 is refused", "2.0.1", ["version 2.0.1 is withdrawn"]),
        case("2.0.2 is refused too", "2.0.2", ["version 2.0.2 is withdrawn"]),
        case("1.0.0 passes", "1.0.0", []),
    ]
    response = editor.post(
        f"/policies/{policy.pk}/", form(SOURCE_V2, action="publish", cases=cases)
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="publish-refused"' in page and "1 of 3 test case(s) failed" in page
    assert not ChangeRequest.objects.exists()  # a failing test case: nothing to review
    failed = re.findall(r'<tr class="test-failed.*?</tr>', page, re.S)
    assert len(failed) == 1 and "2.0.2 is refused too" in failed[0]
    policy.refresh_from_db()
    assert policy.current_version.number == 1
    assert policy.source == SOURCE_V2  # the draft is saved, not published
    assert PolicyVersion.objects.filter(policy=policy).count() == 1
    refused = AuditEvent.objects.get(action="change_request.propose")
    assert refused.outcome == Outcome.FAILURE


def test_publish_creates_the_next_version(editor, policy, second_policy_admin):
    cases = [
        case("2.0.1 is refused", "2.0.1", ["version 2.0.1 is withdrawn"]),
        case("1.0.0 passes", "1.0.0", []),
    ]
    response = editor.post(
        f"/policies/{policy.pk}/", form(SOURCE_V2, action="publish", cases=cases)
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.current_version.number == 1  # proposed, not published: four eyes
    page = editor.get(response["Location"]).content.decode()
    assert "Your change waits for a second policy admin" in page
    assert "2 of 2 passed" in page and "would have blocked" in page
    proposed = ChangeRequest.objects.get()
    reviewer = Client()
    reviewer.force_login(second_policy_admin)
    review = reviewer.get(f"/change-requests/{proposed.pk}/").content.decode()
    assert 'id="cr-review-form"' in review and "diff-add" in review
    response = reviewer.post(f"/change-requests/{proposed.pk}/", {"action": "approve"})
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.current_version.number == 2 and policy.current_version.source == SOURCE_V2
    assert not policy.has_unpublished_changes
    publish = AuditEvent.objects.get(action="policy.publish")
    assert publish.details["version"] == 2 and publish.details["approved_by"] == "pierre"


def test_the_proposer_is_refused_on_the_review_page(editor, policy):
    cases = [
        case("2.0.1 is refused", "2.0.1", ["version 2.0.1 is withdrawn"]),
        case("1.0.0 passes", "1.0.0", []),
    ]
    editor.post(f"/policies/{policy.pk}/", form(SOURCE_V2, action="publish", cases=cases))
    proposed = ChangeRequest.objects.get()
    page = editor.get(f"/change-requests/{proposed.pk}/").content.decode()
    assert 'id="cr-review-form"' not in page and "Withdraw" in page
    response = editor.post(f"/change-requests/{proposed.pk}/", {"action": "approve"})
    assert response.status_code == 403 and "four eyes" in response.content.decode()
    policy.refresh_from_db()
    assert policy.current_version.number == 1


def test_publishing_an_unchanged_draft_says_so(editor, policy):
    response = editor.post(f"/policies/{policy.pk}/", form(SOURCE, action="publish"), follow=True)
    assert "nothing to publish" in response.content.decode()
    assert PolicyVersion.objects.filter(policy=policy).count() == 1


def test_versions_page_shows_the_diff(editor, policy, publish_version):
    publish_version(policy, SOURCE_V2)
    page = editor.get(f"/policies/{policy.pk}/versions/").content.decode()
    assert '<h2 id="diff-title">v1 → v2</h2>' in page
    assert (
        '<div class="diff-del">-\tinput.run.parameters.version == &quot;2.0.0&quot;</div>' in page
    )
    assert 'class="diff-add">+\tinput.run.parameters.version in {' in page
    first = editor.get(f"/policies/{policy.pk}/versions/?from=0&to=1").content.decode()
    assert first.count('class="diff-add"') == len(SOURCE.splitlines())


def test_versions_page_compares_the_draft(editor, policy):
    editor.post(f"/policies/{policy.pk}/", form(SOURCE_V2))
    page = editor.get(f"/policies/{policy.pk}/versions/").content.decode()
    assert '<h2 id="diff-title">v1 → draft</h2>' in page
    assert "diff-add" in page


@pytest.mark.parametrize("query", ["?from=abc", "?to=99", "?from=-1&to=1"])
def test_versions_page_unknown_version_is_404(editor, policy, query):
    assert editor.get(f"/policies/{policy.pk}/versions/{query}").status_code == 404


# --- the list -----------------------------------------------------------------------------


def test_list_shows_state(editor, make_policy, policy):
    make_policy("dormant", DENY_EVERYTHING, "advisory", environments=[], tiers=["staging"])
    Policy.objects.filter(name="dormant").update(enabled=False)
    page = editor.get("/policies/").content.decode()
    row = re.search(r'<tr data-policy="dormant">.*?</tr>', page, re.S).group(0)
    assert "enf-advisory" in row and "tier staging" in row and "disabled" in row and "v1" in row
    row = re.search(r'<tr data-policy="version">.*?</tr>', page, re.S).group(0)
    assert "enf-hard-mandatory" in row and "production" in row and "published" in row


def test_list_query_count_does_not_grow(editor, make_policy, policy, django_assert_max_num_queries):
    editor.get("/policies/")
    with django_assert_max_num_queries(12) as small:
        editor.get("/policies/")
    for n in range(20):
        make_policy(f"p{n}", DENY_EVERYTHING, "advisory")
    with django_assert_max_num_queries(len(small)):
        editor.get("/policies/")


def test_editor_survives_the_thread_that_started_the_evaluators(editor, policy):
    """ASGI servers run each request in a thread that ends with it. Evaluators started while
    serving one request must still serve the next (they used to die with the request's thread,
    and the next save or test run failed with "evaluator crashed (signal 9)")."""
    import threading

    from governance import rego

    rego.shutdown_pool()
    request_thread = threading.Thread(target=rego.warm_up)  # as the first request would
    request_thread.start()
    request_thread.join()
    response = editor.post(
        f"/policies/{policy.pk}/",
        form(SOURCE_V2, action="test", cases=[case("ok", "1.0.0", [])]),
        headers={"HX-Request": "true"},
    )
    assert "all 1 passed" in response.content.decode()

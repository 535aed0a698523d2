"""A policy admin saves a policy that does not compile: the editor shows the error at its
line (list and gutter), keeps the text, and nothing is saved.

The source is edited in the code editor (CodeMirror, static/js/code-editor.js); the hidden
textarea is the form field and follows it. `set_source` replaces the whole text through
CodeMirror's API (typing 30 lines would have brackets closed for us)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

BROKEN_LINE = 21
GOOD = "\tcount(sre_approvers) < required_approvals\n"
BAD = "\tcount(sre_approvers) < < required_approvals\n"

SET_SOURCE = """(text) => {
  const view = document.getElementById("id_source").codeMirror;
  view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: text}});
}"""
CURSOR = """() => {
  const view = document.getElementById("id_source").codeMirror;
  return view.state.selection.main.head;
}"""
ERROR_NUMBERS = "#policy-form .cm-gutterElement.cm-error-line-number"


def set_source(page, text: str) -> None:
    page.evaluate(SET_SOURCE, text)


def test_broken_policy_shows_its_line_and_saves_nothing(world, login, shot):
    from governance.models import AuditEvent, Policy

    policy = Policy.objects.get(name="prod-approvals")
    source = policy.source
    assert source.split("\n")[BROKEN_LINE - 1] + "\n" == GOOD
    broken = source.replace(GOOD, BAD)

    page = login(world.paula)
    page.goto("/policies/")
    expect_live(page)
    page.get_by_role("link", name="prod-approvals", exact=True).click()
    page.wait_for_url(f"**/policies/{policy.pk}/")
    editor = page.locator("form#policy-form textarea[name=source]")
    expect(editor).to_have_value(source)
    expect(page.locator(".line-errors")).to_have_count(0)
    expect(page.locator("#policy-form .cm-editor")).to_be_visible()

    before = (policy.updated_at, policy.versions.count(), AuditEvent.objects.count())
    set_source(page, broken)
    expect(editor).to_have_value(broken)
    page.locator("form#policy-form button[name=action][value=save]").click()
    page.wait_for_load_state()

    # The error, at its line: in the list above the editor...
    errors = page.locator("#source-errors li")
    expect(errors.first).to_contain_text(f"line {BROKEN_LINE}, column")
    expect(page.locator("#source-errors-title")).to_contain_text("nothing was saved")
    for n in range(errors.count()):
        expect(errors.nth(n)).to_contain_text(f"line {BROKEN_LINE}")
    # ...and in the code editor's gutter, that line only.
    expect(page.locator(ERROR_NUMBERS)).to_have_text([str(BROKEN_LINE)])
    expect(page.locator("#policy-form .cm-line.cm-error-line")).to_have_count(1)
    # The broken text is still in the editor, to be fixed.
    expect(editor).to_have_value(broken)
    expect(editor).to_have_attribute("aria-invalid", "true")
    expect_live(page)
    shot(page, "08-policy-editor-error")

    # A click on the error puts the cursor at its line and column.
    link = page.locator("#source-errors a[data-line]").first
    column = int(link.get_attribute("data-column"))
    link.click()
    expect(page.locator("#policy-form .cm-editor")).to_have_class(re.compile(r"\bcm-focused\b"))
    offset = sum(len(line) + 1 for line in broken.split("\n")[: BROKEN_LINE - 1]) + column - 1
    assert page.evaluate(CURSOR) == offset

    # Nothing was saved: same draft, same versions, nothing audited.
    policy.refresh_from_db()
    assert policy.source == source
    assert (policy.updated_at, policy.versions.count(), AuditEvent.objects.count()) == before


# Where OPA puts them: a stray `)` is a parse error at that `)`; a dangling `==` makes the
# next line's `msg := ...` its right-hand side, and OPA refuses that assignment to a call at
# the start of the expression.
@pytest.mark.parametrize(
    ("bad", "line", "column", "message"),
    [
        (
            "\tcount(sre_approvers)) < required_approvals\n",
            21,
            22,
            "rego_parse_error: unexpected ) token",
        ),
        ("\tcount(sre_approvers) ==\n", 21, 2, "rego_compile_error: cannot assign to call"),
    ],
    ids=["stray-parenthesis", "dangling-comparison"],
)
def test_opa_syntax_errors_are_shown_with_line_and_column(
    world, login, shot, bad, line, column, message
):
    from governance.models import AuditEvent, Policy

    policy = Policy.objects.get(name="prod-approvals")
    source = policy.source
    broken = source.replace(GOOD, bad)
    assert broken != source

    page = login(world.paula)
    page.goto(f"/policies/{policy.pk}/")
    expect_live(page)
    before = (policy.updated_at, policy.versions.count(), AuditEvent.objects.count())
    editor = page.locator("form#policy-form textarea[name=source]")
    set_source(page, broken)
    page.locator("form#policy-form button[name=action][value=save]").click()
    page.wait_for_load_state()

    errors = page.locator("#source-errors li")
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text(f"policy.rego, line {line}, column {column}: {message}")
    expect(page.locator("#source-errors-title")).to_contain_text("nothing was saved")
    expect(page.locator(ERROR_NUMBERS)).to_have_text([str(line)])
    expect(editor).to_have_value(broken)
    shot(page, f"08-policy-editor-opa-error-{line}-{column}")

    policy.refresh_from_db()
    assert policy.source == source
    assert (policy.updated_at, policy.versions.count(), AuditEvent.objects.count()) == before


def test_running_the_test_cases_shows_the_lines_they_covered(world, login, shot):
    from governance.models import Policy

    policy = Policy.objects.get(name="prod-approvals")
    page = login(world.paula)
    page.goto(f"/policies/{policy.pk}/")
    expect_live(page)
    page.locator("form#policy-form button[name=action][value=test]").click()
    coverage = page.locator("#coverage")
    expect(coverage).to_be_visible()
    expect(page.locator("#coverage-percent")).to_contain_text("100.0%")
    # the deny rule's first condition (line 21) was evaluated by the cases
    expect(coverage.locator(".cov-line[data-line='21']")).to_have_attribute(
        "data-coverage", "covered"
    )
    expect(coverage.locator(".cov-missed")).to_have_count(0)
    shot(page, "09-policy-editor-coverage")

"""Issue 18, point 6: the policy editor's Rego source is a code editor (CodeMirror 6, vendored
as static/vendor/codemirror-6.min.js) with Rego highlighting and bracket matching, under the
strict CSP; the textarea stays the form field, so saving sends what was typed in the editor.
Also: "Start from a real gate's input" and "Revert to vN" from the page, and axe on it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.axe import serious_violations
from tests.browser.conftest import expect_live

pytestmark = pytest.mark.browser

COLLECT_VIOLATIONS = """() => {
  window.__cspViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => {
    window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
  });
}"""

ADDED = "# edited in the code editor"


def open_editor(world, login, policy):
    page = login(world.paula)
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.add_init_script(f"({COLLECT_VIOLATIONS})()")
    page.goto(f"/policies/{policy.pk}/")
    expect_live(page)
    return page, console


def csp_problems(page, console: list[str]) -> list[str]:
    violations = page.evaluate("() => window.__cspViolations")
    errors = [m for m in console if m.startswith("error") or "Content Security Policy" in m]
    return violations + errors


def test_the_rego_source_is_a_code_editor(world, login, shot):
    from governance.models import Policy

    policy = Policy.objects.get(name="prod-approvals")
    page, console = open_editor(world, login, policy)

    editor = page.locator("#policy-form .cm-editor")
    expect(editor).to_have_count(1)
    expect(editor).to_be_visible()
    # the textarea is still in the form (hidden), holding the same text
    area = page.locator("form#policy-form textarea[name=source]")
    expect(area).to_be_hidden()
    expect(area).to_have_value(policy.source)
    content = editor.locator(".cm-content")
    expect(content).to_have_attribute("aria-labelledby", "source-title")

    # Rego highlighting: keywords, comments, strings and the gate's rule heads have classes.
    expect(content.locator(".tok-keyword", has_text="package").first).to_be_visible()
    expect(content.locator(".tok-keyword", has_text="contains").first).to_be_visible()
    expect(content.locator(".tok-comment").first).to_contain_text("# title:")
    expect(content.locator(".tok-string").first).to_be_visible()
    expect(content.locator(".tok-definition", has_text="deny").first).to_be_visible()
    colour = content.locator(".tok-keyword").first.evaluate("el => getComputedStyle(el).color")
    assert colour == "rgb(138, 26, 122)", colour  # app.css colours the token

    # Bracket matching and closing: typing "{" closes it, and with the cursor between the
    # two both are marked as a matching pair.
    content.click()
    page.keyboard.press("Control+End")
    page.keyboard.press("Enter")
    page.keyboard.type(ADDED)
    page.keyboard.press("Enter")
    page.keyboard.type("extra := {")
    expect(content).to_contain_text("extra := {}")
    matching = content.locator(".cm-matchingBracket")
    expect(matching).to_have_count(2)
    expect(matching).to_have_text(["{", "}"])
    page.keyboard.press("Delete")  # the closing bracket…
    page.keyboard.press("Backspace")  # …and the opening one
    expect(content.locator(".cm-nonmatchingBracket")).to_have_count(0)
    page.keyboard.type('"x"')  # `extra := "x"`
    typed = f'{ADDED}\nextra := "x"'
    doc = "() => document.getElementById('id_source').codeMirror.state.doc.toString()"
    assert page.evaluate(doc).endswith(typed)
    expect(area).to_have_value(page.evaluate(doc))  # the form field follows the editor
    shot(page, "18-policy-code-editor")

    violations = serious_violations(page)
    assert violations == [], violations
    assert csp_problems(page, console) == []

    # The form submits what the editor holds.
    page.locator("form#policy-form button[name=action][value=save]").click()
    expect(page.locator(".messages")).to_contain_text("Draft saved")
    policy.refresh_from_db()
    assert policy.source.rstrip("\n").endswith(typed)
    expect(page.locator("#policy-form .cm-editor .cm-content")).to_contain_text(ADDED)
    assert csp_problems(page, console) == []


def test_a_compile_error_marks_its_line_in_the_code_editor(world, login):
    from governance.models import Policy

    policy = Policy.objects.get(name="prod-approvals")
    page, console = open_editor(world, login, policy)
    content = page.locator("#policy-form .cm-content")
    content.click()
    page.keyboard.press("Control+End")
    page.keyboard.press("Enter")
    page.keyboard.type("broken := (")
    page.locator("form#policy-form button[name=action][value=save]").click()
    errors = page.locator("#source-errors li")
    expect(errors.first).to_contain_text("line")
    line = int(page.locator("#source-errors a[data-line]").first.get_attribute("data-line"))
    expect(page.locator("#policy-form .cm-error-line")).to_have_count(1)
    expect(page.locator("#policy-form .cm-gutterElement.cm-error-line-number")).to_have_text(
        [str(line)]
    )
    # A click on the error puts the cursor on that line of the code editor.
    page.locator("#source-errors a[data-line]").first.click()
    expect(page.locator("#policy-form .cm-editor")).to_have_class(re.compile(r"\bcm-focused\b"))
    cursor_line = page.evaluate(
        """() => {
          const view = document.getElementById("id_source").codeMirror;
          return view.state.doc.lineAt(view.state.selection.main.head).number;
        }"""
    )
    assert cursor_line == line
    assert csp_problems(page, console) == []


def test_a_gate_input_becomes_a_test_case_and_a_version_is_restored(world, login, shot):
    from governance import policies
    from governance.models import AuditEvent, Gate, Policy
    from orchestrator import actions

    policy = Policy.objects.get(name="main-branch")
    # a gate with a recorded input: trigger a run and let it reach its production gate
    run = actions.trigger_run(world.pipeline, actor=world.dana, parameters={"version": "7.0.0"})
    page, console = open_editor(world, login, policy)
    page.goto(f"/runs/{run.pk}/")
    expect(page.locator("#gate-panel [data-gate-id]").first).to_be_visible(timeout=30_000)
    gate = Gate.objects.exclude(input_hash="").get(stage_run__run=run)
    page.goto(f"/policies/{policy.pk}/")
    page.locator("#id_gate").select_option(str(gate.pk))
    page.locator("#id_gate_expect_pass").check()
    page.locator("#id_gate_case_name").fill("a real production gate passes")
    page.locator("#from-gate button[value=from-gate]").click()
    expect(page.locator("#case-added")).to_contain_text("not saved yet")
    cases = page.locator("textarea[name=test_cases]")
    expect(cases).to_contain_text("a real production gate passes")
    page.locator("form#policy-form button[name=action][value=save]").click()
    expect(page.locator(".messages")).to_contain_text("Draft saved")
    policy.refresh_from_db()
    gate.refresh_from_db()
    assert policy.test_cases[-1]["input"] == gate.input

    # Revert: change the draft's source, then restore version 1 from the page.
    policies.save_draft(policy, actor=world.paula, source=policy.source + "\n# draft change\n")
    page.reload()
    page.get_by_role("button", name="Revert the draft to version 1").click()
    expect(page.locator(".messages")).to_contain_text("The draft is now version 1")
    policy.refresh_from_db()
    assert policy.source == policy.versions.get(number=1).source
    assert AuditEvent.objects.filter(action="policy.revert").count() == 1
    expect(page.locator("#policy-form .cm-content")).not_to_contain_text("# draft change")
    assert csp_problems(page, console) == []

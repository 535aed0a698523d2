"""Issue 18, point 10: the API docs page (Swagger UI) loads with a clean console — no
Content-Security-Policy violation (drf-spectacular's template had an inline <style>)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

COLLECT_VIOLATIONS = """() => {
  window.__cspViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => {
    window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
  });
}"""


def test_the_api_docs_page_has_no_csp_violation(world, login, shot):
    page = login(world.dana)
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.add_init_script(f"({COLLECT_VIOLATIONS})()")
    page.goto("/api/docs/")
    expect(page.locator("#swagger-ui .info .title")).to_contain_text("Clearway API")
    expect(page.locator("#swagger-ui .opblock").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    shot(page, "17-api-docs")
    violations = page.evaluate("() => window.__cspViolations")
    assert violations == [], violations
    errors = [m for m in console if m.startswith("error") or "Content Security Policy" in m]
    assert errors == [], errors
    # The page's own styles still apply, from a file.
    assert page.evaluate("() => getComputedStyle(document.body).margin") == "0px"

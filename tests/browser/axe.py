"""axe-core in the browser tests: `serious_violations(page)` runs axe in the page and returns
its serious and critical violations (impact, rule id, the first nodes' selectors).

axe-core is the npm package installed by .ci/axe-deps under var/node/ (make axe-deps). Its
source is evaluated through Playwright (the DevTools protocol), not added as a <script>: the
pages' Content-Security-Policy allows no inline script, and the test must not weaken it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tests.integration.conftest import ROOT, require

AXE = ROOT / "var" / "node" / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = ("serious", "critical")

RUN = """async (options) => {
  const result = await window.axe.run(document, options);
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + " :: " + (n.failureSummary || "")),
  }));
}"""


@cache
def _source() -> str:
    return Path(AXE).read_text()


def serious_violations(page, *, rules: list[str] | None = None) -> list[dict]:
    require(AXE.exists(), f"axe-core ({AXE.relative_to(ROOT)}; run make axe-deps)")
    if not page.evaluate("() => Boolean(window.axe)"):
        page.evaluate(_source())
    options: dict = {"resultTypes": ["violations"]}
    if rules:
        options["runOnly"] = {"type": "rule", "values": rules}
    found = page.evaluate(RUN, options)
    return [v for v in found if v["impact"] in SERIOUS]

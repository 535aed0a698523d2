"""Log lines as HTML: escaped first, SGR colours as .ansi-* spans, everything else stripped;
and the JavaScript twin in static/js/live.js renders exactly the same."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dashboard.templatetags.dashboard_tags import ansi_to_html

CASES = [
    ("plain text", "plain text"),
    ("<b>&\"'</b>", "&lt;b&gt;&amp;&quot;&#x27;&lt;/b&gt;"),
    ("\x1b[31mred\x1b[0m back", '<span class="ansi-31">red</span> back'),
    (
        "\x1b[1;32mbold green\x1b[22m green",
        '<span class="ansi-32 ansi-bold">bold green</span><span class="ansi-32"> green</span>',
    ),
    ("\x1b[91;4mx\x1b[24;39my", '<span class="ansi-91 ansi-underline">x</span>y'),
    ("\x1b[38;5;196mcube\x1b[m", "cube"),  # 256 colours: parameters skipped, not misread
    ("\x1b[38;2;255;0;0mtrue\x1b[33m", "true"),
    ("\x1b[2K\x1b[1Gprogress 100%", "progress 100%"),
    ("\x1b]0;title\x07after", "after"),
    ("10%\r50%\r100%", "100%"),
    ("done\r", "done"),
    ("tab\there\x00\x07", "tab\there"),
    ("\x1b[31m<script>\x1b[0m", '<span class="ansi-31">&lt;script&gt;</span>'),
    (
        "\x1b[3;2mdim italic\x1b[1mbold",
        '<span class="ansi-dim ansi-italic">dim italic</span>'
        '<span class="ansi-bold ansi-italic">bold</span>',
    ),
]


@pytest.mark.parametrize("line, html", CASES)
def test_ansi_to_html(line, html):
    assert ansi_to_html(line) == html


JS_HARNESS = """
const listeners = {};
global.window = global;
global.document = {
  readyState: "loading",
  addEventListener: () => {},
  getElementById: () => null,
  querySelectorAll: () => [],
  body: { addEventListener: () => {} },
};
global.CustomEvent = class {};
require(process.argv[2]);
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(cases.map((c) => window.Clearway.ansiToHtml(c))));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_javascript_twin_renders_the_same(tmp_path):
    live = Path(__file__).resolve().parents[2] / "static" / "js" / "live.js"
    harness = tmp_path / "harness.js"
    harness.write_text(JS_HARNESS)
    lines = [line for line, _ in CASES]
    out = subprocess.run(
        ["node", str(harness), str(live)],
        input=json.dumps(lines),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert json.loads(out.stdout) == [ansi_to_html(line) for line in lines]


def test_compact_durations_match():
    from dashboard.templatetags.dashboard_tags import duration

    assert [duration(s) for s in (0, 4.4, 65, 3600 + 120, 49 * 3600)] == [
        "0s",
        "4s",
        "1m 05s",
        "1h 02m",
        "2d 1h",
    ]
    assert duration(None) == "—"

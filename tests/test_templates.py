"""Checks over every template file: mistakes the template engine does not report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted(
    p for base in (ROOT / "templates", *ROOT.glob("*/templates")) for p in base.rglob("*.html")
)


def test_there_are_templates_to_check():
    assert len(TEMPLATES) > 10


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_multi_line_comment_tag(path):
    """`{# … #}` is a single-line comment in Django: spread over lines it is shown to the
    user as text. Longer comments use {% comment %}."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for opened in re.finditer(r"\{#", line):
            assert "#}" in line[opened.end() :], f"{path.name}:{number}: {{# without #}}"

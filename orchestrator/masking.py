"""Masking of released secret values in step logs, before a line is stored or streamed.

A safety net, not the control (docs/security.md): a step that prints its secret in pieces,
reversed or in an encoding not listed here is not masked. What is: the value itself, its
base64 (standard and URL-safe, with and without padding), its URL-encoded forms (`%20` and
`+` for spaces), its JSON-escaped form (as inside a JSON string), and each line of a
multi-line value (lines shorter than MIN_PART are left alone: masking every `}` of a PEM
or JSON value would mask the log, not the secret).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_PART = 4


def forms(value: str) -> set[str]:
    """Every text form of `value` that is masked."""
    if not value:
        return set()
    raw = value.encode()
    out = {value}
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode()
        out |= {text, text.rstrip("=")}
    out |= {quote(value, safe=""), quote_plus(value, safe=""), quote(value)}
    out.add(json.dumps(value)[1:-1])
    out.add(json.dumps(value, ensure_ascii=False)[1:-1])
    lines = value.splitlines()
    if len(lines) > 1:
        out |= {line.strip() for line in lines if len(line.strip()) >= MIN_PART}
    return {form for form in out if form}


class Masker:
    """Replaces every form of the given values in a text with ***."""

    def __init__(self, values: Iterable[str]):
        found: set[str] = set()
        for value in values:
            found |= forms(value)
        # Longest first: a value's base64 may contain a shorter form of another value.
        self._pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(found, key=len, reverse=True)))
            if found
            else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

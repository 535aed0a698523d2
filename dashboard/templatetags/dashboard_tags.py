"""Template helpers for the dashboard pages: guarded URLs, ANSI log lines, compact durations
and ages, status classes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe

register = template.Library()


@register.simple_tag
def url_or_none(name, *args, **kwargs):
    """`{% url_or_none "governance:audit" as audit_url %}`: the URL, or None when the name does
    not resolve (yet) — so navigation can link to pages other apps are still building."""
    try:
        return reverse(name, args=args or None, kwargs=kwargs or None)
    except NoReverseMatch:
        return None


@register.filter
def is_under(path: str, url: str | None) -> bool:
    """True when `path` is `url` or below it (for aria-current in the navigation)."""
    if not url:
        return False
    if url == "/":
        return path == "/"
    return path.startswith(url)


# --- ANSI colours -----------------------------------------------------------------------
# Mirrored by static/js/live.js (ansiToHtml): keep both in step.

_SGR = re.compile(r"\x1b\[([0-9;]*)m")
# Every other escape sequence (cursor moves, erase, OSC titles/hyperlinks) is dropped.
_OTHER_ESCAPES = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _apply_sgr(params: str, state: dict) -> None:
    codes = [int(c) if c else 0 for c in params.split(";")] if params else [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            state.clear()
        elif code == 1:
            state["bold"] = True
            state.pop("dim", None)
        elif code == 2:
            state["dim"] = True
            state.pop("bold", None)
        elif code == 3:
            state["italic"] = True
        elif code == 4:
            state["underline"] = True
        elif code == 22:
            state.pop("bold", None)
            state.pop("dim", None)
        elif code == 23:
            state.pop("italic", None)
        elif code == 24:
            state.pop("underline", None)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            state["fg"] = code
        elif code == 39:
            state.pop("fg", None)
        elif code in (38, 48):  # 256-colour / truecolour: not rendered, parameters skipped
            if i + 1 < len(codes) and codes[i + 1] == 5:
                i += 2
            elif i + 1 < len(codes) and codes[i + 1] == 2:
                i += 4
        i += 1


def _classes(state: dict) -> str:
    out = []
    if "fg" in state:
        out.append(f"ansi-{state['fg']}")
    for flag in ("bold", "dim", "italic", "underline"):
        if state.get(flag):
            out.append(f"ansi-{flag}")
    return " ".join(out)


def clean_line(line: str) -> str:
    """A terminal line as it would look: a carriage return overwrites from the start."""
    line = line.rstrip("\r")
    if "\r" in line:
        line = line.rsplit("\r", 1)[1]
    return line


def ansi_to_html(line: str) -> str:
    """One log line as safe HTML: text escaped first, SGR colours as .ansi-* spans, every
    other escape and control character removed."""
    line = clean_line(line)
    out: list[str] = []
    state: dict = {}
    pos = 0
    for match in _SGR.finditer(line):
        _emit(out, line[pos : match.start()], state)
        _apply_sgr(match.group(1), state)
        pos = match.end()
    _emit(out, line[pos:], state)
    return "".join(out)


def _emit(out: list[str], text: str, state: dict) -> None:
    text = _CONTROL.sub("", _OTHER_ESCAPES.sub("", text))
    if not text:
        return
    text = escape(text)
    classes = _classes(state)
    out.append(f'<span class="{classes}">{text}</span>' if classes else text)


@register.filter
def ansi(line: str):
    return mark_safe(ansi_to_html(str(line)))  # noqa: S308 — escaped in _emit


@register.simple_tag
def log_lines(step_id: int, lines: list[dict], first: int = 0):
    """A step's log lines as the run page shows them (`lines` from dashboard.logs.line_parts):
    numbered, linkable, stderr marked, ANSI colours as spans. Built here rather than with a
    template loop: a page may hold thousands of lines, and the template engine costs about
    ten times as much per line. live.js renders the lines that arrive later the same way."""
    if not lines:
        return mark_safe('<div class="log-empty">No output yet.</div>')
    out = []
    for number, line in enumerate(lines, first + 1):  # `first`: offset of the first line
        anchor = f"s{step_id}-L{number}"
        css = "log-line log-stderr" if line["stderr"] else "log-line"
        stamp = ""
        if line["time"]:
            time = escape(line["time"])
            stamp = f'<span class="log-time" title="{time}">{escape(line["time"][11:19])}</span> '
        out.append(
            f'<div class="{css}" id="{anchor}"><a class="log-lineno" href="#{anchor}">'
            f"{number}</a>{stamp}{ansi_to_html(line['text'])}</div>"
        )
    return mark_safe("".join(out))  # noqa: S308 — every value above is escaped or an int


# --- time -------------------------------------------------------------------------------


def _compact(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


@register.filter
def duration(value) -> str:
    """A timedelta (or seconds) as "4s", "3m 05s", "2h 10m", "3d 4h"; "—" for none."""
    if value is None or value == "":
        return "—"
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return _compact(float(value))


@register.filter
def elapsed(start: datetime | None, end: datetime | None = None) -> str:
    """Time from `start` to `end` (or now)."""
    if start is None:
        return "—"
    return _compact(((end or timezone.now()) - start).total_seconds())


@register.filter
def age(value: datetime | None) -> str:
    if value is None:
        return "—"
    return _compact((timezone.now() - value).total_seconds())


@register.filter
def percent(value) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.0f}%" if value * 100 >= 10 or value == 0 else f"{value * 100:.1f}%"


# A run or stage keeps the reason of its last wait or failure; once it moved on (running,
# succeeded) that text is history, not an explanation. live.js mirrors this list.
REASON_STATUSES = frozenset({"waiting", "failed", "blocked", "canceled", "skipped"})


@register.filter
def reason_if(status: str, reason: str) -> str:
    """`{{ stage.status|reason_if:stage.reason }}`: the reason while it explains the status."""
    return reason if status in REASON_STATUSES else ""


@register.filter
def get_item(mapping, key):
    if mapping is None:
        return None
    return mapping.get(key)

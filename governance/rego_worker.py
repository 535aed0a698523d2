"""Isolated Rego evaluator process for Clearway's policy gates.

The web and worker processes never load OPA themselves: they talk to a small pool of these
processes over pipes (see ``governance.rego``). Each one embeds Open Policy Agent's own Go
evaluator (OPA v1.20's ``rego`` package) through ``opa-golib-python-bindings`` and, unless
the sandbox is turned off on purpose, runs under bubblewrap with no network and no view of
Clearway's files. This module is both

* the evaluator entry point (``python path/to/rego_worker.py``), and
* a home for the pure-Python helpers that the parent side shares with it (package and
  rule-head checks, the parser for OPA's error text, the probe input).

The binding is imported lazily, inside :func:`main`, so importing this module from the web
process stays cheap and never pulls native code in. Nothing here imports Django.

Protocol (one JSON document per line):

* the evaluator writes ``{"ready": true, "pid": ..., "engine": ...}`` once it is set up;
* request ``{"id": n, "op": "compile", "source": "..."}`` is answered by one line
  ``{"id": n, "ok": true, "package": "...", "rules": [...]}`` or
  ``{"id": n, "ok": false, "errors": [{"message", "file", "line", "column"}]}``;
* request ``{"id": n, "op": "evaluate", "input": <any JSON>, "policies": [{"name",
  "source"}], "coverage": false}`` is answered by one line per policy, in order, as each
  finishes: ``{"id": n, "index": i, "deny": [...], "warn": [...], "error": null | "...",
  "duration_ms": x}`` (plus ``"coverage"`` and ``"prints"`` when coverage was asked for);
  with ``"batch": true``, by one line ``{"id": n, "results": [<those>, ...]}`` at the end;
* request ``{"id": n, "op": "ping"}`` is answered by ``{"id": n, "pong": true}``.

Responses go to a private duplicate of the original stdout; file descriptor 1 itself is
pointed at stderr, so anything the native library prints can never corrupt the protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import OrderedDict

MODULE_NAME = "policy.rego"

# conftest's conventions: `deny`, `warn` and `violation`, each optionally with a `_suffix`.
# `deny*` and `violation*` are denials, `warn*` are warnings.
RULE_NAME_RE = re.compile(r"^(deny|warn|violation)(?:_[A-Za-z0-9_]+)?$")

# Built-ins that reach out of the evaluator. Refused when a policy is saved; the sandbox
# (no network namespace) stops them anyway if a policy gets past this check.
FORBIDDEN_BUILTINS = {
    ("http", "send"): "it makes HTTP requests",
    ("net", "lookup_ip_addr"): "it makes DNS queries",
}

V1_HINT = (
    "Clearway policies are Rego v1: write multi-value rules as "
    "`deny contains msg if { ... }` and `warn contains msg if { ... }`"
)

# A minimal document that satisfies docs/policy-input.md (schema_version 1). Every policy is
# evaluated against it once when it is compiled, so that deny/warn can be type-checked.
PROBE_INPUT: dict = {
    "schema_version": 2,
    "now": "2000-01-03T12:00:00+00:00",
    "pipeline": {"slug": "probe", "name": "probe", "team": "probe", "version": 1},
    "run": {
        "id": "00000000-0000-0000-0000-000000000000",
        "number": 1,
        "trigger": "manual",
        "triggered_by": {"username": "probe", "groups": []},
        "parameters": {},
    },
    "stage": {"name": "probe", "environment": "probe"},
    "environment": {
        "name": "probe",
        "tier": "development",
        "protected": False,
        "timezone": "UTC",
        "freeze_windows": [],
        "change_windows": [],
        "in_freeze": False,
        "in_change_window": True,
    },
    "previous_stages": [],
    "approvals": [],
    "artifacts": {},
    "artifact_files": [],
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PACKAGE_RE = re.compile(rf"^[ \t]*package[ \t]+({_IDENT}(?:\.{_IDENT})*)[ \t]*(?:#.*)?$", re.M)
_ANY_PACKAGE_RE = re.compile(r"^[ \t]*package\b", re.M)
# `deny[msg] {`, `warn[msg] if {` (anywhere), or `deny[...]` at the start of a line.
_RULE = r"(?:deny|warn|violation)(?:_[A-Za-z0-9_]+)?"
_V0_HEAD_RE = re.compile(
    rf"^(?:({_RULE})[ \t]*\[|[ \t]+({_RULE})[ \t]*\[[^\]\n]*\][ \t]*\{{)", re.M
)
# `deny := ...`, `deny = ...`, `deny if ...`, `deny { ... }`, `default deny ...` starting a
# line (indented too: a local variable called deny/warn is refused as well, which is fine).
_SINGLE_VALUE_HEAD_RE = re.compile(
    r"^[ \t]*(?:default[ \t]+)?(deny|warn)[ \t]*(?::=|=(?!=)|\{|if\b)", re.M
)


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def line_col(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a UTF-8 byte offset into ``source`` (columns in characters)."""
    data = source.encode("utf-8")
    offset = max(0, min(offset, len(data)))
    before = data[:offset]
    line = before.count(b"\n") + 1
    start = before.rfind(b"\n") + 1
    column = len(before[start:].decode("utf-8", errors="replace")) + 1
    return line, column


def _strip_comments(source: str) -> str:
    """Blank out comments (keeping offsets) so that the textual checks ignore them."""
    out = []
    for line in source.split("\n"):
        in_str = False
        cut = len(line)
        i = 0
        while i < len(line):
            ch = line[i]
            if in_str:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch == "#":
                cut = i
                break
            i += 1
        out.append(line[:cut] + " " * (len(line) - cut))
    return "\n".join(out)


def package_of(source: str) -> str | None:
    """The dotted package name of a policy, or None when it has no (simple) package line."""
    match = _PACKAGE_RE.search(_strip_comments(source))
    return match.group(1) if match else None


def static_errors(source: str) -> list[dict]:
    """Checks that need no interpreter: package line, Rego v0 and single-value rule heads."""
    if not isinstance(source, str) or not source.strip():
        return [
            _err(
                "the policy is empty: start it with a package line, e.g. `package clearway.x`", 1, 1
            )
        ]
    text = _strip_comments(source)
    errors: list[dict] = []
    if not _PACKAGE_RE.search(text):
        if _ANY_PACKAGE_RE.search(text):
            at = _ANY_PACKAGE_RE.search(text).start()
            line = text.count("\n", 0, at) + 1
            errors.append(
                _err(
                    "the package name must be a dotted name such as `package clearway.freeze`",
                    line,
                    1,
                )
            )
        else:
            errors.append(
                _err(
                    "missing package declaration: start the policy with `package clearway.<name>`",
                    1,
                    1,
                )
            )
    for match in _V0_HEAD_RE.finditer(text):
        rule = match.group(1) or match.group(2)
        start = match.start(1) if match.group(1) else match.start(2)
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        errors.append(
            _err(
                f"Rego v0 rule head `{rule}[...]` is not supported (OPA v1 reads it as an "
                f"object rule, not a set of messages). {V1_HINT}",
                line,
                column,
            )
        )
    for match in _SINGLE_VALUE_HEAD_RE.finditer(text):
        rule = match.group(1)
        start = match.start(1)
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        errors.append(
            _err(
                f"`{rule}` must be a set of strings built by a multi-value rule; a single-value "
                f"`{rule}` rule is not allowed. {V1_HINT}",
                line,
                column,
            )
        )
    return errors


def _err(message: str, line: int | None = None, column: int | None = None) -> dict:
    return {"message": message, "file": MODULE_NAME, "line": line, "column": column}


def _blank_strings_and_comments(source: str) -> str:
    """``source`` with the insides of strings and comments blanked (same offsets), so that a
    symbol can be looked for without matching text inside a string or a comment."""
    out = list(source)
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch == "#":
            while i < n and source[i] != "\n":
                out[i] = " "
                i += 1
        elif ch == '"':
            i += 1
            while i < n and source[i] not in '"\n':
                if source[i] == "\\" and i + 1 < n:
                    out[i] = " "
                    i += 1
                out[i] = " "
                i += 1
            i += 1
        elif ch == "`":
            i += 1
            while i < n and source[i] != "`":
                if source[i] != "\n":
                    out[i] = " "
                i += 1
            i += 1
        else:
            i += 1
    return "".join(out)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _find(source: str, pattern: str, line: int | None = None) -> tuple[int, int] | None:
    """(line, column) of the first match of a regex in the code (strings and comments left
    out), on ``line`` if given."""
    text = _blank_strings_and_comments(source)
    if line is not None:
        lines = text.split("\n")
        if not 1 <= line <= len(lines):
            return None
        match = re.search(pattern, lines[line - 1])
        return (line, match.start() + 1) if match else None
    match = re.search(pattern, text, re.M)
    return _position(text, match.start()) if match else None


# --- OPA's error text ------------------------------------------------------------------
#
# The binding hands errors over as OPA prints them, e.g.
#
#   1 error occurred: policy.rego:3: rego_parse_error: unexpected ) token
#   	  x := )
#   	       ^
#   bundle activation failed: 2 errors occurred:
#   policy.rego:3: rego_unsafe_var_error: var z is unsafe
#   policy.rego:5: rego_type_error: undefined function foo.bar
#
# Parse errors carry OPA's column as a caret under the line (OPA strips the line's leading
# tabs and shifts the caret by as many); other errors name a line only, and the column is
# that of the symbol the message names on that line (else the line's first character).

_ERROR_RE = re.compile(r"(?:^|\s)([^\s:]+\.rego):(\d+): ([a-z_]+): (.*)$")
_SYMBOL_RES = (
    re.compile(r"^var (\S+) is unsafe"),
    re.compile(r"^var (\S+) (?:assigned above|referenced above)"),
    re.compile(r"^undefined function (\S+)"),
    re.compile(r"^undefined ref: (\S+)"),
    re.compile(r"^([a-z][\w.]*): "),  # eval_builtin_error: `to_number: ...`
    re.compile(r"^rule (?:data\.)?(\S+?) "),
)


def _column_for(source: str, line: int, code: str, message: str) -> int:
    for regex in _SYMBOL_RES:
        match = regex.search(message)
        if not match:
            continue
        symbol = match.group(1).rsplit("data.", 1)[-1]
        parts = [re.escape(p) for p in symbol.split(".") if p]
        if not parts:
            continue
        found = _find(source, r"(?<![\w.])" + r"\s*\.\s*".join(parts) + r"(?!\w)", line)
        if found is None and len(parts) > 1:
            found = _find(source, r"(?<![\w.])" + parts[-1] + r"(?!\w)", line)
        if found:
            return found[1]
    lines = source.split("\n")
    if 1 <= line <= len(lines):
        text = lines[line - 1]
        return len(text) - len(text.lstrip()) + 1
    return 1


def _caret_column(source: str, line: int, caret: str) -> int | None:
    if "^" not in caret:
        return None
    lines = source.split("\n")
    if not 1 <= line <= len(lines):
        return None
    text = lines[line - 1]
    tabs = len(text) - len(text.lstrip("\t"))
    # OPA counts the caret's offset in bytes of the tab-stripped line.
    offset = (caret[1:] if caret.startswith("\t") else caret).index("^")
    head = text.encode("utf-8")[tabs:][: max(0, offset)]
    return tabs + len(head.decode("utf-8", "replace")) + 1


def parse_opa_errors(text: str, source: str) -> list[dict]:
    """OPA's error text -> ``[{"message", "file", "line", "column"}]`` (1-based)."""
    errors: list[dict] = []
    lines = text.split("\n")
    for index, raw in enumerate(lines):
        match = _ERROR_RE.search(raw)
        if not match:
            continue
        file, line, code, message = match.group(1), int(match.group(2)), *match.group(3, 4)
        column = None
        detail = [d for d in lines[index + 1 : index + 3] if d.startswith("\t")]
        if len(detail) == 2:
            column = _caret_column(source, line, detail[1])
        if column is None:
            column = _column_for(source, line, code, message)
        errors.append(
            {"message": f"{code}: {message.strip()}", "file": file, "line": line, "column": column}
        )
    if not errors:
        first = text.strip().splitlines()[0] if text.strip() else "unknown OPA error"
        errors.append(_err(first))
    unique: list[dict] = []
    for err in errors:
        if err not in unique:
            unique.append(err)
    return unique


def format_error(err: dict) -> str:
    if err.get("line"):
        return f"line {err['line']}, column {err['column']}: {err['message']}"
    return err["message"]


# --- the policy's abstract syntax tree --------------------------------------------------

PARSER_MODULE = (
    "package clearway_internal.parser\n\nast := rego.parse_module(input.file, input.source)\n"
)


def _is_var(term, name: str) -> bool:
    return isinstance(term, dict) and term.get("type") == "var" and term.get("value") == name


def _is_str(term, value: str) -> bool:
    return isinstance(term, dict) and term.get("type") == "string" and term.get("value") == value


def _forbidden_calls(node, found: set) -> None:
    if isinstance(node, dict):
        if node.get("type") == "ref" and isinstance(node.get("value"), list):
            ref = node["value"]
            for (head, name), _why in FORBIDDEN_BUILTINS.items():
                if len(ref) >= 2 and _is_var(ref[0], head) and _is_str(ref[1], name):
                    found.add((head, name))
        for value in node.values():
            _forbidden_calls(value, found)
    elif isinstance(node, list):
        for value in node:
            _forbidden_calls(value, found)


def _package_ref(ast: dict) -> tuple[str, str]:
    """(dotted name, a Rego reference to it) of the policy's package."""
    parts = [t.get("value") for t in ast["package"]["path"][1:]]
    ref = "data"
    for part in parts:
        ref += (
            f".{part}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) else f"[{json.dumps(part)}]"
        )
    return ".".join(parts), ref


def check_ast(ast: dict, source: str, builtins: bool = True) -> tuple[list[str], list[dict]]:
    """-> (the deny/warn/violation rule names the policy defines, errors). ``builtins=False``
    skips the refusal of network built-ins (tests of the sandbox only)."""
    errors: list[dict] = []
    rules: list[str] = []
    bad: set[str] = set()
    for rule in ast.get("rules") or []:
        head = rule.get("head") or {}
        ref = head.get("ref") or []
        if not ref or ref[0].get("type") != "var":
            continue
        name = ref[0].get("value")
        if not RULE_NAME_RE.match(str(name)):
            continue
        multi_value = len(ref) == 1 and "key" in head and "value" not in head
        if not multi_value or "args" in head or rule.get("default"):
            if name not in bad:
                bad.add(name)
                where = _find(source, rf"^[ \t]*(?:default[ \t]+)?{re.escape(name)}\b") or (1, 1)
                errors.append(
                    _err(
                        f"`{name}` must be a set of messages built by a multi-value rule "
                        f"(`{name} contains msg if {{ ... }}`); a single-value, object or "
                        f"function `{name}` is not allowed. {V1_HINT}",
                        *where,
                    )
                )
            continue
        if name not in rules:
            rules.append(name)
    found: set = set()
    if builtins:
        _forbidden_calls(ast.get("rules") or [], found)
    for head, name in sorted(found):
        where = _find(source, rf"(?<![\w.]){head}\s*\.\s*{name}(?!\w)") or (None, None)
        errors.append(
            _err(
                f"`{head}.{name}` is not allowed in a Clearway policy: "
                f"{FORBIDDEN_BUILTINS[(head, name)]}, and policies get no network. Put the "
                "data the policy needs into the pipeline's parameters instead",
                *where,
            )
        )
    return rules, errors


# --- the evaluator process -----------------------------------------------------------


def _coverage_lines(report) -> dict | None:
    files = (report or {}).get("files") or {}
    mine = files.get(MODULE_NAME)
    if mine is None:
        return None

    def rows(ranges) -> set[int]:
        out: set[int] = set()
        for item in ranges or []:
            start, end = item["start"]["row"], item["end"]["row"]
            out.update(range(int(start), int(end) + 1))
        return out

    covered = rows(mine.get("covered"))
    return {
        "covered": sorted(covered),
        "not_covered": sorted(rows(mine.get("not_covered")) - covered),
    }


def _message(value) -> str | None:
    """A conftest result: a string, or an object with a string `msg`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("msg"), str):
        return value["msg"]
    return None


class EncodedInput:
    """An input document and its JSON text, encoded once for all the policies of a request."""

    __slots__ = ("value", "data")

    def __init__(self, value):
        self.value = value
        self.data = b"" if value is None else json.dumps(value, ensure_ascii=False).encode()


class _Engine:
    """Compiles policies once per source SHA-256 (one OPA engine each, so that two policies
    with the same package never meet) and evaluates them; single-threaded."""

    def __init__(self, cache_size: int = 256, check_builtins: bool = True):
        self.check_builtins = check_builtins
        from opa_bindings import OpaEngine, OpaError

        self.OpaEngine = OpaEngine
        self.OpaError = OpaError
        self.cache: OrderedDict[str, dict] = OrderedDict()
        self.cache_size = cache_size
        self.prints: list[str] = []
        self.parser = self._new_engine()
        self.parser.add_policy("clearway_parser.rego", PARSER_MODULE)

    def _new_engine(self):
        engine = self.OpaEngine()
        # print() output is kept for test runs, never written to the evaluator's stderr.
        engine.print_handler = lambda message, location: self.prints.append(
            f"{location}: {message}"
        )
        return engine

    def compile(self, source: str) -> dict:
        sha = source_sha256(source)
        entry = self.cache.get(sha)
        if entry is not None:
            self.cache.move_to_end(sha)
            return entry
        entry = self._compile(source)
        self.cache[sha] = entry
        while len(self.cache) > self.cache_size:
            _sha, old = self.cache.popitem(last=False)
            if old.get("engine") is not None:
                old["engine"].close()
        return entry

    def _compile(self, source: str) -> dict:
        errors = static_errors(source)
        if errors:
            return {"ok": False, "errors": errors}
        engine = self._new_engine()
        try:
            engine.add_policy(MODULE_NAME, source)
        except self.OpaError as exc:
            engine.close()
            errors = parse_opa_errors(exc.message, source)
            if any("keyword is required" in e["message"] for e in errors):
                errors = [{**e, "message": f"{e['message']}. {V1_HINT}"} for e in errors]
            return {"ok": False, "errors": errors}
        try:
            ast = self.parser.eval_document(
                "clearway_internal.parser.ast", {"file": MODULE_NAME, "source": source}
            )
        except self.OpaError as exc:
            engine.close()
            return {"ok": False, "errors": parse_opa_errors(exc.message, source)}
        rules, errors = check_ast(ast, source, self.check_builtins)
        package, package_ref = _package_ref(ast)
        if not errors and not rules:
            errors = [
                _err(
                    f"package {package} defines neither `deny` nor `warn` (nor conftest's "
                    f"`deny_*`, `warn_*` or `violation` rules). {V1_HINT}"
                )
            ]
        if errors:
            engine.close()
            return {"ok": False, "errors": errors}
        entry = {
            "ok": True,
            "package": package,
            "rules": rules,
            "engine": engine,
            "query": "; ".join(f"r{i} := {package_ref}.{r}" for i, r in enumerate(rules)),
        }
        # One evaluation on a minimal gate input compiles the whole module (OPA compiles
        # lazily: unsafe variables, undefined functions, type errors come out here) and
        # checks that every rule gives messages.
        deny, warn, error, code, parsed = self._run(entry, PROBE_INPUT, source)
        if error is not None:
            engine.close()
            if code == "prepare_error":
                return {"ok": False, "errors": parsed}
            prefix = "the policy failed on the probe input (a minimal valid gate input): "
            if not parsed:
                return {"ok": False, "errors": [_err(prefix + error)]}
            return {
                "ok": False,
                "errors": [{**e, "message": prefix + e["message"]} for e in parsed],
            }
        return entry

    def _run(self, entry: dict, input_doc, source: str, coverage: bool = False):
        """-> (deny, warn, error text or None, OPA error code, OPA's errors parsed)."""
        try:
            if isinstance(input_doc, EncodedInput) and not coverage:
                results = self._eval_encoded(entry, input_doc.data)
            else:
                if isinstance(input_doc, EncodedInput):
                    input_doc = input_doc.value
                results = entry["engine"].eval_query(entry["query"], input_doc, coverage=coverage)
        except self.OpaError as exc:
            parsed = parse_opa_errors(exc.message, source)
            return [], [], "; ".join(format_error(e) for e in parsed), exc.code, parsed
        if not results:
            return [], [], "the policy result is undefined", "undefined", []
        bindings = results[0]
        deny: set[str] = set()
        warn: set[str] = set()
        for index, rule in enumerate(entry["rules"]):
            values = bindings.get(f"r{index}")
            if not isinstance(values, list):
                return [], [], f"the policy result has no set for `{rule}`", "type", []
            for value in values:
                message = _message(value)
                if message is None:
                    shown = json.dumps(value, ensure_ascii=False)[:200]
                    return (
                        [],
                        [],
                        f"`{rule}` must be a set of strings (or of objects with a `msg` string) "
                        f"but contains {shown}. {V1_HINT}",
                        "type",
                        [],
                    )
                (warn if rule.startswith("warn") else deny).add(message)
        return sorted(deny), sorted(warn), None, None, []

    def _eval_encoded(self, entry: dict, data: bytes) -> list[dict]:
        """``eval_query`` with the input already encoded: a gate evaluates every policy
        against the same document, and the binding would encode it again for each. Uses the
        binding's internals (``_call``, ``_eval_result``) as of the pinned 0.4.4: an upgrade
        that changes them fails the conformance tests."""
        engine = entry["engine"]
        query = entry.setdefault("query_bytes", entry["query"].encode("utf-8"))
        with engine._eval_lock:
            engine._eval_reset()
            found = engine._eval_result(engine._call(engine._lib.OpaEvalQuery, query, data, 0, 0))
        return [r.get("bindings", {}) for r in found or []]

    def evaluate(self, source: str, input_doc, coverage: bool = False) -> dict:
        entry = self.compile(source)
        if not entry["ok"]:
            return {
                "deny": [],
                "warn": [],
                "error": "; ".join(format_error(e) for e in entry["errors"]),
            }
        self.prints = []
        deny, warn, error, _code, _parsed = self._run(entry, input_doc, source, coverage)
        reply = {"deny": deny, "warn": warn, "error": error}
        if coverage:
            reply["coverage"] = _coverage_lines(entry["engine"].last_coverage)
            reply["prints"] = self.prints[:100]
        return reply


# Go reserves address space at start (hundreds of MiB to GiB), so RLIMIT_AS cannot bound it.
# The data limit counts only memory that is really mapped writable; the parent also watches
# the resident size and kills an evaluator past its budget, and GOMEMLIMIT (set by the
# parent) makes Go's collector work harder before that.
DATA_MARGIN_MB = 256


def _set_limits(memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        limit = (memory_mb + DATA_MARGIN_MB) * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _die_with_parent() -> None:
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(Exception):  # Linux only; the parent also kills us explicitly
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Clearway isolated Rego evaluator (OPA)")
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--lib-dir", default="", help="directory holding opa_bindings")
    parser.add_argument("--skip-builtin-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.lib_dir:
        sys.path.insert(0, args.lib_dir)
    _die_with_parent()
    proto = os.dup(1)
    os.dup2(2, 1)  # stray native output goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    engine = _Engine(
        cache_size=args.cache_size, check_builtins=not args.skip_builtin_check
    )  # loads OPA (and starts Go's runtime)
    _set_limits(args.memory_mb)

    def send(obj: dict) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(proto, view)
            view = view[written:]

    send({"ready": True, "pid": os.getpid(), "engine": "opa-golib-python-bindings"})
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        try:
            request = json.loads(line)
        except ValueError:
            send({"id": None, "fatal": "malformed request"})
            continue
        rid = request.get("id")
        op = request.get("op")
        if op == "ping":
            send({"id": rid, "pong": True, "django_loaded": "django" in sys.modules})
        elif op == "compile":
            entry = engine.compile(request.get("source") or "")
            if entry["ok"]:
                send({"id": rid, "ok": True, "package": entry["package"], "rules": entry["rules"]})
            else:
                send({"id": rid, "ok": False, "errors": entry["errors"]})
        elif op == "evaluate":
            coverage = bool(request.get("coverage"))
            try:
                input_doc = EncodedInput(request.get("input"))
            except (TypeError, ValueError) as exc:  # e.g. lone surrogates
                input_doc = request.get("input")
                print(f"input not re-encodable: {exc}", file=sys.stderr)
            batch = [] if request.get("batch") else None
            for index, policy in enumerate(request.get("policies") or []):
                started = time.perf_counter()
                try:
                    reply = engine.evaluate(policy.get("source") or "", input_doc, coverage)
                except Exception as exc:  # a binding error must not kill the evaluator
                    reply = {"deny": [], "warn": [], "error": f"{type(exc).__name__}: {exc}"}
                reply.update(
                    id=rid, index=index, duration_ms=(time.perf_counter() - started) * 1000.0
                )
                if batch is None:
                    send(reply)
                else:
                    batch.append(reply)
            if batch is not None:
                send({"id": rid, "results": batch})
        else:
            send({"id": rid, "fatal": f"unknown op {op!r}"})


if __name__ == "__main__":
    sys.exit(main())

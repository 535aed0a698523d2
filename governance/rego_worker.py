"""Isolated Rego evaluator process for Clearway's policy gates.

The Django process never loads regopy (Microsoft's rego-cpp bindings) itself: it talks to a
small pool of these processes over pipes (see ``governance.rego``). This module is both

* the evaluator entry point (``python -m governance.rego_worker`` or ``python
  path/to/rego_worker.py``), and
* a home for the pure-Python helpers that the parent side shares with it (package and
  rule-head checks, the parser for rego-cpp's error output, the probe input).

regopy is imported lazily, inside :func:`main`, so importing this module from the web
process stays cheap and never pulls native code in. Nothing here imports Django.

Protocol (one JSON document per line):

* the evaluator writes ``{"ready": true, "pid": ..., "regopy": ...}`` once it is set up;
* request ``{"id": n, "op": "compile", "source": "..."}`` is answered by one line
  ``{"id": n, "ok": true, "package": "...", "rules": [...]}`` or
  ``{"id": n, "ok": false, "errors": [{"message", "line", "column"}]}``;
* request ``{"id": n, "op": "evaluate", "input": {...}, "policies": [{"name", "source"}]}``
  is answered by one line per policy, in order, as each finishes:
  ``{"id": n, "index": i, "deny": [...], "warn": [...], "error": null | "...",
  "duration_ms": x}`` (so the parent can time every policy separately);
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
RULES = ("deny", "warn")

V1_HINT = (
    "Clearway policies are Rego v1: write multi-value rules as "
    "`deny contains msg if { ... }` and `warn contains msg if { ... }`"
)

# A minimal document that satisfies docs/policy-input.md (schema_version 1). Every policy is
# evaluated against it once when it is compiled, so that deny/warn can be type-checked.
PROBE_INPUT: dict = {
    "schema_version": 1,
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
}

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PACKAGE_RE = re.compile(rf"^[ \t]*package[ \t]+({_IDENT}(?:\.{_IDENT})*)[ \t]*(?:#.*)?$", re.M)
_ANY_PACKAGE_RE = re.compile(r"^[ \t]*package\b", re.M)
# `deny[msg] {`, `warn[msg] if {` (anywhere), or `deny[...]` at the start of a line.
_V0_HEAD_RE = re.compile(
    r"^(?:(deny|warn)[ \t]*\[|[ \t]+(deny|warn)[ \t]*\[[^\]\n]*\][ \t]*\{)", re.M
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
                f"Rego v0 rule head `{rule}[...]` is not supported (rego-cpp silently "
                f"misreads it). {V1_HINT}",
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
    return {"message": message, "line": line, "column": column}


# --- rego-cpp error output -------------------------------------------------------------
#
# rego-cpp reports errors as a Trieste s-expression, e.g.
#
#   (rego-errorseq
#     (error 11:policy.rego|54|1
#       (errormsg 16:this is unclosed)
#       (errorast |54|1))
#     ...)
#
# Strings are length-prefixed (`16:this is unclosed`, lengths in UTF-8 bytes) and source
# locations are `<len>:<file>|<byte offset>|<byte length>` (the file may be left out when it
# is the same as before), optionally followed by `:<source text>`.


class _SexprNode:
    __slots__ = ("kind", "atoms", "children")

    def __init__(self, kind: str):
        self.kind = kind
        self.atoms: list[dict] = []
        self.children: list[_SexprNode] = []

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def _parse_sexpr(data: bytes) -> list[_SexprNode]:
    roots: list[_SexprNode] = []
    stack: list[_SexprNode] = []
    i, n = 0, len(data)
    ws = b" \t\r\n"

    def read_int(j: int) -> tuple[int | None, int]:
        k = j
        while k < n and 48 <= data[k] <= 57:
            k += 1
        return (int(data[j:k]) if k > j else None), k

    while i < n:
        ch = data[i]
        if ch in ws:
            i += 1
        elif ch == 0x28:  # (
            j = i + 1
            while j < n and data[j] not in ws and data[j] not in b"()":
                j += 1
            node = _SexprNode(data[i + 1 : j].decode("utf-8", "replace"))
            (stack[-1].children if stack else roots).append(node)
            stack.append(node)
            i = j
        elif ch == 0x29:  # )
            if stack:
                stack.pop()
            i += 1
        else:
            atom: dict = {}
            num, j = read_int(i)
            if num is not None and j < n and data[j] == 0x3A:  # N:bytes
                atom["str"] = data[j + 1 : j + 1 + num].decode("utf-8", "replace")
                i = j + 1 + num
            if i < n and data[i] == 0x7C:  # |offset|length
                off, j = read_int(i + 1)
                if off is not None and j < n and data[j] == 0x7C:
                    length, k = read_int(j + 1)
                    atom["file"] = atom.pop("str", None)
                    atom["offset"] = off
                    atom["length"] = length or 0
                    i = k
                    if i < n and data[i] == 0x3A and length is not None:  # :source text
                        atom["str"] = data[i + 1 : i + 1 + length].decode("utf-8", "replace")
                        i = i + 1 + length
            if not atom:  # a bare word: skip to the next separator
                j = i
                while j < n and data[j] not in ws and data[j] not in b"()":
                    j += 1
                atom["word"] = data[i:j].decode("utf-8", "replace")
                i = max(j, i + 1)
            if stack:
                stack[-1].atoms.append(atom)
    return roots


def parse_rego_errors(text: str, source: str) -> list[dict]:
    """Turn rego-cpp's error s-expression into ``[{"message", "line", "column"}]``."""
    errors: list[dict] = []
    try:
        roots = _parse_sexpr(text.encode("utf-8"))
    except Exception:  # never let the parser hide the original error
        roots = []
    for root in roots:
        for node in root.walk():
            if node.kind != "error":
                continue
            message = None
            offset = length = None
            for child in node.children:
                if child.kind == "errormsg" and message is None:
                    message = "".join(a.get("str", a.get("word", "")) for a in child.atoms)
            # Prefer the error's own location, then the first location inside its AST that
            # points at the policy (runtime errors also carry parts of the input document).
            for atom in node.atoms:
                if "offset" in atom and atom.get("file") in (None, MODULE_NAME):
                    offset, length = atom["offset"], atom["length"]
                    break
            if offset is None:
                for child in node.children:
                    if child.kind != "errorast":
                        continue
                    for sub in child.walk():
                        for atom in sub.atoms:
                            if atom.get("file") == MODULE_NAME and "offset" in atom:
                                offset, length = atom["offset"], atom["length"]
                                break
                        if offset is not None:
                            break
            line = column = None
            message = (message or "rego error").strip()
            if offset is not None:
                line, column = line_col(source, offset)
                quoted = _token_at(source, offset, length)
                if quoted == "package" and message == "this is unclosed":
                    continue  # rego-cpp's cascade: "the module is unclosed"
                if quoted and message == "this is unclosed":
                    message = f"`{quoted}` is not closed"
                elif quoted:
                    message = f"{message} (at `{quoted}`)"
            errors.append(_err(message, line, column))
    if not errors:
        first = text.strip().splitlines()[0] if text.strip() else "unknown rego error"
        errors.append(_err(first))
    # rego-cpp sometimes repeats the same complaint for enclosing constructs.
    unique: list[dict] = []
    for err in errors:
        if err not in unique:
            unique.append(err)
    return unique


def _token_at(source: str, offset: int, length: int | None) -> str:
    """The source text an error points at, when it is short enough to quote."""
    if not length or length > 24:
        return ""
    token = source.encode("utf-8")[offset : offset + length].decode("utf-8", "replace").strip()
    return "" if "\n" in token or "`" in token else token


def format_error(err: dict) -> str:
    if err.get("line"):
        return f"line {err['line']}, column {err['column']}: {err['message']}"
    return err["message"]


# --- the evaluator process -----------------------------------------------------------


class _Engine:
    """Compiles policies once per source SHA-256 and evaluates them; single-threaded."""

    def __init__(self, cache_size: int = 256):
        import regopy
        from regopy import rego_shared as rs

        self.regopy = regopy
        self.rs = rs
        self.cache: OrderedDict[str, dict] = OrderedDict()
        self.cache_size = cache_size
        self.runner = self._interpreter()
        self._input_ref = None

    def _interpreter(self):
        interp = self.regopy.Interpreter()
        interp.log_level = self.rs.LogLevel.NONE
        # Without this, a failing built-in (bad time format, bad number...) silently
        # makes its expression undefined, which can quietly drop a deny.
        interp.strict_built_in_errors = True
        return interp

    # node helpers ------------------------------------------------------------------
    def _kind(self, node):
        return self.rs.NodeKind(self.rs.rego_node_type(node))

    def _unwrap(self, node):
        NK = self.rs.NodeKind
        while self._kind(node) in (NK.Term, NK.Scalar):
            if self.rs.rego_node_size(node) < 1:
                break
            node = self.rs.rego_node_get(node, 0)
        return node

    def _children(self, node):
        return [self.rs.rego_node_get(node, i) for i in range(self.rs.rego_node_size(node))]

    def _error_text(self, node, source: str) -> str:
        """Readable text of an Error / ErrorSeq node."""
        NK = self.rs.NodeKind
        kind = self._kind(node)
        errs = self._children(node) if kind == NK.ErrorSeq else [node]
        parsed: list[dict] = []
        for err in errs:
            parsed.extend(parse_rego_errors(self.rs.rego_node_json(err), source))
        return "; ".join(format_error(e) for e in parsed) or "rego error"

    def _string_set(self, node, rule: str) -> tuple[list[str] | None, str | None]:
        NK = self.rs.NodeKind
        node = self._unwrap(node)
        kind = self._kind(node)
        if kind != NK.Set:
            got = {NK.Array: "an array", NK.Object: "an object", NK.String: "a string"}.get(
                kind, kind.name.lower()
            )
            return None, f"`{rule}` must be a set of strings but is {got}. {V1_HINT}"
        values = []
        for child in self._children(node):
            child = self._unwrap(child)
            if self._kind(child) != NK.String:
                return None, (
                    f"`{rule}` must be a set of strings but contains "
                    f"{self.rs.rego_node_json(child)}. {V1_HINT}"
                )
            values.append(_decode_string(self.rs.rego_node_json(child)))
        return sorted(values), None

    def _result_node(self, output, source: str):
        """-> ("ok", Result node) | ("undefined", None) | ("error", text).

        The node belongs to ``output``: use it before freeing the output."""
        rs = self.rs
        NK = rs.NodeKind
        root = rs.rego_output_node(output)
        kind = self._kind(root)
        if kind in (NK.Error, NK.ErrorSeq) or not rs.rego_output_ok(output):
            return "error", self._error_text(root, source)
        if kind == NK.Undefined:
            return "undefined", None
        if kind != NK.Results:
            return "error", f"unexpected result node {kind.name}"
        results = self._children(root)
        if not results:
            return "undefined", None
        if len(results) > 1:
            return "error", "the query produced more than one result"
        return "ok", results[0]

    def _query_value(self, interp, query: str, source: str):
        rs = self.rs
        NK = rs.NodeKind
        out = rs.rego_query(interp._impl, query)
        root = rs.rego_output_node(out)
        kind = self._kind(root)
        try:
            if kind in (NK.Error, NK.ErrorSeq) or not rs.rego_output_ok(out):
                return "error", self._error_text(root, source)
            if kind == NK.Undefined:
                return "undefined", None
            result = self._children(root)[0]
            for part in self._children(result):
                if self._kind(part) == NK.Terms:
                    terms = self._children(part)
                    if len(terms) != 1:
                        return "error", "unexpected query result"
                    value, error = self._string_set(terms[0], query.rsplit(".", 1)[-1])
                    return ("type", error) if error else ("ok", value)
            return "undefined", None
        finally:
            rs.rego_free_output(out)

    # compile ---------------------------------------------------------------------------
    def compile(self, source: str) -> dict:
        sha = source_sha256(source)
        entry = self.cache.get(sha)
        if entry is not None:
            self.cache.move_to_end(sha)
            return entry
        entry = self._compile(source)
        self.cache[sha] = entry
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return entry

    def _compile(self, source: str) -> dict:
        errors = static_errors(source)
        if errors:
            return {"ok": False, "errors": errors}
        package = package_of(source)
        interp = self._interpreter()
        try:
            interp.add_module(MODULE_NAME, source)
        except self.rs.RegoError as exc:
            return {"ok": False, "errors": parse_rego_errors(str(exc), source)}
        interp.set_input(self.regopy.Input(PROBE_INPUT))
        rules = []
        for rule in RULES:
            status, value = self._query_value(interp, f"data.{package}.{rule}", source)
            if status == "type":
                return {"ok": False, "errors": [_err(value)]}
            if status == "error":
                message = (
                    f"`{rule}` failed on the probe input (a minimal valid gate input): {value}"
                )
                return {"ok": False, "errors": [_err(message)]}
            if status == "ok":
                rules.append(rule)
        if not rules:
            return {
                "ok": False,
                "errors": [_err(f"package {package} defines neither `deny` nor `warn`. {V1_HINT}")],
            }
        query = "; ".join(f"{rule} := data.{package}.{rule}" for rule in rules)
        try:
            bundle = interp.build(query)
        except self.rs.RegoError as exc:
            return {"ok": False, "errors": parse_rego_errors(str(exc), source)}
        if not bundle.ok():
            return {"ok": False, "errors": [_err("the policy could not be built")]}
        return {
            "ok": True,
            "package": package,
            "rules": rules,
            "bundle": bundle,
            "interp": interp,
            "source": source,
        }

    # evaluate --------------------------------------------------------------------------
    def set_input(self, doc) -> str | None:
        try:
            ref = self.regopy.Input(doc)
            self.runner.set_input(ref)
        except Exception as exc:  # e.g. integers outside int64
            return f"the input document could not be passed to the policy engine: {exc}"
        self._input_ref = ref
        return None

    def evaluate(self, source: str) -> tuple[list[str], list[str], str | None]:
        entry = self.compile(source)
        if not entry["ok"]:
            return [], [], "; ".join(format_error(e) for e in entry["errors"])
        rs = self.rs
        NK = rs.NodeKind
        try:
            out = rs.rego_bundle_query(self.runner._impl, entry["bundle"]._impl)
        except rs.RegoError as exc:
            return [], [], "; ".join(format_error(e) for e in parse_rego_errors(str(exc), source))
        try:
            status, result = self._result_node(out, source)
            if status == "error":
                return [], [], result
            if status == "undefined":
                return [], [], "the policy result is undefined"
            found: dict[str, list[str]] = {}
            for part in self._children(result):
                if self._kind(part) != NK.Bindings:
                    continue
                for binding in self._children(part):
                    var, value = self._children(binding)[:2]
                    name = rs.rego_node_json(var).strip('"')
                    values, error = self._string_set(value, name)
                    if error:
                        return [], [], error
                    found[name] = values
        finally:
            rs.rego_free_output(out)
        missing = [rule for rule in entry["rules"] if rule not in found]
        if missing:
            return [], [], f"the policy result has no value for {', '.join(missing)}"
        return found.get("deny", []), found.get("warn", []), None


def _decode_string(text: str) -> str:
    """Decode a String node's JSON text.

    rego-cpp 1.5.2 keeps strings produced by some built-ins (concat, upper, replace...) in a
    quoted form, and sprintf("%s") then yields text with raw, unescaped quotes, which is not
    valid JSON. Keep what the policy computed rather than failing."""
    try:
        value = json.loads(text)
        if isinstance(value, str):
            return value
    except ValueError:
        pass
    inner = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    try:
        return json.loads('"' + re.sub(r'(?<!\\)"', '\\"', inner) + '"')
    except ValueError:
        return inner


def _set_limits(memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        # rego-cpp's allocator (snmalloc) reserves ~256 GiB of address space when the library
        # loads, so an absolute RLIMIT_AS below that makes it fail to start. The limit is
        # therefore set after the import: what is mapped now, plus the budget.
        vm_size = 0
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    vm_size = int(line.split()[1]) * 1024
        limit = vm_size + memory_mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _die_with_parent() -> None:
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(Exception):  # Linux only; the parent also kills us explicitly
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Clearway isolated Rego evaluator")
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--cache-size", type=int, default=256)
    args = parser.parse_args(argv)

    _die_with_parent()
    proto = os.dup(1)
    os.dup2(2, 1)  # stray native output goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    import regopy  # noqa: F401  (loads the native library and its allocator)

    _set_limits(args.memory_mb)
    engine = _Engine(cache_size=args.cache_size)

    def send(obj: dict) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(proto, view)
            view = view[written:]

    send({"ready": True, "pid": os.getpid(), "regopy": getattr(regopy, "__version__", "")})
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
            input_error = engine.set_input(request.get("input"))
            for index, policy in enumerate(request.get("policies") or []):
                started = time.perf_counter()
                if input_error:
                    deny, warn, error = [], [], input_error
                else:
                    try:
                        deny, warn, error = engine.evaluate(policy.get("source") or "")
                    except Exception as exc:  # a binding error must not kill the evaluator
                        deny, warn, error = [], [], f"{type(exc).__name__}: {exc}"
                send(
                    {
                        "id": rid,
                        "index": index,
                        "deny": deny,
                        "warn": warn,
                        "error": error,
                        "duration_ms": (time.perf_counter() - started) * 1000.0,
                    }
                )
        else:
            send({"id": rid, "fatal": f"unknown op {op!r}"})


if __name__ == "__main__":
    sys.exit(main())

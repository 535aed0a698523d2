"""Pipeline-as-code: parse and validate Clearway pipeline documents.

This module is deliberately free of Django imports so it can be used (and tested)
anywhere.  The public API is:

* :func:`parse_pipeline` -- YAML text -> normalized spec dict (or :class:`SpecError`)
* :func:`validate_parameters` -- effective run parameters (or :class:`ParameterError`)
* :func:`topological_order` -- stage names in a stable dependency order
* :data:`SPEC_SCHEMA` -- the JSON Schema (Draft 2020-12) of the document structure
* the ``MAX_*`` / ``DEFAULT_*`` limit constants

Every validation error is a dict ``{"message", "line", "column", "path"}`` with a
1-based line/column pointing at the offending key or value.  The user-facing
format is documented in ``docs/pipelines.md``.
"""

from __future__ import annotations

import datetime
import difflib
import heapq
import re
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceStartEvent,
)
from ruamel.yaml.parser import RoundTripParser
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scanner import RoundTripScanner

__all__ = [
    "DEFAULT_HTTP_EXPECT",
    "DEFAULT_HTTP_METHOD",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "HTTP_METHODS",
    "MAX_ALLOWED_VALUES",
    "MAX_DEPTH",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_ENV_VARS",
    "MAX_ERRORS",
    "MAX_HTTP_EXPECT",
    "MAX_HTTP_HEADERS",
    "MAX_MAPPING_KEYS",
    "MAX_NODES",
    "MAX_PARAMETERS",
    "MAX_PARAMETER_NAME_LENGTH",
    "MAX_PIPELINE_NAME_LENGTH",
    "MAX_RETRIES",
    "MAX_RUN_BYTES",
    "MAX_STAGES",
    "MAX_STAGE_NAME_LENGTH",
    "MAX_STEPS_PER_STAGE",
    "MAX_STEP_NAME_LENGTH",
    "MAX_TIMEOUT",
    "MAX_URL_LENGTH",
    "MIN_TIMEOUT",
    "SPEC_SCHEMA",
    "ParameterError",
    "SpecError",
    "parse_pipeline",
    "topological_order",
    "validate_parameters",
]

# --------------------------------------------------------------------------- limits

MAX_DOCUMENT_BYTES = 256 * 1024  # whole document, UTF-8 encoded
MAX_DEPTH = 20  # nesting of mappings/lists (the top-level mapping is level 1)
# Work per document is bounded before validation starts: the guard refuses a document with
# more YAML nodes (scalars, mappings, lists) than this, or a mapping with more keys (the
# largest legitimate mapping is `env`, MAX_ENV_VARS). Parsing costs ~35 µs per node, so a
# refusal costs well under a second whatever the 256 KiB hold (benchmarks/spec_refusal.py).
MAX_NODES = 10_000
MAX_MAPPING_KEYS = 200
# At most this many problems are reported (then one line says there are more): the error
# list of a hostile document stays small, and validation stops collecting.
MAX_ERRORS = 100
MAX_STAGES = 100
MAX_STEPS_PER_STAGE = 50
MAX_RUN_BYTES = 64 * 1024  # one ``run`` command, UTF-8 encoded
MAX_PARAMETERS = 50
MAX_ALLOWED_VALUES = 100
MAX_ENV_VARS = 100
MAX_HTTP_HEADERS = 50
MAX_HTTP_EXPECT = 20
MAX_URL_LENGTH = 2048
MAX_PIPELINE_NAME_LENGTH = 100
MAX_STAGE_NAME_LENGTH = 63
MAX_STEP_NAME_LENGTH = 100
MAX_PARAMETER_NAME_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 10_000

DEFAULT_TIMEOUT = 600
MIN_TIMEOUT = 1
MAX_TIMEOUT = 86_400
DEFAULT_RETRIES = 0
MAX_RETRIES = 10
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
DEFAULT_HTTP_METHOD = "GET"
DEFAULT_HTTP_EXPECT = (200,)

# Patterns are written so they mean the same in ECMA-262 (JSON Schema's dialect) and
# in Python; ``$`` is matched as "end of string" here (see ``_compile_pattern``).
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
STAGE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
LABEL_PATTERN = r"^\S(.*\S)?$"
NO_NUL_PATTERN = r"^[^\x00]*$"
URL_PATTERN = r"^https?://[^\s/?#@]+([/?#]\S*)?$"
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE_PATTERN = r"^[^\r\n\x00]*$"
SECRET_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]*$"  # noqa: S105 (a pattern, not a password)
MAX_SECRETS_PER_STEP = 50
MAX_ARTIFACTS_PER_STEP = 20
MAX_ARTIFACT_NAME_LENGTH = 64
MAX_ARTIFACT_PATH_LENGTH = 1024
# How long a run's artifacts and archived logs are kept (`retention_days:`; the default is
# the installation's CLEARWAY_ARTIFACT_RETENTION_DAYS, 90 unless set).
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 36_500
# Hard bounds of a step's `limits:`; the installation's maximum (settings) is checked too.
LIMIT_BOUNDS = {
    "memory_mb": (16, 1_048_576),
    "processes": (8, 1_000_000),
    "cpu_seconds": (1, 604_800),
}

_PATTERN_RULES = {
    IDENTIFIER_PATTERN: 'use letters, digits and "_", not starting with a digit',
    STAGE_NAME_PATTERN: (
        'use lowercase letters, digits, "-" and "_", starting with a letter or digit'
    ),
    LABEL_PATTERN: "use a single line without leading or trailing spaces",
    NO_NUL_PATTERN: "it must not contain NUL characters",
    URL_PATTERN: "use an http:// or https:// URL with a host name, without spaces",
    HEADER_NAME_PATTERN: "use letters, digits and - (no spaces or colons)",
    HEADER_VALUE_PATTERN: "use a single line (no line breaks)",
    SECRET_NAME_PATTERN: 'use uppercase letters, digits and "_", not starting with a digit',
}

# ------------------------------------------------------------------------ the schema


def _opt(schema: dict) -> dict:
    """Optional key: ``null`` is accepted and means "use the default"."""
    out = dict(schema)
    types = out["type"] if isinstance(out["type"], list) else [out["type"]]
    out["type"] = [*types, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


_ENV_SCHEMA = _opt(
    {
        "type": "object",
        "title": "environment variables",
        "description": "a mapping of environment variable names to string values",
        "maxProperties": MAX_ENV_VARS,
        "propertyNames": {"title": "variable name", "pattern": IDENTIFIER_PATTERN},
        "additionalProperties": {
            "type": "string",
            "title": "variable value",
            "pattern": NO_NUL_PATTERN,
        },
    }
)

_HTTP_SCHEMA = {
    "type": "object",
    "title": "HTTP request",
    "description": "an HTTP request to make",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "type": "string",
            "title": "URL",
            "description": "the URL to call (http:// or https://)",
            "maxLength": MAX_URL_LENGTH,
            "pattern": URL_PATTERN,
        },
        "method": _opt(
            {
                "type": "string",
                "title": "HTTP method",
                "description": "the HTTP method, default GET",
                "enum": list(HTTP_METHODS),
                "default": DEFAULT_HTTP_METHOD,
            }
        ),
        "headers": _opt(
            {
                "type": "object",
                "title": "headers",
                "description": "a mapping of header names to string values",
                "maxProperties": MAX_HTTP_HEADERS,
                "propertyNames": {"title": "header name", "pattern": HEADER_NAME_PATTERN},
                "additionalProperties": {
                    "type": "string",
                    "title": "header value",
                    "pattern": HEADER_VALUE_PATTERN,
                },
            }
        ),
        "body": _opt({"type": "string", "title": "body", "description": "the request body"}),
        "expect": _opt(
            {
                "type": "array",
                "title": "expected status codes",
                "description": "a list of expected HTTP status codes, default [200]",
                "minItems": 1,
                "maxItems": MAX_HTTP_EXPECT,
                "uniqueItems": True,
                "items": {
                    "type": "integer",
                    "title": "status code",
                    "minimum": 100,
                    "maximum": 599,
                },
                "default": list(DEFAULT_HTTP_EXPECT),
            }
        ),
    },
}

_ARTIFACT_SCHEMA = {
    "type": "object",
    "title": "artifact",
    "description": "an artifact: a name and a path (or glob) relative to the workspace",
    "additionalProperties": False,
    "required": ["name", "path"],
    "properties": {
        "name": {
            "type": "string",
            "title": "artifact name",
            "description": 'an artifact name such as "plan", unique within the pipeline',
            "maxLength": MAX_ARTIFACT_NAME_LENGTH,
            "pattern": IDENTIFIER_PATTERN,
        },
        "path": {
            "type": "string",
            "title": "artifact path",
            "description": 'a path or glob relative to the workspace, such as "tfplan.json"',
            "minLength": 1,
            "maxLength": MAX_ARTIFACT_PATH_LENGTH,
            "pattern": NO_NUL_PATTERN,
        },
        "policy_input": _opt({"type": "boolean", "title": "policy_input", "default": False}),
        "optional": _opt({"type": "boolean", "title": "optional", "default": False}),
    },
}

_STEP_SCHEMA = {
    "type": "object",
    "title": "step",
    "description": "a step: a name plus exactly one of run or http",
    "additionalProperties": False,
    "required": ["name"],
    "oneOf": [{"required": ["run"]}, {"required": ["http"]}],
    "properties": {
        "name": {
            "type": "string",
            "title": "step name",
            "description": "a step name, unique within the stage",
            "minLength": 1,
            "maxLength": MAX_STEP_NAME_LENGTH,
            "pattern": LABEL_PATTERN,
        },
        "run": {
            "type": "string",
            "title": "command",
            "description": "a shell command to run",
            "minLength": 1,
            "maxLength": MAX_RUN_BYTES,
            "pattern": NO_NUL_PATTERN,
        },
        "http": _HTTP_SCHEMA,
        "timeout": _opt(
            {
                "type": "integer",
                "title": "timeout",
                "description": "the step timeout in seconds",
                "minimum": MIN_TIMEOUT,
                "maximum": MAX_TIMEOUT,
                "default": DEFAULT_TIMEOUT,
            }
        ),
        "retries": _opt(
            {
                "type": "integer",
                "title": "retries",
                "description": "how many times to retry a failed step",
                "minimum": 0,
                "maximum": MAX_RETRIES,
                "default": DEFAULT_RETRIES,
            }
        ),
        "env": _ENV_SCHEMA,
        "network": _opt(
            {
                "type": "string",
                "title": "network",
                "description": 'the step\'s network: "default" (on) or "none" (cut off)',
                "enum": ["default", "none"],
            }
        ),
        "limits": _opt(
            {
                "type": "object",
                "title": "limits",
                "description": "resource limits: memory_mb, processes, cpu_seconds",
                "additionalProperties": False,
                "properties": {
                    key: {
                        "type": "integer",
                        "title": key,
                        "minimum": low,
                        "maximum": high,
                    }
                    for key, (low, high) in LIMIT_BOUNDS.items()
                },
            }
        ),
        "artifacts": _opt(
            {
                "type": "array",
                "title": "artifacts",
                "description": "a list of files the step stores when it succeeds",
                "maxItems": MAX_ARTIFACTS_PER_STEP,
                "items": _ARTIFACT_SCHEMA,
            }
        ),
        "secrets": _opt(
            {
                "type": "array",
                "title": "secrets",
                "description": "a list of names of managed secrets the step receives",
                "maxItems": MAX_SECRETS_PER_STEP,
                "uniqueItems": True,
                "items": {
                    "type": "string",
                    "title": "secret name",
                    "pattern": SECRET_NAME_PATTERN,
                },
            }
        ),
    },
}

_STAGE_SCHEMA = {
    "type": "object",
    "title": "stage",
    "description": "a stage with a name and a list of steps",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "name": {
            "type": "string",
            "title": "stage name",
            "description": 'a stage name such as "build" (lowercase letters, digits, "-", "_")',
            "maxLength": MAX_STAGE_NAME_LENGTH,
            "pattern": STAGE_NAME_PATTERN,
        },
        "needs": _opt(
            {
                "type": "array",
                "title": "needs",
                "description": "a list of names of stages that must finish first",
                "uniqueItems": True,
                "items": {"type": "string", "title": "stage name"},
                "default": [],
            }
        ),
        "environment": _opt(
            {
                "type": "string",
                "title": "environment",
                "description": "the name of the environment the stage deploys to",
                "minLength": 1,
            }
        ),
        "steps": {
            "type": "array",
            "title": "steps",
            "description": "a non-empty list of steps",
            "minItems": 1,
            "maxItems": MAX_STEPS_PER_STAGE,
            "items": _STEP_SCHEMA,
        },
    },
}

_PARAMETER_SCHEMA = {
    "type": "object",
    "title": "parameter",
    "description": "a run parameter",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "title": "parameter name",
            "description": 'a parameter name such as "version"',
            "maxLength": MAX_PARAMETER_NAME_LENGTH,
            "pattern": IDENTIFIER_PATTERN,
        },
        "description": _opt(
            {"type": "string", "title": "description", "maxLength": MAX_DESCRIPTION_LENGTH}
        ),
        "required": _opt({"type": "boolean", "title": "required", "default": False}),
        "default": _opt({"type": "string", "title": "default value"}),
        "allowed": _opt(
            {
                "type": "array",
                "title": "allowed values",
                "description": "a list of the values the parameter may take",
                "minItems": 1,
                "maxItems": MAX_ALLOWED_VALUES,
                "uniqueItems": True,
                "items": {"type": "string", "title": "allowed value"},
            }
        ),
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Clearway pipeline",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "stages"],
    "properties": {
        "name": {
            "type": "string",
            "title": "pipeline name",
            "description": "a name for the pipeline",
            "minLength": 1,
            "maxLength": MAX_PIPELINE_NAME_LENGTH,
            "pattern": LABEL_PATTERN,
        },
        "description": _opt(
            {"type": "string", "title": "description", "maxLength": MAX_DESCRIPTION_LENGTH}
        ),
        "parameters": _opt(
            {
                "type": "array",
                "title": "parameters",
                "description": "a list of run parameters",
                "maxItems": MAX_PARAMETERS,
                "items": _PARAMETER_SCHEMA,
                "default": [],
            }
        ),
        "stages": {
            "type": "array",
            "title": "stages",
            "description": "a non-empty list of stages",
            "minItems": 1,
            "maxItems": MAX_STAGES,
            "items": _STAGE_SCHEMA,
        },
        "schedule": _opt(
            {
                "type": "string",
                "title": "schedule",
                "description": 'a 5-field cron expression such as "0 3 * * 1-5"',
            }
        ),
        "retention_days": _opt(
            {
                "type": "integer",
                "title": "retention_days",
                "description": "how many days the runs' artifacts and archived logs are kept",
                "minimum": MIN_RETENTION_DAYS,
                "maximum": MAX_RETENTION_DAYS,
            }
        ),
    },
}


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    # In ECMA-262 a trailing ``$`` only matches at the very end; Python's also matches
    # before a final newline, which would let "build\n" pass as a stage name.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


_PATTERN_CACHE: dict[str, re.Pattern[str]] = {}


def _pattern_keyword(validator, pattern, instance, schema):
    if not validator.is_type(instance, "string"):
        return
    compiled = _PATTERN_CACHE.get(pattern)
    if compiled is None:
        compiled = _PATTERN_CACHE[pattern] = _compile_pattern(pattern)
    if not compiled.search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _pattern_keyword}
)
_VALIDATOR = _Validator(SPEC_SCHEMA)

# ------------------------------------------------------------------------ exceptions

Error = dict[str, Any]
Path = tuple[str | int, ...]


def _format_error(error: Mapping[str, Any]) -> str:
    text = ""
    if error.get("line") is not None:
        text += f"line {error['line']}, column {error.get('column') or 1}: "
    if error.get("path"):
        text += f"{error['path']}: "
    return text + str(error.get("message", ""))


class SpecError(Exception):
    """The pipeline document is invalid.

    ``errors`` is a list of ``{"message": str, "line": int | None, "column": int | None,
    "path": str}`` dicts (1-based line/column), sorted by position.  ``str(exc)`` gives
    one ``line L, column C: path: message`` line per error.
    """

    def __init__(self, errors: list[Mapping[str, Any]] | str):
        if isinstance(errors, str):
            errors = [{"message": errors}]
        self.errors: list[Error] = [
            {
                "message": str(e.get("message", "")),
                "line": e.get("line"),
                "column": e.get("column"),
                "path": e.get("path") or "",
            }
            for e in errors
        ]
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(_format_error(e) for e in self.errors)


class ParameterError(ValueError):
    """Supplied run parameters do not match the pipeline's parameter definitions.

    ``errors`` is a list of ``{"parameter": name, "message": str}`` dicts.
    """

    def __init__(self, errors: list[Mapping[str, Any]] | str):
        if isinstance(errors, str):
            errors = [{"parameter": "", "message": errors}]
        self.errors: list[dict[str, str]] = [
            {"parameter": str(e.get("parameter", "")), "message": str(e.get("message", ""))}
            for e in errors
        ]
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(e["message"] for e in self.errors)


# ------------------------------------------------------------------------- helpers


def _format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{_quote(part, limit=200)}]"
    return out


def _quote(value: Any, limit: int = 60) -> str:
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{text}"'


def _suggest(word: Any, choices: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    choices = [c for c in choices if isinstance(c, str)]
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if match and match[0] != word:
        return match[0]
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    if match and lowered[match[0]] != word:
        return lowered[match[0]]
    return None


def _did_you_mean(word: Any, choices: Iterable[str]) -> str:
    suggestion = _suggest(word, choices)
    return f" — did you mean {_quote(suggestion)}?" if suggestion else ""


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, datetime.date):
        return f"a date ({value.isoformat()})"
    if isinstance(value, str):
        return f"a string ({_quote(value, limit=40)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_TYPE_PHRASES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping (key: value pairs)",
    "null": "nothing",
}


class _Collector:
    def __init__(self, positions: dict[Path, tuple[int, int]], keys: dict[Path, tuple[int, int]]):
        self.positions = positions
        self.keys = keys
        self.errors: list[Error] = []
        self._seen: set[tuple] = set()
        self.truncated = False

    def locate(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        table = self.keys if key else self.positions
        where = table.get(tuple(path))
        if where is None and not key:
            where = self.keys.get(tuple(path))
        while where is None and path:
            path = path[:-1]
            where = self.positions.get(tuple(path))
        if where is None:
            return None, None
        return where[0] + 1, where[1] + 1

    def add(
        self,
        path: Path,
        message: str,
        *,
        at: Path | None = None,
        key: bool = False,
        path_text: str | None = None,
    ) -> None:
        line, column = self.locate(path if at is None else at, key=key)
        text = _format_path(path) if path_text is None else path_text
        marker = (line, column, text, message)
        if marker in self._seen:
            return
        if len(self.errors) >= MAX_ERRORS:
            self.truncated = True
            raise _EnoughErrors
        self._seen.add(marker)
        self.errors.append({"message": message, "line": line, "column": column, "path": text})


class _EnoughErrors(Exception):
    """MAX_ERRORS problems were collected: stop validating."""


def _more_errors_note() -> Error:
    return {
        "message": f"more problems were found; only the first {MAX_ERRORS} are listed — "
        "fix these and validate again",
        "line": None,
        "column": None,
        "path": "",
    }


def _sorted_errors(errors: list[Error]) -> list[Error]:
    def key(item: tuple[int, Error]):
        index, error = item
        line = error["line"]
        return (line is None, line or 0, error["column"] or 0, index)

    return [e for _, e in sorted(enumerate(errors), key=key)]


# ------------------------------------------------------------------ YAML loading


class _HostileInput(Exception):
    def __init__(self, message: str, line: int | None, column: int | None, path: str = ""):
        super().__init__(message)
        self.error = {"message": message, "line": line, "column": column, "path": path}


class _GuardedScanner(RoundTripScanner):
    """Refuses deep flow nesting (``[[[[...``) before the scanner's look-ahead gets
    expensive."""

    def fetch_flow_collection_start(self, TokenClass: Any, to_push: str) -> None:
        if len(self.flow_context) + 1 > MAX_DEPTH:
            mark = self.reader.get_mark()
            raise _HostileInput(_too_deep_message(), mark.line + 1, mark.column + 1)
        super().fetch_flow_collection_start(TokenClass, to_push)


def _too_deep_message() -> str:
    return f"the document is nested too deeply — at most {MAX_DEPTH} levels are allowed"


class _GuardedParser(RoundTripParser):
    """Feeds every event to the loader's :class:`_Guard` the moment it is produced,
    before the composer builds anything from it."""

    def _fill(self) -> None:
        if self.current_event is None and self.state:
            self.current_event = self.state()
            if self.current_event is not None:
                self.loader.clearway_guard.feed(self.current_event)

    def check_event(self, *choices: Any) -> bool:
        self._fill()
        if self.current_event is None:
            return False
        return not choices or isinstance(self.current_event, choices)

    def peek_event(self) -> Any:
        self._fill()
        return self.current_event

    def get_event(self) -> Any:
        self._fill()
        self.last_event = value = self.current_event
        self.current_event = None
        return value


def _new_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Scanner = _GuardedScanner
    yaml.Parser = _GuardedParser
    yaml.allow_duplicate_keys = True  # duplicates are reported by the guard
    yaml.clearway_guard = _Guard()
    return yaml


def _yaml_error(exc: YAMLError, text: str) -> Error:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        message = f"could not parse YAML: {problem}"
        if exc.context and exc.problem and exc.context_mark is not None:
            cm = exc.context_mark
            message += f" ({exc.context} that starts at line {cm.line + 1}, column {cm.column + 1})"
        elif exc.context and exc.problem:
            message += f" ({exc.context})"
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        return {"message": message, "line": line, "column": column, "path": ""}
    if isinstance(exc, ReaderError):
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character
        number = ord(char) if isinstance(char, str) else int(char)
        code = f"#x{number:04x}"
        return {
            "message": f"could not parse YAML: the character {code} is not allowed "
            "(remove it or escape it inside a double-quoted string)",
            "line": line,
            "column": column,
            "path": "",
        }
    return {"message": f"could not parse YAML: {exc}", "line": None, "column": None, "path": ""}


class _Guard:
    """Checks the parser's event stream and refuses hostile constructs before anything
    is built: anchors/aliases, tags, complex keys, several documents, deep nesting and
    too many stages/steps/parameters.  Duplicate keys are collected."""

    def __init__(self) -> None:
        self.duplicates: list[Error] = []
        self.root: tuple[int, int] | None = None
        self.documents = 0
        self.nodes = 0
        # frames: [kind, path, keys seen, expecting a key, current key, items so far]
        self.stack: list[list[Any]] = []

    def feed(self, event: Any) -> None:
        mark = event.start_mark
        line, column = mark.line + 1, mark.column + 1
        if isinstance(event, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _HostileInput(
                    'only one YAML document is allowed — remove the extra "---"', line, column
                )
            return
        if isinstance(event, CollectionEndEvent):
            self.stack.pop()
            return
        if not isinstance(event, NodeEvent):
            return
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _HostileInput(
                f"the document has too many entries — at most {MAX_NODES} YAML values "
                "(keys, scalars, lists and mappings) are allowed; split the pipeline",
                line,
                column,
            )
        parent = self.stack[-1] if self.stack else None
        is_key = parent is not None and parent[0] == "map" and parent[3]
        path: Path
        if parent is None:
            path = ()
        elif is_key:
            path = parent[1]
        elif parent[0] == "map":
            path = (*parent[1], parent[4])
        else:
            path = (*parent[1], parent[5])
        where = _format_path(path)
        if isinstance(event, AliasEvent) or event.anchor is not None:
            raise _HostileInput(
                "YAML anchors and aliases (&name / *name) are not supported — "
                "write the values out in full",
                line,
                column,
                where,
            )
        if event.tag is not None:
            tag = str(event.tag).replace("tag:yaml.org,2002:", "!!")
            raise _HostileInput(
                f"YAML tags such as {tag} are not supported — use quotes to make a value a string",
                line,
                column,
                where,
            )
        if parent is None:
            self.root = (mark.line, mark.column)
        elif is_key:
            if not isinstance(event, ScalarEvent):
                raise _HostileInput(
                    "mapping keys must be plain strings, not lists or mappings",
                    line,
                    column,
                    where,
                )
            key = event.value
            if key == "<<" and event.style is None:
                raise _HostileInput(
                    "YAML merge keys (<<) are not supported — write the keys out in full",
                    line,
                    column,
                    where,
                )
            if len(parent[2]) >= MAX_MAPPING_KEYS:
                raise _HostileInput(
                    f"too many keys in one mapping — at most {MAX_MAPPING_KEYS} are allowed",
                    line,
                    column,
                    where,
                )
            if key in parent[2] and len(self.duplicates) < MAX_ERRORS:
                self.duplicates.append(
                    {
                        "message": f"duplicate key {_quote(key)} — each key may appear only once",
                        "line": line,
                        "column": column,
                        "path": where,
                    }
                )
            parent[2].add(key)
            parent[3] = False
            parent[4] = key
            return
        elif parent[0] == "map":
            parent[3] = True
        else:
            parent[5] += 1
            self._check_count(parent[1], parent[5], line, column)
        if isinstance(event, MappingStartEvent | SequenceStartEvent):
            if len(self.stack) + 1 > MAX_DEPTH:
                raise _HostileInput(_too_deep_message(), line, column, where)
            kind = "map" if isinstance(event, MappingStartEvent) else "seq"
            self.stack.append([kind, path, set(), True, None, 0])

    @staticmethod
    def _check_count(path: Path, count: int, line: int, column: int) -> None:
        if path == ("stages",) and count > MAX_STAGES:
            what, limit, hint = "stages", MAX_STAGES, "split the pipeline"
        elif path == ("parameters",) and count > MAX_PARAMETERS:
            what, limit, hint = "parameters", MAX_PARAMETERS, "remove some"
        elif (
            len(path) == 3
            and path[0] == "stages"
            and path[2] == "steps"
            and count > MAX_STEPS_PER_STAGE
        ):
            what, limit, hint = "steps in one stage", MAX_STEPS_PER_STAGE, "split the stage"
        else:
            return
        raise _HostileInput(
            f"too many {what} — at most {limit} are allowed; {hint}",
            line,
            column,
            _format_path(path),
        )


def _key_text(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key)


def _to_plain(
    node: Any,
    path: Path,
    positions: dict[Path, tuple[int, int]],
    keys: dict[Path, tuple[int, int]],
) -> Any:
    """Converts ruamel's round-trip objects to plain JSON-ish types, recording the
    0-based (line, column) of every value and key by path."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for raw_key, value in node.items():
            key = _key_text(raw_key)
            child = (*path, key)
            try:
                keys[child] = tuple(node.lc.key(raw_key))
            except (KeyError, TypeError, AttributeError):
                pass
            if value is None and child in keys:
                # an empty value has no position of its own; point at its key
                positions[child] = keys[child]
            else:
                try:
                    positions[child] = tuple(node.lc.value(raw_key))
                except (KeyError, TypeError, AttributeError):
                    pass
            out[key] = _to_plain(value, child, positions, keys)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*path, index)
            try:
                positions[child] = tuple(node.lc.item(index))
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            items.append(_to_plain(value, child, positions, keys))
        return items
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _load(text: str) -> tuple[Any, dict[Path, tuple[int, int]], dict[Path, tuple[int, int]]]:
    yaml = _new_yaml()
    guard: _Guard = yaml.clearway_guard
    try:
        data = yaml.load(text)
    except _HostileInput as exc:
        raise SpecError([exc.error]) from None
    except YAMLError as exc:
        raise SpecError([*guard.duplicates, _yaml_error(exc, text)]) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an impossible date
        raise SpecError([{"message": f"could not parse YAML: {exc}"}]) from None
    if guard.duplicates:
        raise SpecError(guard.duplicates)
    if guard.root is None:
        raise SpecError(
            [{"message": 'the document is empty — expected a mapping with "name" and "stages"'}]
        )
    positions: dict[Path, tuple[int, int]] = {(): guard.root}
    keys: dict[Path, tuple[int, int]] = {}
    plain = _to_plain(data, (), positions, keys)
    return plain, positions, keys


# ------------------------------------------------------------- schema validation


def _schema_errors(doc: dict, out: _Collector) -> None:
    raw = list(_VALIDATOR.iter_errors(doc))
    suggested: dict[Path, set[str]] = {}

    # unknown keys first, so "missing" errors fixed by a did-you-mean can be dropped
    for err in raw:
        if err.validator == "additionalProperties" and err.validator_value is False:
            path = tuple(err.absolute_path)
            allowed = list(err.schema.get("properties", {}))
            for key in err.instance:
                if key in allowed:
                    continue
                suggestion = _suggest(key, allowed)
                if suggestion:
                    suggested.setdefault(path, set()).add(suggestion)
                    hint = f" — did you mean {_quote(suggestion)}?"
                else:
                    hint = " — expected one of: " + ", ".join(allowed)
                out.add(path, f"unknown key {_quote(key)}{hint}", at=(*path, key), key=True)

    for err in raw:
        path = tuple(err.absolute_path)
        kw = err.validator
        schema = err.schema if isinstance(err.schema, dict) else {}
        title = schema.get("title") or "value"
        instance = err.instance
        if kw == "additionalProperties":
            continue
        if kw == "type":
            _type_error(path, err.validator_value, instance, out)
        elif kw == "required":
            props = schema.get("properties", {})
            for name in err.validator_value:
                if name in instance or name in suggested.get(path, ()):
                    continue
                desc = props.get(name, {}).get("description")
                hint = f" — add {desc}" if desc else ""
                out.add(path, f"missing required key {_quote(name)}{hint}")
        elif kw == "oneOf":
            if isinstance(instance, dict):  # otherwise the type error says it all
                _one_of_error(path, schema, err.validator_value, instance, suggested, out)
        elif kw == "pattern":
            rule = _PATTERN_RULES.get(err.validator_value, f"it must match {err.validator_value}")
            if "propertyNames" in err.relative_schema_path:
                out.add(
                    path,
                    f"{title} {_quote(instance)} is not valid — {rule}",
                    at=(*path, instance),
                    key=True,
                )
            else:
                out.add(path, f"{title} {_quote(instance)} is not valid — {rule}")
        elif kw == "minLength":
            out.add(path, f"{title} must not be empty")
        elif kw == "maxLength":
            extra = ""
            if title == "command":
                extra = "; put long scripts in a file in your repository and run that"
            out.add(
                path,
                f"{title} is too long ({len(instance)} characters) — at most "
                f"{err.validator_value} are allowed{extra}",
            )
        elif kw in ("minimum", "maximum"):
            if isinstance(instance, float) and not instance.is_integer():
                continue  # the type error already explains it
            low, high = schema.get("minimum"), schema.get("maximum")
            if low is not None and high is not None:
                rule = f"it must be between {low} and {high}"
            elif low is not None:
                rule = f"it must be at least {low}"
            else:
                rule = f"it must be at most {high}"
            out.add(path, f"{title} {instance} is out of range — {rule}")
        elif kw == "minItems":
            item = (schema.get("items") or {}).get("title", "entry")
            out.add(path, f"{title} must not be empty — add at least one {item}")
        elif kw == "maxItems":
            out.add(
                path,
                f"too many {title} ({len(instance)}) — at most {err.validator_value} are allowed",
            )
        elif kw == "maxProperties":
            out.add(
                path,
                f"too many {title} ({len(instance)}) — at most {err.validator_value} are allowed",
            )
        elif kw == "uniqueItems":
            seen: list[Any] = []
            for index, item in enumerate(instance):
                if item in seen:
                    out.add(
                        (*path, index),
                        f"duplicate entry {_quote(item) if isinstance(item, str) else item} "
                        f"in {title} — list each value only once",
                    )
                else:
                    seen.append(item)
        elif kw == "enum":
            choices = [c for c in err.validator_value if c is not None]
            hint = _did_you_mean(instance, choices) if isinstance(instance, str) else ""
            out.add(
                path,
                f"{title} {_quote(instance)} is not valid{hint} "
                f"(expected one of: {', '.join(str(c) for c in choices)})",
            )
        else:  # pragma: no cover - keywords the schema does not use
            out.add(path, err.message)


def _one_of_error(
    path: Path,
    schema: dict,
    choices: list[dict],
    instance: dict,
    suggested: dict[Path, set[str]],
    out: _Collector,
) -> None:
    """The only ``oneOf`` in the schema is "exactly one of these keys"."""
    title = schema.get("title") or "mapping"
    names = [name for sub in choices for name in sub.get("required", [])]
    present = [n for n in names if n in instance]
    listed = " or ".join(_quote(n) for n in names)
    if len(present) > 1:
        out.add(
            path,
            f"a {title} needs exactly one of {listed}, but has "
            f"{' and '.join(_quote(n) for n in present)} — remove all but one",
            at=(*path, present[1]),
            key=True,
        )
    elif not present and not set(names) & suggested.get(path, set()):
        props = schema.get("properties", {})
        described = [
            f"{_quote(n)} ({props[n]['description']})"
            if props.get(n, {}).get("description")
            else _quote(n)
            for n in names
        ]
        out.add(path, f"a {title} needs exactly one of " + " or ".join(described))


def _type_error(path: Path, expected: Any, instance: Any, out: _Collector) -> None:
    types = expected if isinstance(expected, list) else [expected]
    wanted = [t for t in types if t != "null"] or types
    message = f"expected {' or '.join(_TYPE_PHRASES.get(t, t) for t in wanted)}"
    message += f", got {_describe(instance)}"
    if "string" in wanted and isinstance(instance, int | float | bool | datetime.date):
        message += " — put the value in quotes to use it as text"
    elif "boolean" in wanted and isinstance(instance, str):
        message += " — write true or false"
    elif "array" in wanted and isinstance(instance, str):
        message += f" — write a list, e.g. [{instance}]"
    elif "object" in wanted and isinstance(instance, list):
        message += " — use key: value pairs instead of a list"
    elif "object" in wanted and isinstance(instance, str) and path and isinstance(path[-1], int):
        message += " — each entry must be a mapping, e.g. {name: ..., ...}"
    out.add(path, message)


# ------------------------------------------------------------------ semantic checks


_CRON_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ("jan feb mar apr may jun jul aug sep oct nov dec", 1)),
    ("day of week", 0, 6, ("sun mon tue wed thu fri sat", 0)),
)


def _cron_problems(expression: str) -> list[str]:
    fields = expression.split()
    if len(fields) != 5:
        return [
            f"expected 5 cron fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {_quote(expression)}"
        ]
    problems = []
    for text, (label, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        lookup = {}
        if names:
            lookup = {n: i + names[1] for i, n in enumerate(names[0].split())}
        problem = _cron_field_problem(text, low, high, lookup)
        if problem:
            problems.append(f"{label} field {_quote(text)}: {problem}")
    return problems


def _cron_field_problem(text: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """Checks one cron field: a comma-separated list of ``*``, ``*/n``, ``a``, ``a-b`` or
    ``a-b/n``, with numbers in range (or month/weekday names where they are allowed)."""

    def value(part: str) -> int | None:
        if re.fullmatch(r"[0-9]{1,2}", part):
            return int(part)
        return names.get(part.lower())

    usage = f"use *, */n, a, a-b or a-b/n with values {low}-{high}"
    if names:
        usage += " or names such as " + "-".join(list(names)[:2])
    for item in text.split(","):
        base, slash, step = item.partition("/")
        if slash:
            if not re.fullmatch(r"[0-9]{1,2}", step) or not 1 <= int(step) <= high:
                return f"step {_quote(step)} must be a whole number from 1 to {high}"
            if base != "*" and "-" not in base:
                return f"{_quote(item)} is not supported — {usage}"
        if base == "*":
            continue
        start, dash, end = base.partition("-")
        bounds = [start, end] if dash else [start]
        numbers = []
        for part in bounds:
            number = value(part)
            if number is None:
                return f"{_quote(part)} is not a valid value — {usage}"
            if not low <= number <= high:
                return f"{number} is out of range {low}-{high}"
            numbers.append(number)
        if numbers[0] > numbers[-1]:
            return f"range {base} is backwards — write the lower value first"
    return None


def _step_context_errors(
    doc: dict,
    out: _Collector,
    limits_max: Mapping[str, int] | None,
    secrets: Mapping[str, Any] | None,
) -> None:
    """`limits:` within the installation's maximum; `secrets:` known and in scope for the
    stage (`secrets` maps a name to the environment names it may be released to, None
    meaning any stage of the pipeline — a team secret)."""
    stages = doc.get("stages")
    if not isinstance(stages, list):
        return
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("steps"), list):
            continue
        env_name = stage.get("environment") if isinstance(stage.get("environment"), str) else None
        for step_index, step in enumerate(stage["steps"]):
            if not isinstance(step, dict):
                continue
            at = ("stages", index, "steps", step_index)
            limits = step.get("limits")
            if limits_max is not None and isinstance(limits, dict):
                for key, value in limits.items():
                    high = limits_max.get(key)
                    if isinstance(value, int) and high is not None and value > high:
                        out.add(
                            (*at, "limits", key),
                            f"{key} {value} is above this installation's maximum of {high} — "
                            "ask for at most that, or ask an operator to raise "
                            f"CLEARWAY_STEP_{key.upper()}_MAX",
                        )
            wanted = step.get("secrets")
            if wanted and step.get("http") is not None:
                out.add(
                    (*at, "secrets"),
                    "only run steps receive secrets (as environment variables) — move the "
                    "request into a run step, e.g. curl with the secret from the environment",
                )
                continue
            if secrets is None or not isinstance(wanted, list):
                continue
            for secret_index, name in enumerate(wanted):
                if not isinstance(name, str) or not _matches(SECRET_NAME_PATTERN, name):
                    continue
                where = (*at, "secrets", secret_index)
                if name not in secrets:
                    out.add(
                        where,
                        f"unknown secret {_quote(name)}{_did_you_mean(name, list(secrets))} — "
                        "create it first (Secrets page, API or admin)",
                    )
                    continue
                scopes = secrets[name]
                if scopes is None or (env_name is not None and env_name in scopes):
                    continue
                target = f"environment {_quote(env_name)}" if env_name else "no environment"
                out.add(
                    where,
                    f"secret {_quote(name)} is out of scope here: it belongs to environment "
                    f"{', '.join(_quote(e) for e in sorted(scopes))}, and this stage targets "
                    f"{target} (rule: a secret of an environment is given only to stages "
                    "that target it)",
                )


def _artifact_errors(doc: dict, out: _Collector) -> None:
    """`artifacts:` only on run steps, each path inside the workspace (relative, no ".."),
    each name used once in the pipeline (a later stage and its gate find it by name)."""
    stages = doc.get("stages")
    if not isinstance(stages, list):
        return
    names: dict[str, str] = {}
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("steps"), list):
            continue
        for step_index, step in enumerate(stage["steps"]):
            if not isinstance(step, dict) or not isinstance(step.get("artifacts"), list):
                continue
            at = ("stages", index, "steps", step_index, "artifacts")
            if step["artifacts"] and step.get("http") is not None:
                out.add(
                    at,
                    "only run steps store artifacts (files of the workspace) — move them "
                    "to a run step",
                )
                continue
            for item_index, item in enumerate(step["artifacts"]):
                if not isinstance(item, dict):
                    continue
                name, path = item.get("name"), item.get("path")
                if isinstance(name, str) and _matches(IDENTIFIER_PATTERN, name):
                    where = _format_path((*at, item_index))
                    if name in names:
                        out.add(
                            (*at, item_index, "name"),
                            f"duplicate artifact name {_quote(name)} — already used by "
                            f"{names[name]}; artifact names must be unique in the pipeline",
                        )
                    else:
                        names[name] = where
                if isinstance(path, str) and path:
                    problem = artifact_path_problem(path)
                    if problem:
                        out.add((*at, item_index, "path"), problem)


def artifact_path_problem(path: str) -> str | None:
    """Why an artifact path (or glob) can never be inside the workspace, or None."""
    if path.startswith(("/", "~")) or (len(path) > 1 and path[1] == ":"):
        return (
            f"artifact path {_quote(path)} is absolute — give a path relative to the "
            'workspace, such as "build/app.tar.gz"'
        )
    if "\\" in path:
        return f'artifact path {_quote(path)} contains "\\" — separate directories with "/"'
    if ".." in path.split("/"):
        return (
            f'artifact path {_quote(path)} leaves the workspace with ".." — give a path '
            "inside the workspace"
        )
    return None


def _matches(pattern: str, value: str) -> bool:
    return _compile_pattern(pattern).search(value) is not None


def _semantic_errors(doc: dict, out: _Collector, environments: list[str] | None) -> None:
    # parameters
    params = doc.get("parameters")
    if isinstance(params, list):
        seen_params: dict[str, int] = {}
        for index, param in enumerate(params):
            if not isinstance(param, dict):
                continue
            name = param.get("name")
            if isinstance(name, str):
                if name in seen_params:
                    out.add(
                        ("parameters", index, "name"),
                        f"duplicate parameter name {_quote(name)} — already used by "
                        f"parameters[{seen_params[name]}]",
                    )
                else:
                    seen_params[name] = index
            allowed, default = param.get("allowed"), param.get("default")
            if (
                isinstance(allowed, list)
                and allowed
                and all(isinstance(a, str) for a in allowed)
                and isinstance(default, str)
                and default not in allowed
            ):
                out.add(
                    ("parameters", index, "default"),
                    f"default {_quote(default)} is not one of the allowed values"
                    f"{_did_you_mean(default, allowed)} "
                    f"(allowed: {', '.join(_quote(a) for a in allowed)})",
                )

    stages = doc.get("stages")
    if not isinstance(stages, list):
        return
    index_by_name: dict[str, int] = {}
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict):
            continue
        name = stage.get("name")
        if isinstance(name, str):
            if name in index_by_name:
                out.add(
                    ("stages", index, "name"),
                    f"duplicate stage name {_quote(name)} — already used by "
                    f"stages[{index_by_name[name]}]; stage names must be unique",
                )
            else:
                index_by_name[name] = index
        steps = stage.get("steps")
        if isinstance(steps, list):
            seen_steps: dict[str, int] = {}
            for step_index, step in enumerate(steps):
                if not isinstance(step, dict):
                    continue
                step_name = step.get("name")
                if isinstance(step_name, str):
                    if step_name in seen_steps:
                        out.add(
                            ("stages", index, "steps", step_index, "name"),
                            f"duplicate step name {_quote(step_name)} — already used by "
                            f"steps[{seen_steps[step_name]}] in this stage",
                        )
                    else:
                        seen_steps[step_name] = step_index
                run = step.get("run")
                if isinstance(run, str) and len(run) <= MAX_RUN_BYTES:
                    size = len(run.encode("utf-8", "surrogatepass"))
                    if size > MAX_RUN_BYTES:
                        out.add(
                            ("stages", index, "steps", step_index, "run"),
                            f"command is too long ({size} bytes in UTF-8) — at most "
                            f"{MAX_RUN_BYTES} bytes are allowed; put long scripts in a file "
                            "in your repository and run that",
                        )
        env_name = stage.get("environment")
        if (
            environments is not None
            and isinstance(env_name, str)
            and env_name
            and env_name not in environments
        ):
            if environments:
                known = "known environments: " + ", ".join(environments)
            else:
                known = "no environments are configured yet"
            out.add(
                ("stages", index, "environment"),
                f"unknown environment {_quote(env_name)}"
                f"{_did_you_mean(env_name, environments)} ({known})",
            )

    # needs: unknown stages, self references, then cycles
    edges: dict[int, list[tuple[int, int]]] = {}
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("needs"), list):
            continue
        own = stage.get("name")
        where = f"{_format_path(('stages', index, 'needs'))}"
        for need_index, need in enumerate(stage["needs"]):
            if not isinstance(need, str):
                continue
            at = ("stages", index, "needs", need_index)
            if need == own:
                out.add(
                    at,
                    f"stage {_quote(own)} cannot need itself — remove it from needs",
                    path_text=where,
                )
            elif need not in index_by_name:
                candidates = [n for n in index_by_name if n != own]
                hint = _did_you_mean(need, candidates)
                if not hint:
                    hint = (
                        " (known stages: " + ", ".join(candidates) + ")"
                        if candidates
                        else " (there are no other stages)"
                    )
                out.add(at, f"unknown stage {_quote(need)}{hint}", path_text=where)
            elif index_by_name.get(own) == index:  # skip duplicates of an earlier stage
                edges.setdefault(index, []).append((index_by_name[need], need_index))

    names = {i: s["name"] for i, s in enumerate(stages) if i in index_by_name.values()}
    for component in _strongly_connected(edges):
        if len(component) < 2:
            continue
        cycle, first_need = _find_cycle(min(component), edges, component)
        start = cycle[0]
        out.add(
            ("stages", start, "needs", first_need),
            "cycle in needs: " + " → ".join(names[i] for i in cycle),
            path_text=_format_path(("stages", start, "needs")),
        )

    schedule = doc.get("schedule")
    if isinstance(schedule, str):
        for problem in _cron_problems(schedule):
            out.add(("schedule",), f"invalid cron schedule: {problem}")


def _strongly_connected(edges: dict[int, list[tuple[int, int]]]) -> list[set[int]]:
    """Tarjan's algorithm (graphs here have at most MAX_STAGES nodes)."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    result: list[set[int]] = []
    counter = [0]

    def visit(node: int) -> None:
        index_of[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges.get(node, ()):
            if target not in index_of:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index_of[target])
        if low[node] == index_of[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            result.append(component)

    for node in sorted(edges):
        if node not in index_of:
            visit(node)
    return sorted(result, key=min)


def _find_cycle(
    start: int, edges: dict[int, list[tuple[int, int]]], members: set[int]
) -> tuple[list[int], int]:
    """Shortest cycle through ``start`` inside one strongly connected component.
    Returns the node list (start … start) and the needs index of its first edge."""
    previous: dict[int, tuple[int, int]] = {}
    queue = deque([start])
    while queue and start not in previous:
        node = queue.popleft()
        for target, need_index in edges.get(node, ()):
            if target in members and target not in previous:
                previous[target] = (node, need_index)
                queue.append(target)
    path = [start]
    node = start
    while True:
        node, need_index = previous[node]
        path.append(node)
        if node == start:
            break
    path.reverse()
    first_need = next(k for t, k in edges[start] if t == path[1])
    return path, first_need


# ------------------------------------------------------------------ normalization


def _normalize(doc: dict) -> dict:
    def normalize_step(step: dict) -> dict:
        out: dict[str, Any] = {"name": step["name"]}
        if step.get("http") is not None:
            http = step["http"]
            out["type"] = "http"
            out["http"] = {
                "url": http["url"],
                "method": http.get("method") or DEFAULT_HTTP_METHOD,
                "headers": dict(http.get("headers") or {}),
                "body": http.get("body"),
                "expect": list(http.get("expect") or DEFAULT_HTTP_EXPECT),
            }
        else:
            out["type"] = "run"
            out["run"] = step["run"]
        timeout, retries = step.get("timeout"), step.get("retries")
        out["timeout"] = DEFAULT_TIMEOUT if timeout is None else int(timeout)
        out["retries"] = DEFAULT_RETRIES if retries is None else int(retries)
        out["env"] = dict(step.get("env") or {})
        if step.get("network") is not None:
            out["network"] = step["network"]
        if step.get("limits"):
            out["limits"] = {k: int(v) for k, v in step["limits"].items()}
        out["secrets"] = list(step.get("secrets") or [])
        if step.get("artifacts"):  # only when declared: older specs have no key either
            out["artifacts"] = [
                {
                    "name": a["name"],
                    "path": a["path"],
                    "policy_input": bool(a.get("policy_input")),
                    "optional": bool(a.get("optional")),
                }
                for a in step["artifacts"]
            ]
        return out

    normalized = {
        "name": doc["name"],
        "description": doc.get("description") or "",
        "parameters": [
            {
                "name": p["name"],
                "description": p.get("description") or "",
                "required": bool(p.get("required")),
                "default": p.get("default"),
                "allowed": list(p["allowed"]) if p.get("allowed") is not None else None,
            }
            for p in doc.get("parameters") or []
        ],
        "stages": [
            {
                "name": s["name"],
                "needs": list(s.get("needs") or []),
                "environment": s.get("environment"),
                "steps": [normalize_step(step) for step in s["steps"]],
            }
            for s in doc["stages"]
        ],
        "schedule": " ".join(doc["schedule"].split()) if doc.get("schedule") else None,
    }
    if doc.get("retention_days") is not None:
        normalized["retention_days"] = int(doc["retention_days"])
    return normalized


# ------------------------------------------------------------------------ public API


def parse_pipeline(
    text: str | bytes,
    *,
    environments: Iterable[str] | None = None,
    limits_max: Mapping[str, int] | None = None,
    secrets: Mapping[str, Any] | None = None,
) -> dict:
    """Parse and validate a pipeline document; return the normalized spec.

    The result contains only plain JSON types with every default filled in::

        {"name", "description", "parameters": [{"name", "description", "required",
         "default", "allowed"}], "stages": [{"name", "needs", "environment",
         "steps": [{"name", "type": "run"|"http", "run" | "http": {...},
                    "timeout", "retries", "env", "secrets", ["network"], ["limits"],
                    ["artifacts": [{"name", "path", "policy_input", "optional"}]]}]}],
         "schedule": str | None, ["retention_days": int]}

    Keys in brackets are present only when the document sets them.

    ``environments=None`` skips the environment-name check; ``limits_max=None`` the
    installation's maximum of step limits; ``secrets=None`` the secret names and scopes
    (a mapping of name → environment names, or None for a secret of any stage).
    Raises :class:`SpecError` listing every problem found, each with a 1-based line and
    column.
    """
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_DOCUMENT_BYTES:
            raise SpecError([_too_large(len(text))])
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(
                [{"message": f"the document is not valid UTF-8 (byte offset {exc.start})"}]
            ) from None
    if not isinstance(text, str):
        raise TypeError(f"parse_pipeline() expects str, not {type(text).__name__}")
    if len(text) > MAX_DOCUMENT_BYTES:
        raise SpecError([_too_large(len(text.encode("utf-8", "surrogatepass")))])
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError([_too_large(size)])

    known_envs: list[str] | None = None
    if environments is not None:
        known_envs = list(dict.fromkeys(environments))

    doc, positions, keys = _load(text)
    out = _Collector(positions, keys)
    if not isinstance(doc, dict):
        out.add(
            (),
            f'expected a mapping at the top level (with keys such as "name" and "stages"), '
            f"got {_describe(doc)}",
        )
        raise SpecError(out.errors)

    try:
        _schema_errors(doc, out)
        _semantic_errors(doc, out, known_envs)
        _step_context_errors(doc, out, limits_max, secrets)
        _artifact_errors(doc, out)
    except _EnoughErrors:
        pass
    if out.errors:
        errors = _sorted_errors(out.errors)
        raise SpecError([*errors, _more_errors_note()] if out.truncated else errors)
    return _normalize(doc)


def _too_large(size: int) -> Error:
    return {
        "message": f"the document is too large ({size} bytes) — at most "
        f"{MAX_DOCUMENT_BYTES} bytes ({MAX_DOCUMENT_BYTES // 1024} KiB) are allowed",
        "line": None,
        "column": None,
        "path": "",
    }


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def validate_parameters(spec: Mapping[str, Any], supplied: Mapping[str, Any] | None) -> dict:
    """Return the effective run parameters as ``{name: str}``.

    Supplied values may be strings, numbers or booleans (converted to strings; booleans
    become ``"true"``/``"false"``).  ``None`` counts as "not supplied".  Defaults are
    applied; optional parameters without a default that were not supplied are left out.
    Raises :class:`ParameterError` for missing required parameters (a required
    parameter may not be empty), unknown names, values outside ``allowed`` and
    non-scalar values.
    """
    definitions = [p for p in (spec.get("parameters") or []) if isinstance(p, Mapping)]
    by_name = {p["name"]: p for p in definitions}
    supplied = dict(supplied or {})
    errors: list[dict[str, str]] = []

    for name in supplied:
        if name not in by_name:
            if by_name:
                hint = _did_you_mean(name, by_name) or (" — expected one of: " + ", ".join(by_name))
            else:
                hint = " — this pipeline takes no parameters"
            errors.append(
                {"parameter": str(name), "message": f"unknown parameter {_quote(name)}{hint}"}
            )

    result: dict[str, str] = {}
    for name, definition in by_name.items():
        raw = supplied.get(name)
        if raw is None:
            default = definition.get("default")
            if default is not None:
                result[name] = str(default)
            elif definition.get("required"):
                errors.append(
                    {
                        "parameter": name,
                        "message": f"parameter {_quote(name)} is required — supply a value",
                    }
                )
            continue
        value = _scalar_text(raw)
        if value is None:
            errors.append(
                {
                    "parameter": name,
                    "message": f"parameter {_quote(name)} must be a single value (text, number "
                    f"or true/false), got {_describe(raw)}",
                }
            )
            continue
        if value == "" and definition.get("required"):
            errors.append(
                {
                    "parameter": name,
                    "message": f"parameter {_quote(name)} is required and must not be empty",
                }
            )
            continue
        allowed = definition.get("allowed")
        if allowed is not None and value not in allowed:
            errors.append(
                {
                    "parameter": name,
                    "message": f"{_quote(value)} is not an allowed value for parameter "
                    f"{_quote(name)}{_did_you_mean(value, allowed)} (allowed: "
                    f"{', '.join(_quote(a) for a in allowed)})",
                }
            )
            continue
        result[name] = value

    if errors:
        raise ParameterError(errors)
    return result


def topological_order(spec: Mapping[str, Any]) -> list[str]:
    """Stage names ordered so every stage comes after the stages it needs.

    Among stages that are ready at the same time, the one written first in the document
    comes first, so the order is stable.  Raises :class:`SpecError` for unknown stages
    or cycles (which :func:`parse_pipeline` already rejects).
    """
    stages = list(spec.get("stages") or [])
    names = [s["name"] for s in stages]
    index = {name: i for i, name in reversed(list(enumerate(names)))}
    waiting = [0] * len(stages)
    dependents: list[list[int]] = [[] for _ in stages]
    for i, stage in enumerate(stages):
        for need in dict.fromkeys(stage.get("needs") or []):
            if need not in index:
                raise SpecError(
                    [
                        {
                            "message": f"unknown stage {_quote(need)}",
                            "path": _format_path(("stages", i, "needs")),
                        }
                    ]
                )
            dependents[index[need]].append(i)
            waiting[i] += 1
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(names[i])
        for dependent in dependents[i]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(stages):
        stuck = [names[i] for i, count in enumerate(waiting) if count > 0]
        raise SpecError(
            [{"message": "cycle in needs between stages: " + ", ".join(stuck), "path": "stages"}]
        )
    return order

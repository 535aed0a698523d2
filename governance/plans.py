"""Terraform / OpenTofu plans: recognise the JSON of `terraform show -json <planfile>` (or
`tofu show -json`) and summarise it the way an approver reads it: how many resources are
added, changed, destroyed and replaced, and which.

Pure Python, no Django. The format is Terraform's documented "JSON Output Format"
(`format_version` 1.x): every planned change is one entry of `resource_changes`, with an
`address` and a `change.actions` list:

- `["create"]` → add, `["update"]` → change, `["delete"]` → destroy;
- `["delete", "create"]` or `["create", "delete"]` (create before destroy) → replace;
- `["no-op"]` and `["read"]` (data sources) change nothing; `["forget"]` (a `removed`
  block: the resource leaves the state but is not destroyed) is counted apart.

Unlike the last line of `terraform plan`, which counts a replacement both as an add and as a
destroy, the four counts here never overlap: "3 to add, 1 to change, 1 to destroy, 1 to
replace" is six resources (`terraform plan` would say 4 to add, 1 to change, 2 to destroy).

`summarise(doc)` raises PlanError, with the JSON path of what is wrong and how to fix it, for
a document that is not a plan or is a damaged one; `is_plan(doc)` only says whether a
document claims to be one (a JSON object with a string `format_version` and a
`resource_changes` list or `terraform_version`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ACTION_KINDS",
    "PlanError",
    "PlanSummary",
    "gate_plans",
    "is_plan",
    "summarise",
    "summary_or_none",
]

# Known `change.actions` lists → the kind of change shown to an approver (None: no change).
_ACTIONS: dict[tuple[str, ...], str | None] = {
    ("no-op",): None,
    ("read",): None,
    ("create",): "add",
    ("update",): "change",
    ("delete",): "destroy",
    ("delete", "create"): "replace",
    ("create", "delete"): "replace",
    ("forget",): "forget",
}
ACTION_KINDS = ("add", "change", "destroy", "replace", "forget")
_SUPPORTED_MAJOR = "1"
_HOW = "produce it with `terraform show -json tfplan > tfplan.json` (or `tofu show -json`)"


class PlanError(ValueError):
    """The document is not a usable plan. `where` is the JSON path of the problem."""

    def __init__(self, message: str, where: str = ""):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class ResourceChange:
    address: str
    type: str
    kind: str  # one of ACTION_KINDS
    actions: tuple[str, ...]


@dataclass(frozen=True)
class PlanSummary:
    format_version: str
    tool_version: str  # terraform_version (OpenTofu writes the same key)
    changes: tuple[ResourceChange, ...] = field(default_factory=tuple)

    def addresses(self, kind: str) -> list[str]:
        return [c.address for c in self.changes if c.kind == kind]

    @property
    def counts(self) -> dict[str, int]:
        return {kind: len(self.addresses(kind)) for kind in ACTION_KINDS}

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def headline(self) -> str:
        """ "3 to add, 1 to change, 1 to destroy" (", 1 to replace" and ", 1 to forget" only
        when there are any); "no changes" for an empty plan."""
        if not self.changes:
            return "no changes"
        counts = self.counts
        parts = [f"{counts[k]} to {k}" for k in ("add", "change", "destroy")]
        parts += [f"{counts[k]} to {k}" for k in ("replace", "forget") if counts[k]]
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """JSON-ready: counts, headline and the addresses by kind (for the API and pages)."""
        return {
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "headline": self.headline,
            "counts": self.counts,
            "resources": {kind: self.addresses(kind) for kind in ACTION_KINDS},
        }


def is_plan(doc) -> bool:
    """Whether `doc` (parsed JSON) claims to be a `terraform show -json` plan."""
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("format_version"), str)
        and ("resource_changes" in doc or "terraform_version" in doc)
        and "values" not in doc  # `terraform show -json` of a *state* has `values` instead
    )


def _actions(entry: dict, where: str) -> tuple[str, ...]:
    change = entry.get("change")
    if not isinstance(change, dict):
        raise PlanError("has no `change` object", where)
    actions = change.get("actions")
    if not isinstance(actions, list) or not actions or not all(isinstance(a, str) for a in actions):
        raise PlanError(
            'must be a non-empty list of action names, like ["create"]', f"{where}.change.actions"
        )
    key = tuple(actions)
    if key not in _ACTIONS:
        known = ", ".join(str(list(k)) for k in _ACTIONS)
        raise PlanError(
            f"unknown action list {actions!r} (known: {known})", f"{where}.change.actions"
        )
    return key


def summarise(doc) -> PlanSummary:
    """The summary of a parsed plan document. Raises PlanError for anything that is not a
    complete `terraform show -json` plan of a supported format version."""
    if not isinstance(doc, dict):
        raise PlanError(f"a plan is a JSON object, not {type(doc).__name__}; {_HOW}")
    version = doc.get("format_version")
    if not isinstance(version, str):
        raise PlanError(f"missing or not a string; is this a plan? {_HOW}", "format_version")
    if version.split(".")[0] != _SUPPORTED_MAJOR:
        raise PlanError(
            f"version {version!r} is not supported (Clearway reads format 1.x)", "format_version"
        )
    if "values" in doc and "resource_changes" not in doc:
        raise PlanError(f"this is a state, not a plan (it has `values`); {_HOW}")
    changes_raw = doc.get("resource_changes", [])
    if not isinstance(changes_raw, list):
        raise PlanError("must be a list", "resource_changes")
    tool_version = doc.get("terraform_version", "")
    changes = []
    seen: set[str] = set()
    # A deposed object (create-before-destroy left over) repeats its resource's address with
    # a `deposed` key; it is counted only when its resource has no change of its own.
    current = {
        e.get("address") for e in changes_raw if isinstance(e, dict) and not e.get("deposed")
    }
    for i, entry in enumerate(changes_raw):
        where = f"resource_changes[{i}]"
        if not isinstance(entry, dict):
            raise PlanError("must be an object", where)
        address = entry.get("address")
        if not isinstance(address, str) or not address:
            raise PlanError("missing or empty", f"{where}.address")
        if entry.get("mode", "managed") == "data":
            continue  # data sources are read, never changed
        kind = _ACTIONS[_actions(entry, where)]
        if kind is None:
            continue
        if entry.get("deposed") and (address in current or address in seen):
            continue
        if address in seen:
            raise PlanError(f"address {address!r} appears twice", f"{where}.address")
        seen.add(address)
        rtype = entry.get("type")
        changes.append(
            ResourceChange(
                address=address,
                type=rtype if isinstance(rtype, str) else "",
                kind=kind,
                actions=tuple(entry["change"]["actions"]),
            )
        )
    return PlanSummary(
        format_version=version,
        tool_version=tool_version if isinstance(tool_version, str) else "",
        changes=tuple(changes),
    )


def summary_or_none(doc) -> tuple[PlanSummary | None, str]:
    """(summary, "") for a plan, (None, error) for a damaged plan, (None, "") for a document
    that does not claim to be a plan at all."""
    if not is_plan(doc):
        return None, ""
    try:
        return summarise(doc), ""
    except PlanError as exc:
        return None, str(exc)


_MARKS = {"add": "+", "change": "~", "destroy": "-", "replace": "-/+", "forget": "×"}
_VERBS = {
    "add": "create",
    "change": "update in place",
    "destroy": "destroy",
    "replace": "replace",
    "forget": "forget",
}


def gate_plans(input_doc: dict | None) -> list[dict]:
    """The plans a gate's policy input holds, for the gate panel: one entry per policy-input
    artifact that is (or claims to be) a plan, with its summary or why it is unusable:
    `{name, stage, path, sha256, summary, error, resources: [{kind, mark, verb, address}]}`.
    Reads only the stored input document (`Gate.input`): what the policies judged."""
    doc = input_doc or {}
    parsed = doc.get("artifacts") or {}
    found = []
    for entry in doc.get("artifact_files") or []:
        if not isinstance(entry, dict) or not entry.get("policy_input"):
            continue
        name = entry.get("name", "")
        summary, error = None, entry.get("error") or ""
        if not error:
            if name not in parsed:
                continue
            summary, error = summary_or_none(parsed[name])
            if summary is None and not error:
                continue  # some other JSON document, not a plan
        resources = []
        if summary is not None:
            order = {kind: i for i, kind in enumerate(("destroy", "replace", "change", "add"))}
            for change in sorted(summary.changes, key=lambda c: order.get(c.kind, 9)):
                resources.append(
                    {
                        "kind": change.kind,
                        "mark": _MARKS[change.kind],
                        "verb": _VERBS[change.kind],
                        "address": change.address,
                    }
                )
        found.append(
            {
                "name": name,
                "stage": entry.get("stage", ""),
                "path": entry.get("path", ""),
                "sha256": entry.get("sha256", ""),
                "summary": summary,
                "error": error,
                "resources": resources,
            }
        )
    return found

"""Governance pages: policies (list, editor with tests, dry runs and publishing, version
history), environments (settings, approval rules, windows; edited by admins, audited) and the
audit log (filtered, paginated, chain verification on demand).

Every page asks governance.permissions: everyone signed in may read policies and
environments; changing them needs can_edit_policies / the change permission on the
environment (403 otherwise); the audit log needs can_view_audit (403). A missing object is
404. htmx requests get the page's named partial (django-template-partials). All changes go
through the verbs (governance.policies) or, for environments, one audited transaction
(governance.forms.EnvironmentEditor).
"""

from __future__ import annotations

import difflib
import functools
import json
import zoneinfo
from datetime import datetime
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Prefetch
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from guardian.shortcuts import get_groups_with_perms, get_users_with_perms

from . import audit, change_requests, checkpoints, delegation, notifications, policies, rego
from .actions import EnvironmentChanged
from .forms import (
    NEW_POLICY_SOURCE,
    AuditFilterForm,
    DelegationForm,
    EnvironmentEditor,
    NotificationPreferenceForm,
    PolicyForm,
    parse_utc,
)
from .models import (
    ApprovalRule,
    AuditEvent,
    Delegation,
    Environment,
    Gate,
    NotificationDelivery,
    NotificationPreference,
    Policy,
    PolicyVersion,
)
from .permissions import can, can_edit_policies, can_view_audit, restrict
from .rego import PolicyCompileError
from .secret_pages import secrets_context

AUDIT_PER_PAGE = 50
DETAILS_SHORT = 40  # characters of compact JSON shown before the row is expanded
EDITOR = "governance/policy_form.html"
WEEKDAY_NAMES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
RECENT_GATES = 25  # gates offered by "start from a real gate's input"


def _require_policy_editor(user) -> None:
    if not can_edit_policies(user):
        raise PermissionDenied("Only policy admins may change policies.")


def _render_or_partial(request, template: str, partial: str, context: dict):
    """htmx asked for a piece of the page: render only that partial."""
    if request.htmx:
        return render(request, f"{template}#{partial}", context)
    return render(request, template, context)


# --- policies: list ----------------------------------------------------------------------


@login_required
@require_GET
def policy_list(request):
    qs = Policy.objects.select_related("current_version__author").prefetch_related(
        Prefetch("environments", queryset=Environment.objects.order_by("name"))
    )
    return render(
        request,
        "governance/policies.html",
        {
            "policies": restrict(qs, request.user, "view").order_by("name"),
            "may_edit": can_edit_policies(request.user),
        },
    )


# --- policies: editor --------------------------------------------------------------------


def _policy_or_404(request, pk: int) -> Policy:
    qs = Policy.objects.select_related("current_version__author", "updated_by")
    return get_object_or_404(restrict(qs, request.user, "view"), pk=pk)


def _recent_gates(user) -> list[Gate]:
    """The latest gates `user` may view that recorded a policy input, newest first (the
    input itself is not loaded: only the chosen gate's is)."""
    qs = (
        Gate.objects.exclude(input_hash="")
        .select_related("environment", "stage_run__run__pipeline")
        .defer("input")
        .order_by("-created_at", "-pk")
    )
    return list(restrict(qs, user, "view")[:RECENT_GATES])


def _mark_draft_versions(policy: Policy, versions) -> None:
    """`v.is_draft`: the draft's source and enforcement are those of version v."""
    draft = policies.source_sha256(policy.source)
    for v in versions:
        v.is_draft = v.sha256 == draft and v.enforcement == policy.enforcement


def _editor_context(request, form, policy: Policy | None, **extra) -> dict:
    compile_errors = extra.pop("compile_errors", None) or []
    source = form["source"].value() or ""
    versions = []
    if policy is not None:
        history = restrict(policy.versions.select_related("author"), request.user, "view")
        versions = list(history.defer("source", "test_results").order_by("-number")[:5])
        _mark_draft_versions(policy, versions)
    may_edit = can_edit_policies(request.user)
    if may_edit:
        # The code editor (static/js/code-editor.js) mounts CodeMirror's styles as a <style>
        # element with the request's nonce; this page's CSP accepts it (middleware).
        request.csp_style_nonce = True
    return {
        "recent_gates": _recent_gates(request.user) if may_edit else [],
        "policy": policy,
        "form": form,
        "creating": policy is None,
        "may_edit": may_edit,
        "compile_errors": compile_errors,
        "error_lines": sorted({e.line for e in compile_errors if e.line}),
        "line_numbers": range(1, source.count("\n") + 2),
        "versions": versions,
        **extra,
    }


def _save_form(request, form: PolicyForm, policy: Policy | None) -> Policy:
    """Create the policy, or save its draft. A change of scope or of `enabled` takes effect
    at once, so it becomes a change request (four eyes; governance.change_requests)."""
    data = form.cleaned_data
    fields = {
        "source": data["source"],
        "enforcement": data["enforcement"],
        "description": data["description"],
        "test_cases": data["test_cases"],
    }
    scope = {
        "environments": list(data["environments"]),
        "tiers": data["tiers"],
        "enabled": data["enabled"],
    }
    if policy is None:
        return policies.create_policy(actor=request.user, name=data["name"], **fields, **scope)
    saved = policies.save_draft(policy, actor=request.user, **fields)
    proposed = change_requests.propose_policy_scope(saved, actor=request.user, **scope)
    if proposed is not None:
        messages.info(request, _waits(proposed, "policy admin"))
    return saved


def _waits(request_row, role: str) -> str:
    return (
        f"Your change waits for a second {role}: change request {request_row.pk} "
        f"({request_row.summary}). It takes effect when someone else approves it."
    )


def _expected(expect: dict, key: str) -> dict | None:
    value = expect.get(key)
    if value is None:
        return None
    if isinstance(value, int):
        return {"count": value, "messages": None}
    return {"count": None, "messages": value}


def _test_report(cases: list[dict], results: list[dict]) -> dict:
    rows = []
    for case, result in zip(cases, results, strict=False):
        expect = case.get("expect") or {}
        rows.append(
            {
                **result,
                "expect_deny": _expected(expect, "deny"),
                "expect_warn": _expected(expect, "warn"),
                "expect_error": expect.get("error"),
            }
        )
    failed = sum(1 for r in rows if not r["passed"])
    return {"rows": rows, "total": len(rows), "failed": failed, "passed": len(rows) - failed}


def _invalid(form: PolicyForm, *names: str) -> list[str]:
    return [f"{form.fields[n].label or n}: {e}" for n in names for e in form.errors.get(n, [])]


def _run_tests(form: PolicyForm) -> dict:
    invalid = _invalid(form, "source", "test_cases")
    if invalid:
        return {"invalid": invalid}
    source, cases = form.cleaned_data["source"], form.cleaned_data["test_cases"]
    try:
        rego.compile_policy(source)
    except PolicyCompileError as exc:
        return {"compile_errors": exc.errors}
    if not cases:
        return _test_report(cases, [])
    suite = rego.run_test_suite(source, cases)
    return {
        **_test_report(cases, suite["results"]),
        "coverage": _coverage_view(source, suite["coverage"]),
    }


def _coverage_view(source: str, coverage: dict | None) -> dict | None:
    """The source line by line, each marked covered / not covered / neither (comments,
    blank lines, the package line: OPA does not count them), from OPA's coverage report."""
    if not coverage:
        return None
    covered, missed = set(coverage["covered"]), set(coverage["not_covered"])
    lines = [
        {
            "number": n,
            "text": text,
            "state": "covered" if n in covered else ("missed" if n in missed else ""),
        }
        for n, text in enumerate(source.split("\n"), start=1)
    ]
    return {**coverage, "lines": lines}


def _dry_run(request, form: PolicyForm, policy: Policy | None) -> dict:
    invalid = _invalid(form, "source", "enforcement", "days")
    if invalid:
        return {"invalid": invalid}
    data = form.cleaned_data
    try:
        report = policies.dry_run(
            data["source"],
            days=data["days"],
            enforcement=data["enforcement"],
            policy=policy,
            actor=request.user,
        )
    except PolicyCompileError as exc:
        return {"compile_errors": exc.errors}
    except policies.PolicyInvalid as exc:
        return {"invalid": [exc.message]}
    for change in report["changed"]:
        change["at_time"] = datetime.fromisoformat(change["at"])
    return report


def _editor_post(request, policy: Policy | None):
    """The editor's buttons: save, test, dry-run (htmx partials) and publish."""
    _require_policy_editor(request.user)
    action = request.POST.get("action", "save")
    form = PolicyForm(request.POST, creating=policy is None)
    form.is_valid()
    if action == "test":
        context = _editor_context(request, form, policy, test=_run_tests(form))
        return _render_or_partial(request, EDITOR, "test-results", context)
    if action == "dry-run":
        context = _editor_context(request, form, policy, dry_run=_dry_run(request, form, policy))
        return _render_or_partial(request, EDITOR, "dry-run", context)
    if action == "from-gate":
        return _case_from_gate(request, form, policy)
    if action not in ("save", "publish") or (action == "publish" and policy is None):
        return HttpResponseBadRequest("unknown action")
    extra: dict = {}
    if form.is_valid():
        try:
            return _save_and_publish(request, form, policy, publish=action == "publish")
        except PolicyCompileError as exc:
            extra["compile_errors"] = exc.errors
        except policies.PolicyTestFailure as exc:
            extra["publish_refused"] = str(exc)
            extra["test"] = _test_report(form.cleaned_data["test_cases"], exc.results)
        except policies.PolicyTestsMissing as exc:
            extra["publish_refused"] = str(exc)
        except policies.PolicyInvalid as exc:
            form.add_refusal(exc)
        except policies.PolicyActionError as exc:
            form.add_error(None, str(exc))
        except change_requests.ChangeRequestError as exc:
            form.add_error(None, exc.message)
    elif "source" in form.cleaned_data:
        # Other fields are wrong: report the source's problems too, all in one go.
        try:
            rego.compile_policy(form.cleaned_data["source"])
        except PolicyCompileError as exc:
            extra["compile_errors"] = exc.errors
    # 200 with the errors on the page, as Django forms do (the pipeline editor too).
    return render(request, EDITOR, _editor_context(request, form, policy, **extra))


def _case_expectation(source: str, input_doc: dict, expect: str) -> dict:
    """What a case made from a gate's input expects. "pass": nothing denied. "deny": the
    messages the draft gives on that input when it denies (or warns, for a policy with no
    deny rule), else one message (a case that fails until the policy catches it)."""
    if expect == "pass":
        return {"deny": []}
    key = "deny" if rego.defines_deny(source) else "warn"
    try:
        rego.compile_policy(source)
    except PolicyCompileError:
        return {key: 1}
    decision = rego.evaluate(source, input_doc)
    messages_found = decision.deny if key == "deny" else decision.warn
    expected = {key: sorted(messages_found) if messages_found and decision.result != "error" else 1}
    return expected if key == "deny" else {"deny": [], **expected}


def _case_from_gate(request, form: PolicyForm, policy: Policy | None):
    """ "Start from a real gate's input": the chosen gate's recorded policy input becomes a
    new test case at the end of the editor's test cases, to edit and save (nothing is saved
    here). A gate the user may not view is a 404, as everywhere."""
    gate_id = request.POST.get("gate", "")
    if not gate_id.isdigit():
        raise Http404("no such gate")
    gates = Gate.objects.select_related("environment", "stage_run__run__pipeline")
    gate = get_object_or_404(restrict(gates, request.user, "view"), pk=int(gate_id))
    extra: dict = {}
    if not gate.input:
        extra["case_refused"] = f"Gate {gate.pk} recorded no policy input: pick another gate."
    elif "test_cases" not in form.cleaned_data or "source" not in form.cleaned_data:
        extra["case_refused"] = (
            "Fix the source and the test cases first (see the errors below): the new case is "
            "added to them."
        )
    if extra:
        return render(request, EDITOR, _editor_context(request, form, policy, **extra))
    run = gate.stage_run.run
    expect = "pass" if request.POST.get("gate_expect") == "pass" else "deny"
    default_name = (
        f"{run.pipeline.slug} #{run.number} {gate.stage_run.name} "
        f"({gate.environment.name}) {'passes' if expect == 'pass' else 'denies'}"
    )
    name = (request.POST.get("gate_case_name") or "").strip()[:200] or default_name
    source = form.cleaned_data["source"]
    case = {
        "name": name,
        "input": gate.input,
        "expect": _case_expectation(source, gate.input, expect),
    }
    data = request.POST.copy()
    data["test_cases"] = json.dumps(
        [*form.cleaned_data["test_cases"], case], indent=2, ensure_ascii=False
    )
    refreshed = PolicyForm(data, creating=policy is None)
    refreshed.is_valid()
    extra["case_added"] = {"name": name, "gate": gate, "run": run, "expect": case["expect"]}
    return render(request, EDITOR, _editor_context(request, refreshed, policy, **extra))


@login_required
@require_POST
def policy_revert(request, pk: int):
    """ "Revert to vN": the draft becomes version N's source and enforcement (audited);
    publishing it is the normal publish, tests and all."""
    policy = _policy_or_404(request, pk)
    _require_policy_editor(request.user)
    number = request.POST.get("version", "")
    if not number.isdigit():
        return HttpResponseBadRequest("version must be a version number, e.g. 2")
    try:
        policies.revert_to_version(policy, int(number), actor=request.user)
    except policies.PolicyUnchanged as exc:
        messages.info(request, str(exc))
    except policies.PolicyActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            f"The draft is now version {number}'s source and enforcement (test cases are "
            "unchanged). Gates keep the published version until you publish the draft.",
        )
    return redirect("governance:policy", pk=policy.pk)


def _save_and_publish(request, form: PolicyForm, policy: Policy | None, *, publish: bool):
    before = policy.updated_at if policy is not None else None
    saved = _save_form(request, form, policy)
    if publish:
        try:
            proposed = change_requests.propose_policy_publish(saved, actor=request.user)
        except policies.PolicyUnchanged as exc:
            messages.info(request, str(exc))
        else:
            messages.success(request, _waits(proposed, "policy admin"))
            return redirect("governance:change-request", pk=proposed.pk)
    elif policy is None:
        messages.success(request, f"Created {saved.name}. Run its tests, then publish it.")
    elif saved.updated_at == before:
        messages.info(request, "No changes: the draft is as it was.")
    else:
        messages.success(request, "Draft saved. Gates use the published version until you publish.")
    return redirect("governance:policy", pk=saved.pk)


@login_required
@require_http_methods(["GET", "POST"])
def policy_new(request):
    _require_policy_editor(request.user)
    if request.method == "POST":
        return _editor_post(request, None)
    form = PolicyForm(
        creating=True,
        initial={"source": NEW_POLICY_SOURCE, "test_cases": "[]", "enabled": True, "days": 30},
    )
    return render(request, EDITOR, _editor_context(request, form, None))


@login_required
@require_http_methods(["GET", "POST"])
def policy_detail(request, pk: int):
    policy = _policy_or_404(request, pk)
    if request.method == "POST":
        return _editor_post(request, policy)
    form = PolicyForm(initial=PolicyForm.initial_for(policy))
    cases = [
        {
            "name": case.get("name") or f"case {number}",
            "error": (case.get("expect") or {}).get("error"),
            "expects": [_expected(case.get("expect") or {}, key) for key in ("deny", "warn")],
        }
        for number, case in enumerate(policy.test_cases, start=1)
    ]
    return render(request, EDITOR, _editor_context(request, form, policy, cases=cases))


# --- policies: versions ------------------------------------------------------------------


def diff_lines(old: str, new: str, old_label: str, new_label: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs for the .diff view."""
    kinds = {"---": "diff-header", "+++": "diff-header", "@@": "diff-hunk"}
    out = []
    for line in difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_label, tofile=new_label, lineterm=""
    ):
        kind = kinds.get(line[:3]) or kinds.get(line[:2])
        if kind is None:
            kind = {"+": "diff-add", "-": "diff-del"}.get(line[:1], "diff-ctx")
        out.append((kind, line))
    return out


def _side(policy: Policy, versions: dict[int, PolicyVersion], choice: str) -> dict | None:
    """One side of a comparison: a version number, "draft", or 0 (nothing: before v1)."""
    if choice == "draft":
        return {"label": "draft", "source": policy.source, "enforcement": policy.enforcement}
    if not choice.isdigit():
        return None
    number = int(choice)
    if number == 0:
        return {"label": "empty", "source": "", "enforcement": None}
    version = versions.get(number)
    if version is None:
        return None
    return {"label": f"v{number}", "source": version.source, "enforcement": version.enforcement}


@login_required
@require_GET
def policy_versions(request, pk: int):
    policy = _policy_or_404(request, pk)
    history = restrict(policy.versions.select_related("author"), request.user, "view")
    page = Paginator(history.order_by("-number").defer("source"), 50).get_page(
        request.GET.get("page")
    )
    page.object_list = list(page.object_list)
    _mark_draft_versions(policy, page.object_list)
    latest = policy.current_version.number if policy.current_version else None
    if latest is None:
        default_from, default_to = "0", "draft"
    elif policy.has_unpublished_changes:
        default_from, default_to = str(latest), "draft"
    else:
        default_from, default_to = str(latest - 1), str(latest)
    wanted = [request.GET.get("from", default_from), request.GET.get("to", default_to)]
    numbers = [int(w) for w in wanted if w.isdigit()]
    found = {v.number: v for v in history.filter(number__in=numbers)}
    old, new = (_side(policy, found, w) for w in wanted)
    if old is None or new is None:
        raise Http404("no such version")
    return render(
        request,
        "governance/policy_versions.html",
        {
            "policy": policy,
            "page": page,
            "old": old,
            "new": new,
            "chosen": wanted,
            "may_edit": can_edit_policies(request.user),
            "extra": urlencode({"from": wanted[0], "to": wanted[1]}),
            "numbers": list(history.order_by("-number").values_list("number", flat=True)),
            "lines": diff_lines(old["source"], new["source"], old["label"], new["label"]),
        },
    )


# --- environments ------------------------------------------------------------------------


def _window_flags(env: Environment, now) -> dict | None:
    try:
        return {
            "in_freeze": env.freeze_at(now) is not None,
            "in_change_window": env.in_change_window(now),
        }
    except (KeyError, TypeError, ValueError, LookupError):  # malformed windows
        return None


@login_required
@require_GET
def environment_list(request):
    rules = ApprovalRule.objects.select_related("group").order_by("group__name")
    qs = Environment.objects.prefetch_related(Prefetch("approval_rules", queryset=rules))
    envs = list(restrict(qs, request.user, "view").order_by("name"))
    now = timezone.now()
    for env in envs:
        env.flags = _window_flags(env, now)
    return render(request, "governance/environments.html", {"environments": envs})


def _holders(env: Environment) -> dict:
    """Who holds approve / override on `env`: groups and users with the object permission,
    and groups holding it for every environment."""
    groups = get_groups_with_perms(env, attach_perms=True)
    users = get_users_with_perms(
        env, attach_perms=True, with_superusers=False, with_group_users=False
    )
    out = {}
    for action in ("approve", "override"):
        codename = f"{action}_environment"
        everywhere = Group.objects.filter(
            permissions__content_type__app_label="governance", permissions__codename=codename
        ).order_by("name")
        out[action] = {
            "groups": sorted(g.name for g, perms in groups.items() if codename in perms),
            "users": sorted(u.get_username() for u, perms in users.items() if codename in perms),
            "everywhere": [g.name for g in everywhere],
        }
    return out


def _environment_context(env: Environment, editor, may_change: bool) -> dict:
    holders = _holders(env)
    approving = set(holders["approve"]["groups"]) | set(holders["approve"]["everywhere"])
    rules = list(env.approval_rules.select_related("group").order_by("group__name"))
    now = timezone.now()
    freeze = []
    for window in _windows(env.freeze_windows):
        start, end = parse_utc(str(window.get("start"))), parse_utc(str(window.get("end")))
        active = bool(start and end and start <= now < end)
        freeze.append({**window, "start_at": start, "end_at": end, "active": active})
    return {
        "env": env,
        "editor": editor,
        "may_change": may_change,
        "rules": rules,
        "unusable_rules": [r for r in rules if r.group.name not in approving],
        "holders": holders,
        "freeze_windows": freeze,
        "flags": _window_flags(env, now),
        "change_windows": [
            {**w, "day_names": _day_names(w.get("days"))} for w in _windows(env.change_windows)
        ],
        "policies": policies.in_scope(env).select_related("current_version").order_by("name"),
        "timezones": _timezones(),
    }


def _windows(value) -> list[dict]:
    """Stored windows, skipping anything malformed (edited by hand in the admin's JSON)."""
    return [w for w in value if isinstance(w, dict)] if isinstance(value, list) else []


def _day_names(days) -> str:
    days = days if isinstance(days, list) else []
    return ", ".join(WEEKDAY_NAMES[d] if isinstance(d, int) and 0 <= d < 7 else "?" for d in days)


@functools.cache
def _timezones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


@login_required
@require_http_methods(["GET", "POST"])
def environment_detail(request, name: str):
    env = get_object_or_404(restrict(Environment.objects.all(), request.user, "view"), name=name)
    may_change = can(request.user, "change", env)
    if request.method == "POST" and not may_change:
        raise PermissionDenied("Only environment admins may change environments.")
    editor = EnvironmentEditor(env, request.POST or None) if may_change else None
    if request.method == "POST" and editor.is_valid():
        try:
            proposed = editor.save(actor=request.user)
        except (EnvironmentChanged, change_requests.ChangeRequestError) as exc:
            editor.form.add_error(None, str(exc))
        else:
            if proposed is not None:
                messages.success(request, _waits(proposed, "environment admin"))
                return redirect("governance:change-request", pk=proposed.pk)
            messages.info(request, "No changes.")
            return redirect("governance:environment", name=env.name)
    context = _environment_context(env, editor, may_change)
    context.update(secrets_context(request.user, env))
    return render(request, "governance/environment.html", context)


# --- audit log ---------------------------------------------------------------------------


def _require_audit(user) -> None:
    if not can_view_audit(user):
        raise PermissionDenied("Only compliance managers may read the audit log.")


def _target_url(event: AuditEvent) -> str | None:
    if event.target_type == "policy" and event.target_id.isdigit():
        return reverse("governance:policy", args=[int(event.target_id)])
    if event.target_type == "environment" and event.target_name:
        return reverse("governance:environment", args=[event.target_name])
    if event.target_type == "changerequest" and event.target_id.isdigit():
        return reverse("governance:change-request", args=[int(event.target_id)])
    if event.target_type == "run" and event.target_id.isdigit():
        return reverse("dashboard:run", args=[int(event.target_id)])
    return None


def _audit_context(request, verification=None) -> dict:
    form = AuditFilterForm(request.GET)
    events = restrict(AuditEvent.objects.all(), request.user, "view")
    valid = form.is_valid()
    events = form.apply(events) if valid else events.none()
    page = Paginator(events.order_by("-seq"), AUDIT_PER_PAGE).get_page(request.GET.get("page"))
    for event in page.object_list:
        event.details_json = json.dumps(
            event.details, separators=(",", ":"), sort_keys=True, ensure_ascii=False
        )
        event.target_url = _target_url(event)
    head_seq, head_hash = audit.chain_head()
    filters = {k: v for k, v in request.GET.items() if k in form.fields and v}
    context = {
        "form": form,
        "page": page,
        "extra": urlencode(filters),
        "filtered": bool(filters),
        "head": {"seq": head_seq, "hash": head_hash},
        "verification": verification,
        "details_short": DETAILS_SHORT,
    }
    return context


@login_required
@require_GET
def audit_log(request):
    _require_audit(request.user)
    return render(request, "governance/audit.html", _audit_context(request))


@login_required
@require_GET
def audit_verify(request):
    """Recompute the chain from the latest signed checkpoint (`?full=1`: from the first
    row; slow on big logs, so only on demand)."""
    _require_audit(request.user)
    result = audit.verify() if request.GET.get("full") else checkpoints.verify()
    if request.htmx:
        return render(request, "governance/audit.html#verification", {"verification": result})
    return render(request, "governance/audit.html", _audit_context(request, verification=result))


@login_required
@require_http_methods(["GET", "POST"])
def notification_preferences(request):
    """The signed-in user's notification choices (governance.notifications)."""
    pref = NotificationPreference.objects.filter(user=request.user).first()
    initial = {"email": True, "events": []}
    if pref is not None:
        initial = {"email": pref.email, "events": pref.events}
    form = NotificationPreferenceForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        with transaction.atomic():
            pref = pref or NotificationPreference(user=request.user)
            pref.email, pref.events = data["email"], list(data["events"])
            if data["clear_url"]:
                pref.url = ""
            elif data["url"]:
                pref.url = data["url"]
            pref.save()
            audit.record(
                request.user,
                "notification.preferences",
                ("user", request.user.pk, request.user.get_username()),
                email=pref.email,
                events=pref.events,
                personal_channel=notifications.mask(pref.url) if pref.url else None,
            )
        messages.success(request, "Notification preferences saved.")
        return redirect("governance:notification-preferences")
    deliveries = NotificationDelivery.objects.filter(user=request.user)[:20]
    return render(
        request,
        "governance/notifications.html",
        {
            "form": form,
            "personal_channel": notifications.mask(pref.url) if pref and pref.url else "",
            "deliveries": deliveries,
            **_delegation_context(request.user),
        },
    )


def _delegation_context(user, form: DelegationForm | None = None) -> dict:
    """The Delegation section: the user's delegations (given and held) that are in force or
    to come, and the form to add one."""
    now = timezone.now()
    current = Delegation.objects.filter(revoked_at__isnull=True, ends_at__gt=now).select_related(
        "delegator", "delegate"
    )
    return {
        "delegation_form": form or DelegationForm(),
        "delegations_given": list(current.filter(delegator=user).order_by("starts_at")),
        "delegations_held": list(current.filter(delegate=user).order_by("starts_at")),
        "now": now,
    }


@login_required
@require_http_methods(["POST"])
def delegation_create(request):
    """Out of office: delegate the signed-in user's approvals (governance.delegation)."""
    form = DelegationForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            delegation.create_delegation(
                actor=request.user,
                delegate=data["delegate"],
                starts_at=data["starts_at"],
                ends_at=data["ends_at"],
                reason=data["reason"],
            )
        except delegation.DelegationError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(
                request, f"{data['delegate'].get_username()} decides in your place in that period."
            )
            return redirect(reverse("governance:notification-preferences") + "#delegation")
    pref = NotificationPreference.objects.filter(user=request.user).first()
    initial = {"email": pref.email, "events": pref.events} if pref else {"email": True}
    context = {
        "form": NotificationPreferenceForm(initial=initial),
        "personal_channel": notifications.mask(pref.url) if pref and pref.url else "",
        "deliveries": NotificationDelivery.objects.filter(user=request.user)[:20],
        **_delegation_context(request.user, form),
    }
    return render(request, "governance/notifications.html", context, status=400)


@login_required
@require_http_methods(["POST"])
def delegation_revoke(request, pk: int):
    """Revoke one of the signed-in user's delegations (a superuser: anyone's)."""
    mine = Delegation.objects.select_related("delegate")
    if not request.user.is_superuser:
        mine = mine.filter(delegator=request.user)
    row = get_object_or_404(mine, pk=pk)
    try:
        delegation.revoke_delegation(row, actor=request.user)
    except delegation.DelegationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The delegation to {row.delegate.get_username()} is revoked.")
    return redirect(reverse("governance:notification-preferences") + "#delegation")


urlpatterns: list = [
    path("policies/", policy_list, name="policies"),
    path("policies/new/", policy_new, name="policy-new"),
    path("policies/<int:pk>/", policy_detail, name="policy"),
    path("policies/<int:pk>/versions/", policy_versions, name="policy-versions"),
    path("policies/<int:pk>/revert/", policy_revert, name="policy-revert"),
    path("environments/", environment_list, name="environments"),
    path("environments/<slug:name>/", environment_detail, name="environment"),
    path("audit/", audit_log, name="audit"),
    path("audit/verify/", audit_verify, name="audit-verify"),
    path("notifications/", notification_preferences, name="notification-preferences"),
    path("notifications/delegation/", delegation_create, name="delegation-create"),
    path("notifications/delegation/<int:pk>/revoke/", delegation_revoke, name="delegation-revoke"),
]

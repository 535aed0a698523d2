"""Pages people use all day. Views are short: load with a permission check, act, render.

Every query goes through governance.permissions (restrict / can / pipelines); what a user may
not see is a 404, what they may see but not do is a 403. htmx requests get the page's named
partial (django-template-partials) instead of the whole page.

Query counts are pinned by tests at small and large data sizes: list pages compute per-row
facts (last run, current stage, "may I approve this?") as subqueries of the page's own query,
never one query per row.
"""

from __future__ import annotations

import difflib
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, get_user_model, logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, Subquery, Window
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from governance import actions as gate_actions
from governance import credentials, plans
from governance import gates as gate_rules
from governance.gates import BLOCKING_RESULTS, GateError
from governance.models import (
    ApiToken,
    Approval,
    ApprovalDecision,
    ApprovalRule,
    Delegation,
    Enforcement,
    Environment,
    Gate,
    GateStatus,
    Override,
    PolicyDecision,
    Tier,
    UserSession,
)
from governance.permissions import can, pipelines, restrict
from governance.stepup import recent_step_up
from orchestrator import actions, sandbox
from orchestrator import artifacts as artifact_store
from orchestrator.models import (
    RUN_TERMINAL,
    Pipeline,
    Run,
    RunStatus,
    StageRun,
    StageStatus,
    StepRun,
    Team,
)
from orchestrator.spec import ParameterError, SpecError

from . import gate_advice, logs, metrics, webhooks
from .context_processors import Navigation
from .forms import (
    OVERRIDE_MIN_JUSTIFICATION,
    ApiTokenForm,
    GateDecisionForm,
    OverrideForm,
    PipelineForm,
    StepUpForm,
    TriggerForm,
)

ACTIVE_RUN = [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING]
ACTIVE_STAGE = [StageStatus.RUNNING, StageStatus.QUEUED, StageStatus.WAITING]
TIER_RANK = {Tier.DEVELOPMENT: 0, Tier.STAGING: 1, Tier.PRODUCTION: 2}
RUNS_PER_PAGE = 25
NEW_PIPELINE_TEMPLATE = """\
name: My service
description: Build, test and deploy my service.
parameters:
  - name: version
    description: Release version, e.g. 1.0.0
    required: true
stages:
  - name: build
    steps:
      - name: compile
        run: echo "building $CLEARWAY_PARAM_VERSION"
  - name: test
    needs: [build]
    steps:
      - name: unit-tests
        run: echo "all tests passed"
"""


def _may(user, action: str, model) -> Exists:
    """May `user` do `action` on the outer row? The decision of governance.permissions.can(),
    evaluated as a subquery of the page's own query (one query for a whole list)."""
    return Exists(restrict(model.objects.all(), user, action).filter(pk=OuterRef("pk")))


def _partial(request, template: str, name: str) -> str:
    """The named partial for htmx requests that ask for it, else the whole page."""
    if request.htmx and request.GET.get("partial") == name:
        return f"{template}#{name}"
    return template


def stage_columns(stages, name=lambda s: s["name"], needs=lambda s: s["needs"]) -> list[list]:
    """Stages in columns by dependency depth (a stage sits one column right of the deepest
    stage it needs); document order within a column."""
    by_name = {name(s): s for s in stages}
    depth: dict[str, int] = {}

    def depth_of(stage_name: str, path: tuple = ()) -> int:
        if stage_name not in depth:
            if stage_name in path:  # a cycle: parse_pipeline refuses them; never loop
                return 0
            parents = [n for n in needs(by_name[stage_name]) if n in by_name]
            depth[stage_name] = max(
                (depth_of(n, (*path, stage_name)) + 1 for n in parents), default=0
            )
        return depth[stage_name]

    columns: list[list] = []
    for stage in stages:
        d = depth_of(name(stage))
        while len(columns) <= d:
            columns.append([])
        columns[d].append(stage)
    return columns


# --- overview and wallboard -------------------------------------------------------------


def _pipeline_rows(user):
    last = Run.objects.filter(pipeline=OuterRef("pk")).order_by("-created_at", "-pk")
    return (
        pipelines(user)
        .select_related("team", "current_version")
        .annotate(
            last_run_id=Subquery(last.values("pk")[:1]),
            last_run_number=Subquery(last.values("number")[:1]),
            last_run_status=Subquery(last.values("status")[:1]),
            last_run_at=Subquery(last.values("created_at")[:1]),
        )
        .annotate(**_decision_flags("last_run_id"))
        .order_by("name")
    )


def _decision_flags(run_ref: str) -> dict:
    """Subqueries for the wallboard's flags of a run (`run_ref` names the outer run id): was
    one of its gates overridden, and who rejected it (a rejection is a decision)."""
    rejection = Approval.objects.filter(
        gate__stage_run__run=OuterRef(run_ref),
        gate__status=GateStatus.REJECTED,
        decision=ApprovalDecision.REJECT,
        void=False,
    ).order_by("-created_at")
    return {
        "overridden": Exists(Override.objects.filter(gate__stage_run__run=OuterRef(run_ref))),
        "rejected_by": Subquery(rejection.values("user__username")[:1]),
    }


def _environment_status(user, rows) -> tuple[list, dict]:
    """Per pipeline and environment its current version deploys to, the newest stage run
    that got somewhere (not pending, not skipped): one query of one `pk = (SELECT … LIMIT 1)`
    per pair, each walking the pipeline's runs newest first (the runs index) and stopping at
    the first hit — bounded by the pairs, not by the history (a GROUP BY over every stage run
    made the overview grow with it). Returns the environment columns and {pipeline id: {env:
    stage}}."""
    del user  # `rows` are the pipelines the user may view
    skip = [StageStatus.PENDING, StageStatus.SKIPPED]
    match = Q()
    for row in rows:
        spec = row.current_version.spec if row.current_version else {}
        names = {st.get("environment") for st in spec.get("stages", []) if st.get("environment")}
        for name in sorted(names):
            newest = (
                StageRun.objects.filter(run__pipeline=row.pk, environment__name=name)
                .exclude(status__in=skip)
                .order_by("-run__created_at", "-run_id")
                .values("pk")[:1]
            )
            match |= Q(pk=Subquery(newest))
    stages = (
        StageRun.objects.filter(match).select_related("environment", "run")
        if match
        else StageRun.objects.none()
    )
    by_pipeline: dict[int, dict[str, StageRun]] = {}
    envs = {}
    for stage in stages:
        envs[stage.environment.name] = stage.environment
        by_pipeline.setdefault(stage.run.pipeline_id, {})[stage.environment.name] = stage
    columns = sorted(envs.values(), key=lambda e: (TIER_RANK.get(e.tier, 9), e.name))
    for row in rows:
        statuses = by_pipeline.get(row.pk, {})
        row.environments = [statuses.get(env.name) for env in columns]
    return columns, by_pipeline


def overview_state(user) -> dict:
    """What the overview and the wallboard show: pipelines with their last run and last
    status per environment, what runs now, what waits for this user, recent failures."""
    rows = list(_pipeline_rows(user))
    environments, _ = _environment_status(user, rows)
    active_stage = StageRun.objects.filter(run=OuterRef("pk"), status__in=ACTIVE_STAGE).order_by(
        "position"
    )
    running = (
        restrict(Run.objects.filter(status__in=ACTIVE_RUN), user)
        .select_related("pipeline", "triggered_by")
        .annotate(
            current_stage=Subquery(active_stage.values("name")[:1]),
            current_stage_status=Subquery(active_stage.values("status")[:1]),
            overridden=Exists(Override.objects.filter(gate__stage_run__run=OuterRef("pk"))),
        )
        .order_by("created_at", "pk")[:20]
    )
    # The oldest waiting gates, and (a window count over the same rows) how many there are
    # in all: the navigation badge reuses that count instead of counting again.
    waiting = list(
        Gate.objects.waiting_for(user)
        .select_related(
            "environment",
            "stage_run__run__pipeline",
            "stage_run__run__triggered_by",
            "stage_run__run__version",
        )
        .annotate(waiting_total=Window(Count("pk")))
        .order_by("created_at", "pk")[:10]
    )
    failures = (
        restrict(
            Run.objects.filter(
                status__in=[RunStatus.FAILED, RunStatus.BLOCKED],
                finished_at__gte=timezone.now() - timedelta(days=7),
            ),
            user,
        )
        .select_related("pipeline", "triggered_by")
        .annotate(**_decision_flags("pk"))
        .order_by("-finished_at", "-pk")[:8]
    )
    return {
        "pipeline_rows": rows,
        "environments": environments,
        "running": list(running),
        "waiting": waiting,
        "failures": list(failures),
        "nav": Navigation(user, inbox_count=waiting[0].waiting_total if waiting else 0),
    }


@login_required
def overview(request):
    days = metrics.period_days(request.GET.get("days"))
    part = request.GET.get("partial") if request.htmx else None
    context = {"days": days, "periods": metrics.PERIODS}
    if part != "metrics":
        context.update(overview_state(request.user))
    if part != "live":
        context["metrics"] = metrics.overview(request.user, days)
    template = "dashboard/overview.html"
    if part in ("live", "metrics"):
        template += f"#{part}"
    return render(request, template, context)


@login_required
def board(request):
    if request.htmx and request.GET.get("partial") == "board-metrics":  # every 60 s
        context = {"metrics": metrics.overview(request.user, BOARD_METRICS_DAYS)}
        return render(request, "dashboard/board.html#board-metrics", context)
    template = _partial(request, "dashboard/board.html", "board-live")
    context = overview_state(request.user)
    if template == "dashboard/board.html":  # the whole page: the DORA and governance tiles too
        context["metrics"] = metrics.overview(request.user, BOARD_METRICS_DAYS)
    return render(request, template, context)


BOARD_METRICS_DAYS = 30


# --- pipelines --------------------------------------------------------------------------


def _creatable_teams(user):
    """Teams the user may create pipelines for: superusers any; otherwise the add_pipeline
    permission and membership of the team's group."""
    if not user.is_authenticated:
        return Team.objects.none()
    if user.is_superuser:
        return Team.objects.all()
    if not user.has_perm("orchestrator.add_pipeline"):
        return Team.objects.none()
    return Team.objects.filter(group__in=user.groups.all())


@login_required
def pipeline_list(request):
    rows = list(_pipeline_rows(request.user))
    environments, _ = _environment_status(request.user, rows)
    return render(
        request,
        "dashboard/pipelines.html",
        {
            "pipeline_rows": rows,
            "environments": environments,
            "may_create": _creatable_teams(request.user).exists(),
        },
    )


def _pipeline_or_404(request, slug: str) -> Pipeline:
    qs = (
        pipelines(request.user)
        .select_related("team", "current_version__author")
        .annotate(
            may_run=_may(request.user, "run", Pipeline),
            may_change=_may(request.user, "change", Pipeline),
        )
    )
    return get_object_or_404(qs, slug=slug)


@login_required
def pipeline_detail(request, slug: str):
    pipeline = _pipeline_or_404(request, slug)
    return _render_pipeline(request, pipeline)


def _render_pipeline(request, pipeline: Pipeline, form: TriggerForm | None = None):
    version = pipeline.current_version
    spec = version.spec if version else {"stages": [], "parameters": []}
    if form is None and pipeline.may_run and version is not None:
        form = TriggerForm(spec.get("parameters") or [])
    status = request.GET.get("status", "")
    if status not in RunStatus.values:
        status = ""
    runs = (
        Run.objects.filter(pipeline=pipeline)
        .select_related("version", "triggered_by")
        .annotate(overridden=Exists(Override.objects.filter(gate__stage_run__run=OuterRef("pk"))))
        .order_by("-created_at", "-pk")
    )
    if status:
        runs = runs.filter(status=status)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    env_names = {s.get("environment") for s in spec["stages"] if s.get("environment")}
    protected = (
        set(
            Environment.objects.filter(name__in=env_names, protected=True).values_list(
                "name", flat=True
            )
        )
        if env_names
        else set()
    )
    return render(
        request,
        "dashboard/pipeline.html",
        {
            "pipeline": pipeline,
            "version": version,
            "spec": spec,
            "columns": stage_columns(spec["stages"]),
            "protected": protected,
            "form": form,
            "page": page,
            "status": status,
            "statuses": RunStatus.values,
            "secret": webhooks.take(request, pipeline) if pipeline.may_change else "",
        },
    )


@login_required
@require_POST
def pipeline_trigger(request, slug: str):
    pipeline = _pipeline_or_404(request, slug)
    if not pipeline.may_run:
        raise PermissionDenied("you may not run this pipeline")
    version = pipeline.current_version
    if version is None:
        raise Http404("the pipeline has no definition yet")
    form = TriggerForm(version.spec.get("parameters") or [], request.POST)
    if form.is_valid():
        try:
            run = actions.trigger_run(
                pipeline, actor=request.user, parameters=form.parameters_to_send()
            )
        except ParameterError as exc:
            for error in exc.errors:
                field = error["parameter"] if error["parameter"] in form.fields else None
                form.add_error(field, error["message"])
        except actions.ActionError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Run #{run.number} of {pipeline.name} started.")
            return redirect("dashboard:run", run_id=run.pk)
    return _render_pipeline(request, pipeline, form)


def _editor_context(form, spec_errors: list[dict]) -> dict:
    text = form["definition"].value() or ""
    error_lines = {e["line"] for e in spec_errors if e.get("line")}
    return {
        "form": form,
        "spec_errors": spec_errors,
        "error_lines": error_lines,
        "line_numbers": range(1, text.count("\n") + 2),
    }


@login_required
@require_http_methods(["GET", "POST"])
def pipeline_new(request):
    teams = _creatable_teams(request.user)
    if not teams.exists():
        raise PermissionDenied("you may not create pipelines (or you belong to no team)")
    form = PipelineForm(
        request.POST or None, teams=teams, initial={"definition": NEW_PIPELINE_TEMPLATE}
    )
    if len(form.fields["team"].queryset) == 1:
        form.fields["team"].initial = form.fields["team"].queryset[0]
    spec_errors: list[dict] = []
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            pipeline = actions.create_pipeline(
                actor=request.user,
                slug=data["slug"],
                definition=data["definition"],
                team=data["team"],
            )
        except SpecError as exc:
            spec_errors = exc.errors
        except actions.ActionError as exc:
            form.add_error("slug", str(exc))
        else:
            messages.success(request, f"Pipeline {pipeline.name} created (version 1).")
            webhooks.hand_over(request, pipeline, pipeline.webhook_secret)  # shown once
            return redirect("dashboard:pipeline", slug=pipeline.slug)
    context = _editor_context(form, spec_errors)
    context["creating"] = True
    return render(request, "dashboard/pipeline_form.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def pipeline_edit(request, slug: str):
    pipeline = _pipeline_or_404(request, slug)
    if not pipeline.may_change:
        raise PermissionDenied("you may not change this pipeline")
    current = pipeline.current_version
    form = PipelineForm(
        request.POST or None,
        editing=True,
        initial={"definition": current.definition if current else ""},
    )
    spec_errors: list[dict] = []
    if request.method == "POST" and form.is_valid():
        try:
            version = actions.update_pipeline(
                pipeline, actor=request.user, definition=form.cleaned_data["definition"]
            )
        except SpecError as exc:
            spec_errors = exc.errors
        else:
            if current is not None and version.pk == current.pk:
                messages.info(request, "No changes: the definition is the same as before.")
            else:
                messages.success(request, f"Saved as version {version.number}.")
            return redirect("dashboard:pipeline", slug=pipeline.slug)
    context = _editor_context(form, spec_errors)
    context.update(pipeline=pipeline, creating=False)
    return render(request, "dashboard/pipeline_form.html", context)


@login_required
def pipeline_versions(request, slug: str):
    pipeline = _pipeline_or_404(request, slug)
    versions = pipeline.versions.select_related("author").order_by("-number")
    page = Paginator(versions, 50).get_page(request.GET.get("page"))
    shown = None
    if request.GET.get("v", "").isdigit():
        shown = get_object_or_404(pipeline.versions, number=int(request.GET["v"]))
    return render(
        request,
        "dashboard/versions.html",
        {"pipeline": pipeline, "page": page, "shown": shown},
    )


def diff_lines(old: str, new: str, old_label: str, new_label: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs for the .diff view."""
    out = []
    diff = difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_label, tofile=new_label, lineterm=""
    )
    for line in diff:
        if line.startswith(("---", "+++")):
            kind = "diff-header"
        elif line.startswith("@@"):
            kind = "diff-hunk"
        elif line.startswith("+"):
            kind = "diff-add"
        elif line.startswith("-"):
            kind = "diff-del"
        else:
            kind = "diff-ctx"
        out.append((kind, line))
    return out


def _version_number(value, fallback: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return fallback


@login_required
def pipeline_diff(request, slug: str):
    pipeline = _pipeline_or_404(request, slug)
    latest = pipeline.current_version.number if pipeline.current_version else 1
    to_number = _version_number(request.GET.get("to"), latest)
    from_number = _version_number(request.GET.get("from"), max(1, to_number - 1))
    found = {
        v.number: v
        for v in pipeline.versions.filter(number__in=[from_number, to_number]).select_related(
            "author"
        )
    }
    if from_number not in found or to_number not in found:
        raise Http404("no such version")
    old, new = found[from_number], found[to_number]
    lines = diff_lines(
        old.definition, new.definition, f"version {old.number}", f"version {new.number}"
    )
    return render(
        request,
        "dashboard/diff.html",
        {
            "pipeline": pipeline,
            "old": old,
            "new": new,
            "lines": lines,
            "numbers": list(pipeline.versions.order_by("-number").values_list("number", flat=True)),
        },
    )


# --- runs -------------------------------------------------------------------------------


def _run_or_404(request, run_id: int) -> Run:
    qs = (
        restrict(Run.objects.all(), request.user)
        .select_related(
            "pipeline__team", "pipeline__current_version__author", "version", "triggered_by"
        )
        .annotate(
            may_run=Exists(
                restrict(Pipeline.objects.all(), request.user, "run").filter(
                    pk=OuterRef("pipeline")
                )
            )
        )
    )
    return get_object_or_404(qs, pk=run_id)


def _stages_with_steps(run: Run) -> list[StageRun]:
    """Stages and their steps in one query (every stage has at least one step)."""
    stages: dict[int, StageRun] = {}
    steps = (
        StepRun.objects.filter(stage__run=run)
        .select_related("stage__environment")
        .order_by("stage__position", "position")
    )
    for step in steps:
        stage = stages.setdefault(step.stage_id, step.stage)
        if not hasattr(stage, "step_list"):
            stage.step_list = []
        stage.step_list.append(step)
    return list(stages.values())


def gate_panel_context(user, run: Run) -> dict:
    """Everything the gate panel shows, in at most five queries: the run's gates (with "may
    this user approve / override" as subqueries), their current policy decisions, approvals
    and overrides, and the approval rules with the members of each rule's group. Approvals
    are attributed to rules and separation of duties is decided by governance.gates, the
    same functions the gate verbs use."""
    gates = list(
        Gate.objects.filter(stage_run__run=run)
        .select_related("environment", "stage_run")
        .annotate(
            may_approve=_may(user, "approve", Gate),
            may_override=_may(user, "override", Gate),
            # Does the user stand in for someone now (a delegation)? In the same query.
            standing_in=Exists(Delegation.objects.active().filter(delegate_id=user.pk)),
        )
        .prefetch_related(
            Prefetch(
                "decisions",
                PolicyDecision.objects.filter(current=True)
                .select_related("policy_version__policy")
                .order_by("policy_version__policy__name"),
                to_attr="current_decisions",
            ),
            Prefetch(
                "approvals",
                Approval.objects.select_related("user", "on_behalf_of"),
                to_attr="all_approvals",
            ),
            Prefetch("overrides", Override.objects.select_related("user"), to_attr="all_overrides"),
        )
        .order_by("created_at", "pk")
    )
    if not gates:
        return {"gates": [], "active_gate": None}
    User = get_user_model()
    rules_by_env: dict[int, dict[int, dict]] = {}
    rows = (
        ApprovalRule.objects.filter(environment__in={g.environment_id for g in gates})
        .values(
            "environment_id",
            "group_id",
            "group__name",
            "required_count",
            "group__user__id",
            "group__user__username",
            "group__user__email",
            "group__user__is_active",
        )
        .order_by("environment_id", "group__name", "group__user__username")
    )
    for row in rows:
        rule = rules_by_env.setdefault(row["environment_id"], {}).setdefault(
            row["group_id"],
            {"group": row["group__name"], "required": row["required_count"], "members": []},
        )
        if row["group__user__id"] and row["group__user__is_active"]:
            member = User(
                pk=row["group__user__id"],
                username=row["group__user__username"],
                email=row["group__user__email"] or "",
            )
            why = gate_rules.sod_violation(run, member)
            rule["members"].append(
                {"username": member.username, "excluded": _sod_reason(why) if why else ""}
            )
    now = timezone.now()
    for gate in gates:
        rules = list(rules_by_env.get(gate.environment_id, {}).values())
        _decorate_gate(gate, user, rules)
        gate_advice.explain(gate, run, user, rules, now)
    active = next((g for g in gates if g.status == GateStatus.WAITING), None)
    return {
        "gates": gates,
        "active_gate": active,
        "override_min": OVERRIDE_MIN_JUSTIFICATION,
        "outcome": gate_advice.run_outcome(run, gates),
    }


def _sod_reason(message: str) -> str:
    """ "separation of duties: sam triggered this run and may not approve it" -> "triggered
    this run" (the name is shown next to it)."""
    text = message.split(": ", 1)[-1]
    parts = text.split(" ", 1)
    text = parts[1] if len(parts) == 2 else text
    return text.removesuffix(" and may not approve it")


def _decorate_gate(gate: Gate, user, rules: list[dict]) -> None:
    live = [a for a in gate.all_approvals if not a.void]
    approving = [a for a in live if a.decision == ApprovalDecision.APPROVE]
    matched = gate_rules.match_approvals(
        [(r["group"], r["required"]) for r in rules], [(a.pk, a.groups or []) for a in approving]
    )
    gate.rules = []
    for rule in rules:
        given = sum(1 for a in approving if matched.get(a.pk) == rule["group"])
        gate.rules.append(
            {
                **rule,
                "given": given,
                "missing": max(0, rule["required"] - given),
                "satisfied": given >= rule["required"],
            }
        )
    for approval in gate.all_approvals:
        approval.counted_for = matched.get(approval.pk) or ""
    gate.my_decision = next((a for a in live if a.user_id == user.pk), None)
    gate.plans = plans.gate_plans(gate.input)  # what the policies judged, from the stored input
    gate.denials = [d for d in gate.current_decisions if d.result in BLOCKING_RESULTS]
    gate.soft_denials = [d for d in gate.denials if d.enforcement == Enforcement.SOFT_MANDATORY]
    gate.denials_to_pass = gate.open_soft_denials(gate.current_decisions, gate.all_overrides)
    waiting = gate.status == GateStatus.WAITING
    gate.can_decide = waiting and gate.may_approve and gate.my_decision is None
    gate.can_override = waiting and gate.may_override and bool(gate.denials_to_pass)


@login_required
def run_detail(request, run_id: int):
    return _run_page(request, _run_or_404(request, run_id))


def _run_page(request, run: Run, **extra):
    stages = _stages_with_steps(run)
    windows = logs.tail_windows(run)  # the last lines of each step: a flat page weight
    for stage in stages:
        for step in stage.step_list:
            step.log_first, step.initial_log = windows.get(step.pk, (0, []))
            step.log_next = step.log_first + len(step.initial_log)
    context = {
        "run": run,
        "stages": stages,
        "columns": stage_columns(stages, name=lambda s: s.name, needs=lambda s: s.needs),
        "terminal": run.status in RUN_TERMINAL,
        "parameters": sorted((run.parameters or {}).items()),
        "sandbox_off": not sandbox.enabled(),
        "artifacts": artifact_store.for_run(run),
        **gate_panel_context(request.user, run),
        **extra,
    }
    return render(request, "dashboard/run.html", context)


@login_required
def run_gate_panel(request, run_id: int):
    """The gate panel alone (an htmx partial, re-fetched when a gate.updated event arrives)."""
    run = _run_or_404(request, run_id)
    context = {"run": run, "panel_only": True, **gate_panel_context(request.user, run)}
    return render(request, "dashboard/run.html#gate-panel", context)


def _gate_panel_response(request, run: Run, **extra):
    if request.htmx:
        context = {"run": run, "panel_only": True, **gate_panel_context(request.user, run), **extra}
        return render(request, "dashboard/run.html#gate-panel", context)
    if extra.get("override_confirm"):  # without JavaScript: the confirmation step in the page
        return _run_page(request, run, **extra)
    # Without JavaScript: the result as a message on the run page.
    if extra.get("gate_error"):
        messages.error(request, extra["gate_error"])
    elif extra.get("gate_notice"):
        messages.success(request, extra["gate_notice"])
    for form in (extra.get("decision_form"), extra.get("override_form")):
        if form is not None and form.errors:
            for errors in form.errors.values():
                for error in errors:
                    messages.error(request, error)
    return redirect(reverse("dashboard:run", args=[run.pk]) + "#gate-panel")


def _gate_for(request, run: Run, gate_id: int) -> Gate:
    return get_object_or_404(
        Gate.objects.filter(stage_run__run=run).select_related("environment"), pk=gate_id
    )


@login_required
@require_POST
def gate_decide(request, run_id: int, gate_id: int):
    run = _run_or_404(request, run_id)
    gate = _gate_for(request, run, gate_id)
    if not can(request.user, "approve", gate) and not gate_rules.delegators_of(request.user):
        raise PermissionDenied("you may not approve deployments to this environment")
    form = GateDecisionForm(request.POST)
    if not form.is_valid():
        return _gate_panel_response(request, run, decision_form=form)
    decision, comment = form.cleaned_data["decision"], form.cleaned_data["comment"].strip()
    try:
        if decision == "approve":
            gate_actions.approve_gate(gate, actor=request.user, comment=comment)
        else:
            gate_actions.reject_gate(gate, actor=request.user, comment=comment)
    except GateError as exc:  # refused, or the gate cannot take it: a message in the panel
        return _gate_panel_response(request, run, gate_error=str(exc), decision_form=form)
    notice = "You approved." if decision == "approve" else "You rejected the deployment."
    return _gate_panel_response(request, run, gate_notice=notice)


@login_required
@require_POST
def gate_override(request, run_id: int, gate_id: int):
    run = _run_or_404(request, run_id)
    gate = _gate_for(request, run, gate_id)
    if not can(request.user, "override", gate):
        raise PermissionDenied("you may not override gates of this environment")
    form = OverrideForm(request.POST)
    if not form.is_valid():
        return _gate_panel_response(request, run, override_form=form)
    justification = form.cleaned_data["justification"].strip()
    if request.POST.get("confirm") != "yes":
        # A second step that names the denials being passed, before anything is recorded.
        return _gate_panel_response(
            request, run, override_confirm=justification, override_form=form
        )
    try:
        gate_actions.override_gate(gate, actor=request.user, justification=justification)
    except GateError as exc:
        return _gate_panel_response(request, run, gate_error=str(exc), override_form=form)
    return _gate_panel_response(
        request, run, gate_notice="Overridden. The override is flagged in every report."
    )


@login_required
@require_POST
def run_cancel(request, run_id: int):
    run = _run_or_404(request, run_id)
    if not run.may_run:
        raise PermissionDenied("you may not cancel runs of this pipeline")
    try:
        actions.cancel_run(run, actor=request.user)
    except actions.ActionError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run #{run.number} canceled.")
    return redirect("dashboard:run", run_id=run.pk)


@login_required
@require_POST
def run_retry(request, run_id: int):
    run = _run_or_404(request, run_id)
    if not run.may_run:
        raise PermissionDenied("you may not run this pipeline")
    try:
        new = actions.retry_run(run, actor=request.user)
    except (actions.ActionError, ParameterError) as exc:
        messages.error(request, str(exc))
        return redirect("dashboard:run", run_id=run.pk)
    messages.success(request, f"Run #{new.number} started (a retry of #{run.number}).")
    return redirect("dashboard:run", run_id=new.pk)


# --- approvals --------------------------------------------------------------------------


@login_required
def approvals(request):
    mine = Approval.objects.filter(gate=OuterRef("pk"), user=request.user, void=False)
    gates = (
        Gate.objects.waiting_for(request.user)
        .select_related(
            "environment",
            "stage_run__run__pipeline",
            "stage_run__run__version",
            "stage_run__run__triggered_by",
        )
        .annotate(my_decision=Subquery(mine.values("decision")[:1]))
        .order_by("created_at", "pk")
    )
    page = Paginator(gates, 50).get_page(request.GET.get("page"))
    nav = Navigation(request.user, inbox_count=page.paginator.count)  # the badge's own count
    return render(request, "dashboard/approvals.html", {"page": page, "nav": nav})


@login_required
def approvals_count(request):
    """The navigation badge, re-fetched by live.js when a gate changes."""
    return render(request, "base.html#inbox-badge")


# --- account ----------------------------------------------------------------------------


@never_cache  # the page shows a new token's key: no cache, browser or proxy, may keep it
@login_required
@require_http_methods(["GET", "POST"])
def tokens(request):
    """A user's API tokens (create, shown once; revoke), the password step-up that creating
    an approve-scope token needs, their sessions and "sign out everywhere"."""
    user, now = request.user, timezone.now()
    form, step_form, new_key = ApiTokenForm(), StepUpForm(), None
    action = request.POST.get("action") if request.method == "POST" else None
    if action == "create":
        form = ApiTokenForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            unit = timedelta(hours=1) if data["unit"] == "hours" else timedelta(days=1)
            try:
                token, new_key = credentials.create_api_token(
                    actor=user,
                    name=data["name"],
                    scopes=data["scopes"],
                    expires_at=now + unit * min(data["lifetime"], 100000),
                    session_key=request.session.session_key,
                    now=now,
                )
            except credentials.CredentialRefused as exc:
                form.add_error(None, exc.message)
            else:
                form = ApiTokenForm()
    elif action == "revoke":
        token = ApiToken.objects.filter(user=user, pk=request.POST.get("token", "")[:20]).first()
        if token is None:
            messages.error(request, "No such token of yours.")
        elif credentials.revoke_api_token(actor=user, token=token):
            messages.success(request, f"The token “{token.name}” was revoked.")
        return redirect("dashboard:tokens")
    elif action == "step-up":
        step_form = StepUpForm(request.POST)
        if step_form.is_valid():
            if authenticate(
                request, username=user.get_username(), password=step_form.cleaned_data["password"]
            ):
                credentials.record_step_up(
                    actor=user, method="password", session_key=request.session.session_key
                )
                messages.success(request, "Password confirmed.")
                return redirect("dashboard:tokens")
            credentials.step_up_refused(actor=user, method="password", reason="wrong password")
            step_form.add_error("password", "That is not your password.")
    elif action == "sign-out-everywhere":
        revoke = request.POST.get("revoke_tokens") == "on"
        counts = credentials.sign_out_everywhere(actor=user, revoke_tokens=revoke)
        logout(request)
        messages.success(
            request,
            f"Signed out of {counts['sessions']} session(s)"
            + (f" and revoked {counts['tokens_revoked']} token(s)." if revoke else "."),
        )
        return redirect("login")
    context = {
        "tokens": [
            (t, t.state(now)) for t in ApiToken.objects.filter(user=user).order_by("-created_at")
        ],
        "form": form,
        "step_form": step_form,
        "new_key": new_key,
        "stepped_up": recent_step_up(user, now, session_key=request.session.session_key),
        "step_up_minutes": settings.CLEARWAY_STEP_UP_MINUTES,
        "max_days": settings.CLEARWAY_TOKEN_MAX_DAYS,
        "sessions": UserSession.objects.filter(user=user, ended_at__isnull=True)[:50],
        "this_session": request.session.session_key,
    }
    return render(request, "dashboard/tokens.html", context)


def server_error(request):
    return render(request, "500.html", status=500)


@login_required
def gate_redirect(request, gate_id: int):
    """/gates/<id>/ (the link in approval notifications): the gate's panel on its run page."""
    gate = get_object_or_404(
        restrict(Gate.objects.select_related("stage_run"), request.user), pk=gate_id
    )
    return redirect(f"{reverse('dashboard:run', args=[gate.stage_run.run_id])}#gate-panel")

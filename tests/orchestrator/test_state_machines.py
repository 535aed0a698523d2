"""State machines as data: every status enum has a table of allowed moves next to it, and
every move the table does not allow is refused — by the models' `move` (runs, stages,
steps) and by orchestrator.lifecycle (gates, report jobs), before anything is written."""

from __future__ import annotations

import pytest
from django.utils import timezone

from governance.models import (
    CHANGE_REQUEST_MACHINE,
    GATE_MACHINE,
    ChangeRequest,
    ChangeRequestStatus,
    Gate,
    GateStatus,
    ReportJob,
)
from orchestrator import lifecycle
from orchestrator.models import (
    RUN_MACHINE,
    RUN_TERMINAL,
    STAGE_MACHINE,
    STAGE_TERMINAL,
    STEP_MACHINE,
    STEP_TERMINAL,
    IllegalTransition,
    Run,
    RunStatus,
    StageRun,
    StageStatus,
    StepRun,
    StepStatus,
)

NOW = timezone.now()


def _run_move(old, new):
    Run(pk=1, status=old).move(new, now=NOW)


def _stage_move(old, new):
    StageRun(pk=1, status=old).move(new, now=NOW)


def _step_move(old, new):
    StepRun(pk=1, status=old).move(new, now=NOW)


def _gate_move(old, new):
    # Refused before the row, its run or its environment is looked at.
    lifecycle.gate(Gate(pk=1, status=old), new, reason="test", run=None, now=NOW)


def _report_move(old, new):
    lifecycle.report_job(ReportJob(pk=1, status=old), new, now=NOW)


def _change_request_move(old, new):
    lifecycle.change_request(ChangeRequest(pk=1, status=old), new, now=NOW)


MACHINES = {
    "run": (RUN_MACHINE, _run_move),
    "stage": (STAGE_MACHINE, _stage_move),
    "step": (STEP_MACHINE, _step_move),
    "gate": (GATE_MACHINE, _gate_move),
    "report job": (ReportJob.MACHINE, _report_move),
    "change request": (CHANGE_REQUEST_MACHINE, _change_request_move),
}

ILLEGAL = [
    pytest.param(name, old, new, id=f"{name}:{old}->{new}")
    for name, (machine, _) in MACHINES.items()
    for old, new in machine.illegal_moves()
]


@pytest.mark.parametrize(("machine", "old", "new"), ILLEGAL)
def test_every_illegal_move_is_refused(machine, old, new):
    _, move = MACHINES[machine]
    with pytest.raises(IllegalTransition, match=f"{old}"):
        move(old, new)


def test_the_tables_cover_every_status_and_every_machine_has_illegal_moves():
    assert RUN_MACHINE.states == set(RunStatus.values)
    assert STAGE_MACHINE.states == set(StageStatus.values)
    assert STEP_MACHINE.states == set(StepStatus.values)
    assert GATE_MACHINE.states == set(GateStatus.values)
    assert ReportJob.MACHINE.states == set(ReportJob.Status.values)
    assert CHANGE_REQUEST_MACHINE.states == set(ChangeRequestStatus.values)
    for machine, _ in MACHINES.values():
        assert machine.illegal_moves(), machine.name


def test_terminal_states_come_from_the_tables():
    assert RUN_TERMINAL == {"succeeded", "failed", "canceled", "blocked"}
    assert STAGE_TERMINAL == {"succeeded", "failed", "skipped", "canceled", "blocked"}
    assert STEP_TERMINAL == {"succeeded", "failed", "skipped", "canceled"}
    assert GATE_MACHINE.terminal == {"rejected", "blocked", "expired"}
    assert ReportJob.MACHINE.terminal == {"done", "failed"}


def test_an_unknown_status_is_refused():
    with pytest.raises(IllegalTransition, match="not a run status"):
        Run(pk=1, status=RunStatus.RUNNING).move("exploded", now=NOW)


@pytest.mark.parametrize(
    ("machine", "old", "new"),
    [
        ("run", RunStatus.QUEUED, RunStatus.RUNNING),
        ("stage", StageStatus.PENDING, StageStatus.QUEUED),
        ("step", StepStatus.RUNNING, StepStatus.PENDING),  # a retry
        ("report job", ReportJob.Status.QUEUED, ReportJob.Status.RUNNING),
    ],
)
def test_a_legal_move_passes_the_table(machine, old, new):
    table, _ = MACHINES[machine]
    table.check("it", old, new)  # no exception

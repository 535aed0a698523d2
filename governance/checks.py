"""System checks (`manage.py check`, and every start): the audit evidence settings say what
is wrong and how to fix it before beat or a worker trips over them."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Warning, register

from . import checkpoints, siem


@register()
def audit_evidence_settings(app_configs=None, **kwargs) -> list:
    problems = []
    try:
        siem.destinations()
    except (ValueError, OSError) as exc:
        problems.append(
            Error(str(exc), hint="fix CLEARWAY_AUDIT_STREAMS (docs/audit.md)", id="clearway.E101")
        )
    key = settings.CLEARWAY.get("AUDIT_SIGNING_KEY") or ""
    if key and not Path(key).is_file():
        problems.append(
            Error(
                f"CLEARWAY_AUDIT_SIGNING_KEY: {key} is not a file",
                hint="openssl genpkey -algorithm ed25519 -out <file> (docs/audit.md)",
                id="clearway.E102",
            )
        )
    for spec in settings.CLEARWAY.get("AUDIT_CHECKPOINT_SINKS") or []:
        if spec.startswith("s3://"):
            continue  # constructing the storage needs credentials; the first write says more
        try:
            checkpoints.sink(spec)
        except (checkpoints.CheckpointError, ValueError) as exc:
            problems.append(
                Error(str(exc), hint="fix CLEARWAY_AUDIT_CHECKPOINT_SINKS", id="clearway.E103")
            )
    if key and not settings.CLEARWAY.get("AUDIT_CHECKPOINT_SINKS"):
        problems.append(
            Warning(
                "audit checkpoints are signed but written to no sink outside the database",
                hint="set CLEARWAY_AUDIT_CHECKPOINT_SINKS (a WORM directory, s3://…, syslog)",
                id="clearway.W101",
            )
        )
    return problems

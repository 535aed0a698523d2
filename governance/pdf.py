"""The change report as a readable PDF (reportlab): a title page with the evidence header,
summary numbers and a chart (deployments and exceptions per week), then the exceptions, then
the change table.

Text goes through `_para`, which escapes it and sets any run of characters outside Windows-1252
(Chinese, Cyrillic, Greek, ...) in reportlab's built-in Unicode CID font STSong-Light, so
names like "李雷" print instead of turning into boxes, with no font file to ship.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

from django.conf import settings
from django.utils import timezone
from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import (
    KeepTogether,
    LongTable,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from . import reports
from .models import ReportJob
from .reports import EXCEPTION_KINDS, flatten_change

FALLBACK_FONT = "STSong-Light"
ACCENT = colors.HexColor("#0b6b6b")
OVERRIDE = colors.HexColor("#6b3fa0")
BAD = colors.HexColor("#b42318")
ZEBRA = colors.HexColor("#f3f5f5")
TABLE_CHUNK = 150  # rows per table flowable: keeps layout time linear

_fonts_ready = False


def _register_fonts() -> None:
    global _fonts_ready
    if not _fonts_ready:
        pdfmetrics.registerFont(UnicodeCIDFont(FALLBACK_FONT))
        _fonts_ready = True


def _markup(text) -> str:
    """Escaped paragraph markup; characters Helvetica cannot show use the CID font."""
    if text is None:
        return ""
    text = str(text)
    out: list[str] = []
    run: list[str] = []
    fallback = False
    for ch in text:
        try:
            ch.encode("cp1252")
            needs = False
        except UnicodeEncodeError:
            needs = True
        if needs != fallback and run:
            out.append(_wrap("".join(run), fallback))
            run = []
        fallback = needs
        run.append(ch)
    if run:
        out.append(_wrap("".join(run), fallback))
    return "".join(out)


def _wrap(text: str, fallback: bool) -> str:
    text = escape(text).replace("\n", "<br/>")
    return f'<font name="{FALLBACK_FONT}">{text}</font>' if fallback else text


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    cell = ParagraphStyle("cell", parent=base["Normal"], fontSize=7, leading=8.5, alignment=TA_LEFT)
    return {
        "title": ParagraphStyle("t", parent=base["Title"], textColor=ACCENT, alignment=TA_LEFT),
        "h1": ParagraphStyle("h1", parent=base["Heading1"], textColor=ACCENT, fontSize=15),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontSize=11),
        "body": ParagraphStyle("b", parent=base["Normal"], fontSize=9, leading=11.5),
        "small": ParagraphStyle("s", parent=base["Normal"], fontSize=7.5, leading=9.5),
        "cell": cell,
        "cellb": ParagraphStyle("cb", parent=cell, fontName="Helvetica-Bold"),
        "mono": ParagraphStyle("m", parent=cell, fontName="Courier", fontSize=6.5, leading=8),
    }


def _p(text, style) -> Paragraph:
    return Paragraph(_markup(text), style)


def _table(rows: list[list], widths: list[float], *, header: bool = True, repeat: int = 1):
    table = LongTable(rows, colWidths=widths, repeatRows=repeat if header else 0)
    style = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#c9d1d1")),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ("ROWBACKGROUNDS", (0, 1 if header else 0), (-1, -1), [colors.white, ZEBRA]),
    ]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dbe8e8")))
    table.setStyle(TableStyle(style))
    return table


def _week(iso_time: str | None) -> date | None:
    if not iso_time:
        return None
    day = datetime.fromisoformat(iso_time.replace("Z", "+00:00")).date()
    return day - timedelta(days=day.weekday())


def weekly_counts(changes: list[dict]) -> list[tuple[date, int, int]]:
    """(Monday, deployments, changes with an exception) per ISO week, gaps filled."""
    deployments: Counter = Counter()
    exceptional: Counter = Counter()
    for row in changes:
        week = _week(row.get("requested_at"))
        if week is None:
            continue
        deployments[week] += 1
        if row.get("exceptions"):
            exceptional[week] += 1
    if not deployments:
        return []
    first, last = min(deployments), max(deployments)
    out = []
    week = first
    while week <= last:
        out.append((week, deployments[week], exceptional[week]))
        week += timedelta(days=7)
    return out


def _chart(changes: list[dict], width: float) -> Drawing:
    weeks = weekly_counts(changes)
    height = 170
    drawing = Drawing(width, height)
    if not weeks:
        drawing.add(String(10, height / 2, "No deployments in this period.", fontSize=9))
        return drawing
    chart = VerticalBarChart()
    chart.x, chart.y = 40, 35
    chart.width, chart.height = width - 170, height - 55
    chart.data = [[w[1] for w in weeks], [w[2] for w in weeks]]
    step = max(1, len(weeks) // 12)
    chart.categoryAxis.categoryNames = [
        w[0].strftime("%d %b") if i % step == 0 else "" for i, w in enumerate(weeks)
    ]
    chart.categoryAxis.labels.fontSize = 6.5
    chart.categoryAxis.labels.angle = 30
    chart.categoryAxis.labels.boxAnchor = "ne"
    chart.valueAxis.valueMin = 0
    top = max(max(w[1] for w in weeks), 1)
    chart.valueAxis.valueMax = top + max(1, top // 5)
    chart.valueAxis.valueStep = max(1, (top + 4) // 5)
    chart.valueAxis.labels.fontSize = 7
    chart.bars[0].fillColor = ACCENT
    chart.bars[1].fillColor = BAD
    chart.barSpacing = 1
    chart.groupSpacing = 4
    drawing.add(chart)
    legend = Legend()
    legend.x, legend.y = width - 120, height - 30
    legend.fontSize = 7.5
    legend.alignment = "right"
    legend.colorNamePairs = [(ACCENT, "deployments / week"), (BAD, "with an exception")]
    drawing.add(legend)
    return drawing


FILTER_LABELS = {
    "from": "from",
    "to": "to (exclusive)",
    "environment": "environment",
    "pipeline": "pipeline",
    "team": "team",
    "outcome": "outcome",
    "exceptions_only": "exceptions only",
}


def readable_filters(filters: dict) -> str:
    """'from 2026-10-01 00:00 UTC · to (exclusive) … · environment production' — the
    filters as a person reads them (the CSV/JSON header keeps the exact values)."""
    parts = []
    for key, label in FILTER_LABELS.items():
        value = filters.get(key)
        if value in (None, "", False):
            continue
        if value is True:
            parts.append(label)
        elif key in ("from", "to"):
            parts.append(f"{label} {str(value).replace('T', ' ').replace('Z', ' UTC')}")
        else:
            parts.append(f"{label} {value}")
    if not filters.get("from") and not filters.get("to"):
        parts.insert(0, "the whole history")
    basis = filters.get("period_basis")
    text = " · ".join(parts) or "none"
    return f"{text} (period by {basis})" if basis else text


def readable_rows(rows: dict) -> str:
    """'12 changes · 3 exceptions (1 override, 2 gate rejected)'."""
    main = [f"{rows.get(k, 0)} {k}" for k in ("changes", "exceptions") if k in rows]
    kinds = [
        f"{n} {EXCEPTION_KINDS.get(k.split('.', 1)[1], k.split('.', 1)[1]).lower()}"
        for k, n in rows.items()
        if k.startswith("exceptions.") and n
    ]
    text = " · ".join(main) or ", ".join(f"{v} {k}" for k, v in rows.items())
    return f"{text} ({', '.join(kinds)})" if kinds else text


def _header_rows(header: dict, s: dict) -> list[list]:
    head = header.get("audit_chain_head") or {}
    verification = header.get("chain_verification") or {}
    ok = verification.get("ok")
    verified = (
        f"OK — {verification.get('checked')} events re-hashed up to seq "
        f"{verification.get('up_to_seq')}"
        if ok
        else f"FAILED at seq {verification.get('first_broken_seq')}: {verification.get('problem')}"
    )
    filters = {k: v for k, v in (header.get("filters") or {}).items() if v not in (None, False)}
    pairs = [
        ("Generated at (UTC)", header.get("generated_at")),
        ("Generated by", header.get("generated_by")),
        ("Clearway version", header.get("clearway_version")),
        ("Filters", readable_filters(filters)),
        ("Rows", readable_rows(header.get("rows") or {})),
        ("Audit chain head", f"seq {head.get('seq')} · {head.get('hash')}"),
        ("Chain verification", verified),
        ("This export's audit event", f"seq {header.get('export_audit_seq')}"),
        ("Ordering", header.get("ordering")),
    ]
    return [
        [_p(k, s["cellb"]), _p(v, s["mono"] if "hash" in k.lower() else s["cell"])]
        for k, v in pairs
    ]


def _summary_rows(changes: list[dict], exceptions: list[dict], s: dict) -> list[list]:
    outcomes = Counter(row["outcome"] for row in changes)
    kinds = Counter(e["kind"] for e in exceptions)
    rows = [[_p("Deployments to protected environments", s["cellb"]), _p(len(changes), s["cell"])]]
    for outcome, n in sorted(outcomes.items()):
        rows.append([_p(f"   outcome {outcome}", s["cell"]), _p(n, s["cell"])])
    rows.append([_p("Exceptions", s["cellb"]), _p(len(exceptions), s["cell"])])
    for kind, label in EXCEPTION_KINDS.items():
        rows.append([_p(f"   {label}", s["cell"]), _p(kinds.get(kind, 0), s["cell"])])
    sod = sum(1 for r in changes if r["separation_of_duties"] not in ("ok", "n/a (no gate)"))
    rows.append([_p("Changes with a separation-of-duties finding", s["cellb"]), _p(sod, s["cell"])])
    return rows


EXC_WIDTHS = [30 * mm, 30 * mm, 22 * mm, 55 * mm, 30 * mm, 95 * mm, 15 * mm]
CHG_HEAD = [
    "Change",
    "Requested (UTC)",
    "Pipeline / run",
    "Version / commit / branch",
    "Env",
    "Requested by / trigger / reason",
    "Approvals (given/required)",
    "Separation of duties",
    "Policy decisions",
    "Overrides",
    "Started / finished",
    "Outcome / related",
    "Audit seq",
]
CHG_WIDTHS = [
    15 * mm,
    18 * mm,
    20 * mm,
    20 * mm,
    15 * mm,
    24 * mm,
    38 * mm,
    22 * mm,
    30 * mm,
    22 * mm,
    18 * mm,
    18 * mm,
    13 * mm,
]  # fmt: skip  (273 mm: landscape A4 less the margins)


def _exception_flowables(exceptions: list[dict], s: dict) -> list:
    out = [_p("Exceptions", s["h1"])]
    if not exceptions:
        out.append(_p("No exceptions in this period.", s["body"]))
        return out
    head = ["Kind", "At (UTC)", "Change", "Subject", "Actor", "Detail", "Audit seq"]
    for start in range(0, len(exceptions), TABLE_CHUNK):
        rows = [[_p(h, s["cellb"]) for h in head]]
        for e in exceptions[start : start + TABLE_CHUNK]:
            change = f"{e['change_id']} {e['url']}".strip()
            rows.append(
                [
                    _p(EXCEPTION_KINDS.get(e["kind"], e["kind"]), s["cell"]),
                    _p(_t(e["at"]), s["cell"]),
                    _p(change, s["cell"]),
                    _p(e["subject"], s["cell"]),
                    _p(e["actor"], s["cell"]),
                    _p(e["detail"], s["cell"]),
                    _p(e["audit_seq"] or "", s["cell"]),
                ]
            )
        out.append(_table(rows, EXC_WIDTHS))
    return out


def _t(value: str | None) -> str:
    """ "2026-01-05T09:01:00Z" -> "2026-01-05 09:01:00" (wraps at the space in narrow cells)."""
    return value.replace("T", " ").removesuffix("Z") if value else "—"


def _change_cells(row: dict, s: dict) -> list:
    flat = flatten_change(row)
    approvals = f"{row['approvals_given']}/{row['approvals_required']}"
    if flat["approvals"]:
        approvals += ": " + flat["approvals"]
    requested = " · ".join(
        x for x in (row["requested_by"] or "—", row["trigger"], row["reason"]) if x
    )
    version = " · ".join(x for x in (row["version"], row["commit"], row["branch"]) if x)
    outcome = row["outcome"] + (f" · {flat['related_run']}" if flat["related_run"] else "")
    if row["exceptions"]:
        outcome += " · EXCEPTION: " + flat["exceptions"]
    seqs = f"{row['audit_seq_first']}–{row['audit_seq_last']}" if row["audit_seq_first"] else "—"
    cells = [
        f"{row['change_id']}\n{row['url']}",
        _t(row["requested_at"]),
        f"{row['pipeline']} #{row['run_number']} (v{row['pipeline_version']})",
        version or "—",
        row["environment"],
        requested,
        approvals,
        row["separation_of_duties"],
        flat["policy_decisions"] or "—",
        flat["overrides"] or "—",
        f"{_t(row['started'])}\n{_t(row['finished'])}",
        outcome,
        seqs,
    ]
    return [_p(c, s["cell"]) for c in cells]


def _change_flowables(changes: list[dict], s: dict) -> list:
    out = [_p("Changes", s["h1"])]
    if not changes:
        out.append(_p("No deployments to protected environments in this period.", s["body"]))
        return out
    for start in range(0, len(changes), TABLE_CHUNK):
        rows = [[_p(h, s["cellb"]) for h in CHG_HEAD]]
        rows += [_change_cells(r, s) for r in changes[start : start + TABLE_CHUNK]]
        table = _table(rows, CHG_WIDTHS)
        extra = [
            ("TEXTCOLOR", (0, i), (0, i), OVERRIDE)
            for i, r in enumerate(changes[start : start + TABLE_CHUNK], start=1)
            if r["exceptions"]
        ]
        if extra:
            table.setStyle(TableStyle(extra))
        out.append(table)
    return out


def render_change_report(
    header: dict,
    changes: list[dict],
    exceptions: list[dict],
    *,
    progress: Callable[[float], None] | None = None,
) -> bytes:
    """The PDF bytes. `progress(fraction)` is called while pages are laid out."""
    _register_fonts()
    s = _styles()
    buf = io.BytesIO()
    pagesize = landscape(A4)
    generated = f"{header.get('generated_at')} by {header.get('generated_by')}"

    def footer(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(colors.HexColor("#555555"))
        head = header.get("audit_chain_head") or {}
        canvas.drawString(
            12 * mm,
            7 * mm,
            f"Clearway change report · generated {generated} · chain head seq {head.get('seq')}",
        )
        canvas.drawRightString(pagesize[0] - 12 * mm, 7 * mm, f"page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(
        buf,
        pagesize=pagesize,
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        topMargin=12 * mm,
        bottomMargin=14 * mm,
        title="Clearway change report",
        author="Clearway",
        subject=f"Change report generated {generated}",
    )
    if progress:
        total = {"n": 1}

        def on_progress(kind: str, value) -> None:
            if kind == "SIZE_EST":
                total["n"] = max(1, value)
            elif kind == "PROGRESS":
                progress(min(1.0, value / total["n"]))

        doc.setProgressCallBack(on_progress)
    width = pagesize[0] - 24 * mm
    filters = header.get("filters") or {}
    period = f"{filters.get('from') or 'the beginning'} to {filters.get('to') or 'now'}"
    story: list = [
        _p("Change report", s["title"]),
        _p(
            f"Deployments to protected environments from {period} — evidence for change "
            "management controls (SOC 2 CC8.1, ISO 27001 A.8.32, SOX ITGC change management, "
            "PCI DSS 6.5).",
            s["body"],
        ),
        Spacer(1, 4 * mm),
        _table(_header_rows(header, s), [45 * mm, width - 45 * mm], header=False),
        Spacer(1, 4 * mm),
    ]
    story.append(
        KeepTogether(
            [
                Table(
                    [
                        [
                            _table(
                                _summary_rows(changes, exceptions, s),
                                [70 * mm, 18 * mm],
                                header=False,
                            ),
                            _chart(changes, width - 95 * mm),
                        ]
                    ],
                    colWidths=[92 * mm, width - 92 * mm],
                    style=TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]),
                )
            ]
        )
    )
    story.append(
        _p(
            "The SHA-256 of this file is stored with the report job and recorded in the audit "
            "log (event report.generate). See docs/reports.md for how to verify both.",
            s["small"],
        )
    )
    story.append(PageBreak())
    story += _exception_flowables(exceptions, s)
    story.append(PageBreak())
    story += _change_flowables(changes, s)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    if progress:
        progress(1.0)
    return buf.getvalue()


def generate_pdf(job: ReportJob, *, progress: Callable[[int], None] | None = None) -> dict:
    """Build the PDF of `job` (claimed by governance.actions.generate_report_pdf: status
    running), write it under MEDIA_ROOT/reports/ and set its file and SHA-256 (the verb
    records the outcome). Progress: 0–50 % reading the rows, 50–100 % laying out the pages.
    Returns the row counts."""
    user = job.requested_by
    report = lambda p: progress(p) if progress else None  # noqa: E731
    filters = reports.parse_change_filters(job.filters, user)
    as_of = timezone.now()
    qs = reports.change_queryset(user, filters, as_of=as_of)
    total = qs.count()
    exc_counts = reports.count_exceptions(qs, filters, as_of=as_of)
    rows_count = {
        "changes": total,
        "exceptions": sum(exc_counts.values()),
        **{f"exceptions.{k}": v for k, v in exc_counts.items()},
    }
    evidence = reports.make_evidence(
        user,
        "changes",
        "change report",
        filters=filters.as_dict(),
        rows=rows_count,
        fmt="pdf",
        generated_at=as_of,
        job=job.pk,
    )
    evidence.verify()
    changes = []
    for i, row in enumerate(reports.iter_changes(qs), start=1):
        changes.append(row)
        if i % reports.CHUNK_SIZE == 0 and total:
            report(min(45, int(45 * i / total)))
    exceptions = list(reports.iter_exceptions(qs, filters, as_of=as_of))
    report(50)
    data = render_change_report(
        evidence.header(), changes, exceptions, progress=lambda f: report(50 + int(49 * f))
    )
    digest = hashlib.sha256(data).hexdigest()
    path = reports.report_dir() / f"clearway-changes-{job.pk}-{digest[:12]}.pdf"
    path.write_bytes(data)
    job.file = str(path.relative_to(Path(settings.MEDIA_ROOT)))
    job.sha256 = digest
    return rows_count

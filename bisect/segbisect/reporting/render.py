"""The report as files (report.json, report.md, report.html), as a pull-request summary and as a rich table.

Everything here reads the report's typed records; report.json is the one place they become a JSON object
(`Report.to_dict`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from segbisect.executors.placement import PHASES
from segbisect.reporting import html as report_html
from segbisect.reporting import tipping
from segbisect.reporting.report import Culprit, HybridRow, Report, earlier_runs, reuse, time_spent

KEY_METRICS = 2
COLOURS = {"good": "green", "bad": "red", "fixed": "green", "broken": "red"}
BROUGHT_BY = "Brought by (the commits on the first-parent path from GOOD to BAD that gave each unit its BAD value):"


def write(folder: Path, report: Report) -> list[Path]:
    """The report's files in `folder`, returned so they can be attached to the bisection's run."""
    files = {
        "report.json": json.dumps(report.to_dict(), indent=2, default=str),
        "report.md": markdown(report, folder),
        "report.html": report_html.page(report),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]


def summary(report: Report) -> str:
    """A few lines fit to paste into a pull request: the verdict, the minimal change, the cost."""
    lines = [f"**segbisect: {report.verdict}** — {report.message}", ""]
    if report.culprit:
        terms = report.terms
        lines += [f"| unit | {terms.old} | {terms.new} |", "| --- | --- | --- |"]
        lines += [f"| `{u.name}` | `{u.good}` | `{u.bad}` |" for u in report.culprit.units]
        lines.append("")
        origins = _brought_by(report.culprit, nested=False)
        lines += [*origins, ""] if origins else []
    if report.tipping_point:
        lines += [tipping.summary(report.tipping_point, report.terms), ""]
    lines.append(
        f"{len(report.hybrids)} hybrids, {report.stage_executions} stage executions{earlier_runs(report)}; "
        f"full report: `{report.results_dir}/report.html`"
    )
    return "\n".join(lines) + "\n"


def markdown(report: Report, folder: Path) -> str:
    clustered = any(h.placement for h in report.hybrids)
    lines = [
        f"# segbisect: {report.good.text} ({report.terms.old}) vs {report.bad.text} ({report.terms.new})",
        "",
        f"**Verdict: {report.verdict}** — {report.message}",
        "",
    ]
    if report.culprit:
        lines += _culprit_markdown(report.culprit)
    if report.tipping_point:
        lines += tipping.markdown(report.tipping_point, report.terms)
    lines += [
        "",
        f"Hybrids: {len(report.hybrids)}, stage executions: {report.stage_executions}{earlier_runs(report)}",
        "",
        f"| hybrid | what | units from {report.terms.new} | outcome | key metrics | executed | restored | s |"
        + (" node | restored from |" if clustered else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if clustered else ""),
    ]
    for h in report.hybrids:
        lines.append(
            f"| {h.id}{reuse(report, h)} | {h.label} | {len(h.from_bad)} | "
            f"{h.outcome} | {_metrics(h.metrics, report.key_metrics)} | {', '.join(h.executed) or '-'} | "
            f"{', '.join(h.restored) or '-'} | {time_spent(h)} |" + (_placement(h) if clustered else "")
        )
    lines += ["", "All differing units:", ""]
    lines += [f"- `{u.name}` ({', '.join(u.stages)}): {u.summary}" for u in report.units]
    return "\n".join(lines + _figures_markdown(report, folder)) + "\n"


def _figures_markdown(report: Report, folder: Path) -> list[str]:
    """The side-by-side images as a table of linked files (relative to the report, so the folder can move)."""
    figures = report.figures
    if not figures.images:
        return []
    sides = [f"{s.label} ({s.hybrid})" for s in figures.sides]
    lines = ["", "Figures:", "", f"| image | {' | '.join(sides)} |", "|" + " --- |" * (len(sides) + 1)]
    for image in figures.images:
        cells = [_link(kept, image.path, folder) for kept in image.kept]
        lines.append(f"| `{image.path}` | {' | '.join(cells)} |")
    return lines


def _link(kept: str | None, name: str, folder: Path) -> str:
    if kept is None:
        return "not drawn"
    return f"![{Path(name).name}]({Path(os.path.relpath(kept, folder)).as_posix()})"


def _placement(hybrid: HybridRow) -> str:
    """Where a cluster executor ran the hybrid, and which hybrid and node computed each stage it restored."""
    where = hybrid.placement
    if where is None:
        return " - (fetch/run/push s: -) | - |"
    origin = ", ".join(f"{stage}: {source}" for stage, source in (where.restored_from or {}).items())
    phases = "/".join(f"{where.seconds[p]:g}" for p in PHASES if p in where.seconds)
    return f" {where.node_name} (fetch/run/push s: {phases or '-'}) | {origin or '-'} |"


def _culprit_markdown(culprit: Culprit) -> list[str]:
    lines = [
        f"Culprit stage: `{culprit.stage}` (stages involved: {', '.join(culprit.stages)}); "
        f"sufficient: {culprit.sufficient}, necessary: {culprit.necessary}, 1-minimal: {culprit.minimal}",
        "",
        "| unit | kind | GOOD | BAD | change |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| `{u.name}` | {u.kind} | `{u.good}` | `{u.bad}` | {u.summary} |" for u in culprit.units]
    origins = _brought_by(culprit, nested=True)
    lines += ["", *origins] if origins else []
    lines += [f"\n```diff\n{u.detail}\n```" for u in culprit.units if u.detail]
    if culprit.diagnostics is not None:
        evidence = json.dumps(culprit.diagnostics, indent=2)
        lines += ["", "Diagnostics of the failing hybrid:", "", f"```json\n{evidence}\n```"]
    return lines


def _brought_by(culprit: Culprit, nested: bool) -> list[str]:
    """Where each unit's BAD value came from: a list item per traced unit, its commits oldest first (`nested`:
    one sub-item each when there are several, else joined on the unit's line).
    """
    origins = culprit.origins()
    if not origins:
        return []
    items = []
    for unit, found in origins:
        lines = found.lines()
        if nested and len(lines) > 1:
            items += [f"- `{unit.name}`:", *(f"  - {line}" for line in lines)]
        else:
            items.append(f"- `{unit.name}`: {'; then '.join(lines)}")
    return [BROUGHT_BY, "", *items]


def show(console: Console, report: Report) -> None:
    reused = any(h.reused for h in report.hybrids)
    table = Table(title="evidence", caption="* reused from a journal, not run again" if reused else None)
    for column in ("id", "hybrid (units from BAD)", "outcome", "metrics", "ran", "restored", "s"):
        table.add_column(column, overflow="fold")
    for h in report.hybrids:
        table.add_row(
            h.id + ("*" if h.reused else ""),
            escape(h.label),
            f"[{COLOURS.get(h.outcome, 'yellow')}]{h.outcome}[/]",
            escape(_metrics(h.metrics, report.key_metrics)),
            escape(", ".join(h.executed) or "-"),
            str(len(h.restored)),
            time_spent(h),
        )
    console.print(table)
    if report.tipping_point:
        tipping.show(console, report.tipping_point, report.terms)
    # Names, paths and messages are the user's text, printed as they are, never read as markup.
    console.print(f"[bold]verdict: {report.verdict}[/] — {escape(report.message)}")
    if report.culprit:
        for unit in report.culprit.units:
            what = f"({unit.kind}, {', '.join(unit.stages)}): {unit.summary}"
            console.print(f"  [bold]{escape(unit.name)}[/] {escape(what)}")
            for line in report.culprit.traced(unit).lines(commits_after="brought by "):
                console.print(f"    {line}", markup=False)
        if report.culprit.diagnostics is not None:
            console.print(f"  diagnostics: {_diagnosis(report.culprit)}", markup=False)
    console.print(
        f"hybrids: {len(report.hybrids)}, stage executions: {report.stage_executions}{earlier_runs(report)}; "
        f"report: {report.results_dir}/report.html (and report.md)",
        markup=False,
    )


def _metrics(metrics: dict[str, Any], keys: Sequence[str]) -> str:
    """The predicate's metrics (else the first few numbers)."""
    ordered = [k for k in keys if k in metrics] or list(metrics)
    numbers = [(k, v) for k in ordered if isinstance(v := metrics[k], (int, float)) and not isinstance(v, bool)]
    return ", ".join(f"{k}={v:.4g}" for k, v in numbers[:KEY_METRICS]) or "-"


def _diagnosis(culprit: Culprit) -> str:
    """The diagnostics' cause and first pieces of evidence when it has them, else a short excerpt."""
    found = culprit.diagnosis
    if found is not None:
        return "; ".join([found.cause, *found.evidence[:3]])
    return json.dumps(culprit.diagnostics, default=str)[:300]

"""The report as files (report.json, report.md) and as a rich table on the console."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from segbisect.report import Culprit, Report

KEY_METRICS = 2
COLOURS = {"good": "green", "bad": "red", "fixed": "green", "broken": "red"}


def write(folder: Path, report: Report) -> None:
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (folder / "report.md").write_text(markdown(report))


def markdown(report: Report) -> str:
    lines = [
        f"# segbisect: {report.good['text']} ({report.terms['old']}) vs {report.bad['text']} ({report.terms['new']})",
        "",
        f"**Verdict: {report.verdict}** — {report.message}",
        "",
    ]
    if report.culprit:
        lines += _culprit_markdown(report.culprit)
    lines += [
        "",
        f"Hybrids: {len(report.hybrids)}, stage executions: {report.stage_executions}",
        "",
        f"| hybrid | what | units from {report.terms['new']} | outcome | key metrics | executed | restored | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in report.hybrids:
        lines.append(
            f"| {h['id']}{' (reused)' if h['reused'] else ''} | {h['label']} | {len(h['from_bad'])} | "
            f"{h['outcome']} | {_metrics(h['metrics'], report.key_metrics)} | {', '.join(h['executed']) or '-'} | "
            f"{', '.join(h['restored']) or '-'} | {h['seconds']} |"
        )
    lines += ["", "All differing units:", ""]
    lines += [f"- `{u['name']}` ({', '.join(u['stages'])}): {u['summary']}" for u in report.units]
    return "\n".join(lines) + "\n"


def _culprit_markdown(culprit: Culprit) -> list[str]:
    lines = [
        f"Culprit stage: `{culprit.stage}` (stages involved: {', '.join(culprit.stages)}); "
        f"sufficient: {culprit.sufficient}, necessary: {culprit.necessary}, 1-minimal: {culprit.minimal}",
        "",
        "| unit | kind | GOOD | BAD | change |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| `{u['name']}` | {u['kind']} | `{u['good']}` | `{u['bad']}` | {u['summary']} |" for u in culprit.units]
    lines += [f"\n```diff\n{u['diff']}\n```" for u in culprit.units if u.get("diff")]
    if culprit.diagnostics is not None:
        evidence = json.dumps(culprit.diagnostics, indent=2)
        lines += ["", "Diagnostics of the failing hybrid:", "", f"```json\n{evidence}\n```"]
    return lines


def show(console: Console, report: Report) -> None:
    table = Table(title="evidence", show_lines=False)
    for column in ("id", "hybrid (units from BAD)", "outcome", "metrics", "ran", "restored", "s"):
        table.add_column(column, overflow="fold")
    for h in report.hybrids:
        table.add_row(
            h["id"] + ("*" if h["reused"] else ""),
            h["label"],
            f"[{COLOURS.get(h['outcome'], 'yellow')}]{h['outcome']}[/]",
            _metrics(h["metrics"], report.key_metrics),
            ", ".join(h["executed"]) or "-",
            str(len(h["restored"])),
            str(h["seconds"]),
        )
    console.print(table)
    console.print(f"[bold]verdict: {report.verdict}[/] — {report.message}")
    if report.culprit:
        for unit in report.culprit.units:
            console.print(f"  [bold]{unit['name']}[/] ({unit['kind']}, {', '.join(unit['stages'])}): {unit['summary']}")
        if report.culprit.diagnostics is not None:
            console.print(f"  diagnostics: {_diagnosis(report.culprit.diagnostics)}")
    console.print(
        f"hybrids: {len(report.hybrids)}, stage executions: {report.stage_executions}; "
        f"report: {report.results_dir}/report.md"
    )


def _metrics(metrics: dict[str, Any], keys: Sequence[str]) -> str:
    """The predicate's metrics (else the first few numbers)."""
    ordered = [k for k in keys if k in metrics] or list(metrics)
    numbers = [(k, v) for k in ordered if isinstance(v := metrics[k], (int, float)) and not isinstance(v, bool)]
    return ", ".join(f"{k}={v:.4g}" for k, v in numbers[:KEY_METRICS]) or "-"


def _diagnosis(diagnostics: Any) -> str:
    """The diagnostics' cause and first pieces of evidence when it has them, else a short excerpt."""
    if isinstance(diagnostics, dict) and "cause" in diagnostics:
        evidence = diagnostics.get("evidence") or []
        return "; ".join([str(diagnostics["cause"]), *map(str, evidence[:3])])
    return json.dumps(diagnostics, default=str)[:300]

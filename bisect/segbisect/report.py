"""The verdict as data (report.json, `--json`), as Markdown (report.md) and as a rich table on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

KEY_METRICS = 2


def hybrid_row(h: Any) -> dict[str, Any]:
    return {"id": h.id, "label": h.label, "from_bad": h.from_bad, "sides": h.sides, "outcome": h.outcome,
            "note": h.note, "metrics": h.metrics, "executed": h.executed, "restored": h.restored,
            "seconds": h.seconds, "reused": h.reused, "fingerprint": h.fingerprint,
            "attempts": len(h.attempts), "machine": h.attempts[-1].get("machine") if h.attempts else None}


def write(folder: Path, report: dict[str, Any]) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (folder / "report.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# segbisect: {report['good']['text']} (GOOD) vs {report['bad']['text']} (BAD)", "",
             f"**Verdict: {report['verdict']}** — {report['message']}", ""]
    culprit = report.get("culprit")
    if culprit:
        lines += [f"Culprit stage: `{culprit['stage']}` (stages involved: {', '.join(culprit['stages'])}); "
                  f"sufficient: {culprit['sufficient']}, necessary: {culprit['necessary']}, "
                  f"1-minimal: {culprit['minimal']}", "", "| unit | kind | GOOD | BAD | change |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{u['name']}` | {u['kind']} | `{u['good']}` | `{u['bad']}` | {u['summary']} |" for u in culprit["units"]]
        for unit in culprit["units"]:
            if unit.get("diff"):
                lines += ["", f"```diff\n{unit['diff']}\n```"]
        if culprit.get("diagnostics") is not None:
            lines += ["", "Diagnostics of the failing hybrid:", "", f"```json\n{json.dumps(culprit['diagnostics'], indent=2)}\n```"]
    lines += ["", f"Hybrids: {len(report['hybrids'])}, stage executions: {report['stage_executions']}", "",
              "| hybrid | what | units from BAD | outcome | key metrics | executed | restored | s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for h in report["hybrids"]:
        lines.append(f"| {h['id']}{' (reused)' if h['reused'] else ''} | {h['label']} | {len(h['from_bad'])} | "
                     f"{h['outcome']} | {_metrics(h['metrics'], report['key_metrics'])} | {', '.join(h['executed']) or '-'} | "
                     f"{', '.join(h['restored']) or '-'} | {h['seconds']} |")
    lines += ["", "All differing units:", ""]
    lines += [f"- `{u['name']}` ({', '.join(u['stages'])}): {u['summary']}" for u in report["units"]]
    return "\n".join(lines) + "\n"


def render(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="evidence", show_lines=False)
    for column in ("id", "hybrid (units from BAD)", "outcome", "metrics", "ran", "restored", "s"):
        table.add_column(column, overflow="fold")
    colours = {"good": "green", "bad": "red", "skip": "yellow"}
    for h in report["hybrids"]:
        table.add_row(h["id"] + ("*" if h["reused"] else ""), h["label"],
                      f"[{colours.get(h['outcome'], 'white')}]{h['outcome']}[/]", _metrics(h["metrics"], report["key_metrics"]),
                      ", ".join(h["executed"]) or "-", str(len(h["restored"])), str(h["seconds"]))
    console.print(table)
    console.print(f"[bold]verdict: {report['verdict']}[/] — {report['message']}")
    culprit = report.get("culprit")
    if culprit:
        for unit in culprit["units"]:
            console.print(f"  [bold]{unit['name']}[/] ({unit['kind']}, {', '.join(unit['stages'])}): {unit['summary']}")
        if culprit.get("diagnostics") is not None:
            console.print(f"  diagnostics: {_diagnosis(culprit['diagnostics'])}")
    console.print(f"hybrids: {len(report['hybrids'])}, stage executions: {report['stage_executions']}; "
                  f"report: {report['results_dir']}/report.md")


def _metrics(metrics: dict[str, Any], keys: list[str]) -> str:
    """The predicate's metrics (else the first few numbers)."""
    ordered = [k for k in keys if k in metrics] or list(metrics)
    numbers = [(k, metrics[k]) for k in ordered if isinstance(metrics[k], (int, float)) and not isinstance(metrics[k], bool)]
    return ", ".join(f"{k}={v:.4g}" for k, v in numbers[:KEY_METRICS]) or "-"


def _diagnosis(diagnostics: Any) -> str:
    """The diagnostics' cause and first pieces of evidence when it has them, else a short excerpt."""
    if isinstance(diagnostics, dict) and "cause" in diagnostics:
        evidence = diagnostics.get("evidence") or []
        return "; ".join([str(diagnostics["cause"]), *map(str, evidence[:3])])
    return json.dumps(diagnostics, default=str)[:300]

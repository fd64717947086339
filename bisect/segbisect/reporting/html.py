"""report.html: one self-contained page (images inlined) that shows a bisection to a person.

The verdict first, then the minimal change with its values or diff, the same test images under each
configuration and the culprit hybrid, and the search as a timeline of hybrids.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from html import escape
from pathlib import Path
from typing import Any

from segbisect.executors.ray_worker import node_name
from segbisect.reporting.report import Report, earlier_runs, reuse, time_spent

OUTCOME_COLOURS = {"good": "#1a7f37", "fixed": "#1a7f37", "bad": "#cf222e", "broken": "#cf222e"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #1f2328; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #d0d7de; padding: 4px 8px; }
th { background: #f6f8fa; text-align: left; } td.num { text-align: right; }
.verdict { padding: 0.8em 1em; border-radius: 6px; background: #f6f8fa; border-left: 6px solid #0969da; }
.bar { display: inline-block; height: 0.8em; background: #0969da; vertical-align: middle; }
.figures img { max-width: 100%; } .missing { color: #656d76; font-style: italic; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; }
"""
BAR_PIXELS = 240


def page(report: Report) -> str:
    """The whole page; every image is a data URI, so the file can be mailed or attached to a run."""
    terms = report.terms
    title = f"segbisect: {report.good['text']} ({terms['old']}) vs {report.bad['text']} ({terms['new']})"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='verdict' id='verdict'><b>Verdict: {escape(str(report.verdict))}</b> — {escape(report.message)}</p>",
        *_culprit(report),
        *_figures(report),
        *_timeline(report),
        f"<p>Hybrids: {len(report.hybrids)}, stage executions: {report.stage_executions}{earlier_runs(report)}"
        f"{'; tracking: ' + escape(report.tracking) if report.tracking else ''}</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _culprit(report: Report) -> list[str]:
    culprit = report.culprit
    if culprit is None:
        return []
    terms = report.terms
    lines = [
        "<h2>The minimal change</h2>",
        f"<p>Culprit stage: <code>{escape(str(culprit.stage))}</code>; sufficient: {culprit.sufficient}, "
        f"necessary: {culprit.necessary}, 1-minimal: {culprit.minimal}</p>",
        f"<table><tr><th>unit</th><th>kind</th><th>{terms['old']}</th><th>{terms['new']}</th><th>change</th></tr>",
    ]
    for unit in culprit.units:
        cells = [f"<code>{escape(unit['name'])}</code>", escape(unit["kind"])]
        cells += [f"<code>{escape(_value(unit[side]))}</code>" for side in ("good", "bad")]
        cells.append(escape(unit["summary"]))
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    lines += [f"<pre>{escape(unit['diff'])}</pre>" for unit in culprit.units if unit.get("diff")]
    diagnostics = culprit.diagnostics
    if isinstance(diagnostics, dict) and "cause" in diagnostics:
        evidence = "".join(f"<li>{escape(str(e))}</li>" for e in diagnostics.get("evidence") or [])
        lines.append(f"<p>Diagnosis: <b>{escape(str(diagnostics['cause']))}</b></p><ul>{evidence}</ul>")
    return lines


def _figures(report: Report) -> list[str]:
    figures = report.figures
    if not figures.get("images"):
        return []
    sides = figures["sides"]
    head = "".join(f"<th>{escape(s['label'])} ({escape(s['hybrid'])})</th>" for s in sides)
    lines = [
        "<h2>The same images under each configuration</h2>",
        f"<table class='figures'><tr><th>image</th>{head}</tr>",
    ]
    for image in figures["images"]:
        cells = "".join(f"<td>{_image(kept, image['path'])}</td>" for kept in image["kept"])
        lines.append(f"<tr><td><code>{escape(image['path'])}</code></td>{cells}</tr>")
    lines.append("</table>")
    return lines


def _image(kept: str | None, name: str) -> str:
    if kept is None or not Path(kept).is_file():
        return "<span class='missing'>not drawn</span>"
    kind = mimetypes.guess_type(kept)[0] or "application/octet-stream"
    data = base64.b64encode(Path(kept).read_bytes()).decode()
    return f"<img alt='{escape(name)}' src='data:{kind};base64,{data}'>"


def _timeline(report: Report) -> list[str]:
    names = {u["id"]: u["name"] for u in report.units}
    clustered = any(h["placement"] for h in report.hybrids)
    longest = max((h["seconds"] for h in report.hybrids), default=0) or 1
    lines = [
        "<h2>The search</h2>",
        f"<table><tr><th>hybrid</th><th>what</th><th>units from {report.terms['new']}</th><th>outcome</th>"
        "<th>stages run</th><th>restored</th><th>seconds</th>" + ("<th>node</th>" if clustered else "") + "</tr>",
    ]
    for h in report.hybrids:
        colour = OUTCOME_COLOURS.get(h["outcome"], "#9a6700")
        units = ", ".join(names.get(u, u) for u in h["from_bad"])
        width = round(BAR_PIXELS * h["seconds"] / longest)
        cells = [
            escape(h["id"] + reuse(report, h)),
            escape(h["label"]),
            escape(units) or "-",
            f"<b style='color:{colour}' title='{escape(h['note'])}'>{escape(h['outcome'])}</b>",
            escape(", ".join(h["executed"])) or "-",
            escape(", ".join(h["restored"])) or "-",
            f"<span class='bar' style='width:{width}px'></span> {escape(time_spent(h))}",
        ]
        if clustered:
            origin = "; ".join(f"{s} from {o}" for s, o in h["placement"].get("restored_from", {}).items())
            node = node_name(h["placement"].get("node", "-"))
            cells.append(f"<span title='{escape(origin)}'>{escape(node)}</span>")
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return lines


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)

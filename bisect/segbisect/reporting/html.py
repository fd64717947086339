"""report.html: one self-contained page (images inlined) that shows a bisection to a person.

The verdict first, then the minimal change with its values or diff, the same test images under each
configuration and the culprit hybrid, and the search as a timeline of hybrids. The page is the Jinja2 template
templates/report.html.j2 (shipped in the package), autoescaped: every name, path and message is the user's text;
the functions here give it what a template should not compute.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from segbisect.executors.placement import Placement
from segbisect.reporting.report import HybridRow, Report, earlier_runs, reuse, time_spent
from segbisect.reporting.tipping import plot as tipping_plot

TEMPLATE = "report.html.j2"
BAR_PIXELS = 240


def page(report: Report) -> str:
    """The whole page; every image is a data URI, so the file can be mailed or attached to a run."""
    return _environment().get_template(TEMPLATE).render(report=report)


@cache
def _environment() -> Environment:
    """Built once: Jinja2 compiles the template on first use and keeps it."""
    env = Environment(
        loader=PackageLoader("segbisect.reporting"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(value=_value, data_uri=_data_uri)
    env.globals.update(
        reuse=reuse,
        time_spent=time_spent,
        earlier_runs=earlier_runs,
        unit_names=_unit_names,
        bar_width=_bar_width,
        origin=_origin,
        tipping_plot=tipping_plot,
    )
    return env


def _value(value: Any) -> str:
    """A unit's value as its cell shows it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _data_uri(kept: str | None) -> str | None:
    """A kept image inlined, None where that side drew none (or its file is gone)."""
    if kept is None or not Path(kept).is_file():
        return None
    kind = mimetypes.guess_type(kept)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(Path(kept).read_bytes()).decode()}"


def _unit_names(report: Report, row: HybridRow) -> str:
    names = {u.id: u.name for u in report.units}
    return ", ".join(names.get(u, u) for u in row.from_bad)


def _bar_width(report: Report, row: HybridRow) -> int:
    """The hybrid's seconds as a bar, the longest hybrid's BAR_PIXELS wide."""
    longest = max((h.seconds for h in report.hybrids), default=0) or 1
    return round(BAR_PIXELS * row.seconds / longest)


def _origin(placement: Placement | None) -> str:
    """Which hybrid and node computed each stage a cluster hybrid restored."""
    restored = placement.restored_from if placement and placement.restored_from else {}
    return "; ".join(f"{stage} from {source}" for stage, source in restored.items())

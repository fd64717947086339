"""The tipping point as people read it: report.md's probes table, the summary's line, the console's table, and the
geometry of report.html's plot of the judged metric against the param's value (the template draws it as inline
SVG; a check that reads no single metric is plotted as pass or fail).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from segbisect.core.terms import Terms
from segbisect.core.tipping import Probe, TippingPoint
from segbisect.core.verdict import Outcome

WIDTH, HEIGHT, MARGIN = 560, 240, 48
COLOURS = {Outcome.GOOD: "#1a7f37", Outcome.BAD: "#cf222e"}
UNTESTABLE_COLOUR = "#9a6700"
# Pixels for a value (across) or a height (down).
_Scale = Callable[[float], float]


def markdown(tipping: TippingPoint, terms: Terms) -> list[str]:
    """The search in a sentence, then one row per value along the axis."""
    metric = tipping.metric or "metric"
    axis, limits = tipping.axis, tipping.tipping
    lines = [
        "",
        f"Tipping point, searched on a {axis.scale} scale from {terms.old}'s {axis.good} to {terms.new}'s "
        f"{axis.bad} (tolerance {limits.tolerance:g}, budget {limits.budget}): {tipping.sentence(terms)}.",
        "",
        f"| `{tipping.param}` | outcome | {metric} | hybrid | wave |",
        "| --- | --- | --- | --- | --- |",
    ]
    for probe in tipping.along():
        lines.append(
            f"| {_value(tipping, probe, terms)} | {terms.outcome(probe.outcome)} | {_metric(probe)} | {probe.hybrid} "
            f"| {probe.wave or '-'} |"
        )
    return lines


def summary(tipping: TippingPoint, terms: Terms) -> str:
    """One line for a pull request: every probe along the axis (the verdict's line says what they show)."""
    probes = ", ".join(f"`{p.value}` {terms.outcome(p.outcome)}" for p in tipping.along() if p.wave)
    return f"Probes of `{tipping.param}` ({tipping.axis.scale} scale): {probes or 'none'}"


def show(console: Console, tipping: TippingPoint, terms: Terms) -> None:
    table = Table(title=f"tipping point of {escape(tipping.param)}")
    for column in (tipping.param, "outcome", tipping.metric or "metric", "hybrid", "wave"):
        table.add_column(escape(column), overflow="fold")
    for probe in tipping.along():
        outcome = terms.outcome(probe.outcome)
        table.add_row(
            escape(_value(tipping, probe, terms)),
            f"[{_rich_colour(probe.outcome)}]{outcome}[/]",
            _metric(probe),
            probe.hybrid,
            str(probe.wave or "-"),
        )
    console.print(table)


def _value(tipping: TippingPoint, probe: Probe, terms: Terms) -> str:
    """A probe's value, naming the side whose own value it is."""
    if probe.wave:
        return str(probe.value)
    return f"{probe.value} ({terms.old if probe.value == tipping.axis.good else terms.new})"


def _metric(probe: Probe) -> str:
    return "-" if probe.metric is None else f"{probe.metric:.4g}"


def _rich_colour(outcome: Outcome) -> str:
    return {Outcome.GOOD: "green", Outcome.BAD: "red"}.get(outcome, "yellow")


@dataclass(frozen=True, kw_only=True)
class Point:
    """One probe on the plot, in pixels, with its colour and hover text."""

    x: float
    y: float
    colour: str
    title: str


@dataclass(frozen=True, kw_only=True)
class Tick:
    """A labelled place on an axis, in pixels."""

    at: float
    label: str


@dataclass(frozen=True, kw_only=True)
class Plot:
    """report.html's plot: the probes joined along the value axis, the threshold (None: the check compares no
    single metric with a number), the band between the last passing and the first failing value (None: no
    boundary), the axes' ticks (both sides' values across) and titles.
    """

    width: int
    height: int
    margin: int
    points: tuple[Point, ...]
    threshold: Tick | None
    band: tuple[Tick, Tick] | None
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    x_title: str
    y_title: str

    @property
    def path(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def plot(tipping: TippingPoint, terms: Terms) -> Plot:
    """The metric against the value on the search's scale, values rising to the right (a probe without the metric,
    an untestable one, at the bottom); without a metric, passing probes on an upper line, failing ones on a lower,
    untestable ones between.
    """
    probes = tipping.along()
    x_of = _x_scale(tipping)
    if tipping.metric is None or all(p.metric is None for p in probes):
        levels = {Outcome.GOOD: 1.0, Outcome.BAD: 0.0}
        y_of = _y_scale([0.0, 1.0])
        heights = [y_of(levels.get(p.outcome, 0.5)) for p in probes]
        y_ticks = tuple(Tick(at=y_of(level), label=terms.outcome(o)) for o, level in levels.items())
        threshold, y_title = None, f"{terms.outcome(Outcome.GOOD)} / {terms.outcome(Outcome.BAD)}"
    else:
        known = [p.metric for p in probes if p.metric is not None]
        bounds = [*known, *([tipping.threshold] if tipping.threshold is not None else [])]
        y_of = _y_scale(bounds)
        heights = [y_of(min(bounds) if p.metric is None else p.metric) for p in probes]
        y_ticks = tuple(Tick(at=y_of(v), label=f"{v:.4g}") for v in sorted({min(bounds), max(bounds)}))
        threshold = None
        if tipping.threshold is not None:
            threshold = Tick(at=y_of(tipping.threshold), label=f"the check's threshold {tipping.threshold:.4g}")
        y_title = tipping.metric
    points = tuple(
        Point(
            x=x_of(p.value),
            y=y,
            colour=COLOURS.get(p.outcome, UNTESTABLE_COLOUR),
            title=f"{tipping.param}={p.value}: {terms.outcome(p.outcome)} ({p.hybrid})",
        )
        for p, y in zip(probes, heights)
    )
    return Plot(
        width=WIDTH,
        height=HEIGHT,
        margin=MARGIN,
        points=points,
        threshold=threshold,
        band=_band(tipping, x_of),
        x_ticks=tuple(Tick(at=x_of(v), label=str(v)) for v in dict.fromkeys([tipping.axis.good, tipping.axis.bad])),
        y_ticks=y_ticks,
        x_title=f"{tipping.param} ({tipping.axis.scale} scale)",
        y_title=y_title,
    )


def _x_scale(tipping: TippingPoint) -> _Scale:
    """Pixels across for a value: the axis's position, turned so that values rise to the right."""
    axis = tipping.axis
    rising = axis.bad > axis.good
    span = WIDTH - 2 * MARGIN
    return lambda value: MARGIN + span * (axis.position(value) if rising else 1 - axis.position(value))


def _y_scale(values: Sequence[float]) -> _Scale:
    """Pixels down for a height, the lowest of `values` near the bottom and the highest near the top (a tenth of the
    range spare on either side, so a threshold at an extreme stays off the axis).
    """
    low, high = min(values, default=0.0), max(values, default=1.0)
    spare = (high - low) / 10 or 1.0
    low, high = low - spare, high + spare
    span = HEIGHT - 2 * MARGIN
    return lambda value: HEIGHT - MARGIN - span * (value - low) / (high - low)


def _band(tipping: TippingPoint, x_of: _Scale) -> tuple[Tick, Tick] | None:
    """Where it tips: from the last passing value to the first failing one, left to right."""
    found = tipping.conclusion
    if found.passes_up_to is None or found.fails_from is None:
        return None
    ends = sorted((found.passes_up_to, found.fails_from))
    return Tick(at=x_of(ends[0]), label=str(ends[0])), Tick(at=x_of(ends[1]), label=str(ends[1]))

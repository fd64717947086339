"""Where a numeric param tips: the search for the value between GOOD's and BAD's at which the outcome turns.

Pure logic, no I/O: given the probes so far, `next_values` says which values the next wave probes and `conclude`
what they show. The values lie on an `Axis` from GOOD's value to BAD's: logarithmic when the two have the same
sign, are not zero and differ by more than a factor of 10, linear otherwise; an int param is probed on integers
only. The search stops when the last passing and the first failing value are within the tolerance (a factor
apart; for two values on either side of zero, or one of them zero, their difference relative to the larger), or
adjacent integers, or when the budget of probes is spent. The first wave probes at least two values, so that one
that passes beyond one that fails (a param whose effect is not monotone) can show even with one job; each later
wave probes `jobs` values.
An answer that is not monotone, or that holds an untestable probe, names no boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from segbisect.core.terms import Terms
from segbisect.core.units import Unit, UnitKind
from segbisect.core.verdict import Outcome

Number = int | float
DEFAULT_TOLERANCE = 1.25
DEFAULT_BUDGET = 6
# A log scale is used when GOOD's and BAD's values differ by more than this factor.
LOG_RATIO = 10.0
# Probed floats are shortened to the fewest significant digits (at least these) that keep them in their place.
MIN_DIGITS = 2


class Scale(StrEnum):
    LOG = "log"
    LINEAR = "linear"


class Answer(StrEnum):
    """What the probes show: a boundary (monotone), a param that passes beyond a failing value (non-monotone), an
    untestable probe in the way, or a search the environment stopped (a failed or flaky probe).
    """

    BOUNDARY = "boundary"
    NON_MONOTONE = "non-monotone"
    UNTESTABLE = "untestable"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class Tipping:
    """How far to search: stop when the passing and failing values are `tolerance` apart (a factor > 1), or after
    `budget` probes.
    """

    tolerance: float = DEFAULT_TOLERANCE
    budget: int = DEFAULT_BUDGET


def numeric(value: Any) -> TypeGuard[Number]:
    """An int or a finite float; a bool is a switch, not a quantity."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def tippable(unit: Unit) -> bool:
    """Whether a unit is one numeric param whose value can be searched between GOOD's and BAD's."""
    return unit.kind == UnitKind.PARAM and numeric(unit.good) and numeric(unit.bad) and unit.good != unit.bad


@dataclass(frozen=True, kw_only=True)
class Axis:
    """The values from GOOD's (position 0) to BAD's (position 1) on the scale the search uses."""

    good: Number
    bad: Number
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def integer(self) -> bool:
        return isinstance(self.good, int) and isinstance(self.bad, int)

    @property
    def scale(self) -> Scale:
        low, high = sorted((abs(self.good), abs(self.bad)))
        same_sign = (self.good > 0) == (self.bad > 0)
        return Scale.LOG if same_sign and low > 0 and high / low > LOG_RATIO else Scale.LINEAR

    def position(self, value: Number) -> float:
        """Where `value` lies between GOOD's value (0) and BAD's (1)."""
        if self.scale == Scale.LOG:
            return math.log(abs(value) / abs(self.good)) / math.log(abs(self.bad) / abs(self.good))
        return (value - self.good) / (self.bad - self.good)

    def at(self, position: float) -> float:
        """The (unrounded) value at `position`."""
        if self.scale == Scale.LOG:
            return math.copysign(abs(self.good) * (abs(self.bad) / abs(self.good)) ** position, self.good)
        return self.good + (self.bad - self.good) * position

    def close(self, a: Number, b: Number) -> bool:
        """Whether a passing and a failing value are near enough to stop: within the tolerance, or adjacent
        integers.
        """
        if self.integer and abs(a - b) <= 1:
            return True
        low, high = sorted((abs(a), abs(b)))
        if (a > 0) == (b > 0) and low > 0:
            return high <= low * self.tolerance
        # A factor means nothing across zero: there, their difference relative to the larger.
        return abs(a - b) <= (self.tolerance - 1) * high

    def between(self, a: Number, b: Number, count: int) -> list[Number]:
        """`count` values evenly spaced on the scale strictly between `a` and `b` (fewer where integers run out),
        in order from `a` to `b`.
        """
        if self.integer:
            inside = range(math.floor(min(a, b)) + 1, math.ceil(max(a, b)))
            if len(inside) <= count:
                return sorted(inside, key=self.position)
        start, end = self.position(a), self.position(b)
        step = (end - start) / (count + 1)
        found: list[Number] = []
        for i in range(1, count + 1):
            ideal = start + step * i
            value = self._round(ideal, (self.at(ideal - step / 2), self.at(ideal + step / 2)))
            if value not in found and value not in (a, b):
                found.append(value)
        return found

    def _round(self, position: float, within: tuple[float, float]) -> Number:
        """The value at `position` as a probe writes it: an integer for an int param, else a float with the
        fewest significant digits that keeps it within `within`, so the report reads 0.45, not 0.4472135954999579.
        """
        exact = self.at(position)
        if self.integer:
            return round(exact)
        low, high = sorted(within)
        for digits in range(MIN_DIGITS, 17):
            short = float(f"{exact:.{digits}g}")
            if low < short < high:
                return short
        return exact


@dataclass(frozen=True, kw_only=True)
class Probe:
    """One value of the param and what the hybrid with it came to; `metric`: the judged metric's value, where the
    check reads one; `wave`: 0 for GOOD's and BAD's own values, then the wave that probed it.
    """

    value: Number
    outcome: Outcome
    hybrid: str
    wave: int
    metric: float | None = None
    note: str = ""

    def to_dict(self, terms: Terms) -> dict[str, Any]:
        return {
            "value": self.value,
            "outcome": terms.outcome(self.outcome),
            "metric": self.metric,
            "hybrid": self.hybrid,
            "wave": self.wave,
            "note": self.note,
        }


Stretch = tuple[Outcome, tuple[Number, ...]]


@dataclass(frozen=True, kw_only=True)
class Conclusion:
    """What the probes show: for a boundary, the last passing and the first failing value (from GOOD's side),
    and whether they are within the tolerance; for a non-monotone answer, each stretch of one outcome along the
    axis; for an untestable probe, that probe; for a stopped search, `reason`.
    """

    answer: Answer
    passes_up_to: Number | None = None
    fails_from: Number | None = None
    within_tolerance: bool = False
    stretches: tuple[Stretch, ...] = ()
    untestable: Probe | None = None
    reason: str = ""

    def describe(self, terms: Terms) -> str:
        """Why no boundary is named, in the bisection's words (empty for a boundary)."""
        if self.answer == Answer.NON_MONOTONE:
            return ", ".join(f"{terms.outcome(outcome)} at {_span(values)}" for outcome, values in self.stretches)
        if self.untestable is not None:
            probe = self.untestable
            return f"{terms.outcome(probe.outcome)} at {probe.value} ({probe.hybrid}: {probe.note})"
        return self.reason


def conclude(axis: Axis, probes: Sequence[Probe]) -> Conclusion:
    """The verdict of the probes so far (GOOD's and BAD's own values among them)."""
    ordered = sorted(probes, key=lambda p: axis.position(p.value))
    untestable = next((p for p in ordered if p.outcome not in (Outcome.GOOD, Outcome.BAD)), None)
    if untestable is not None:
        return Conclusion(answer=Answer.UNTESTABLE, untestable=untestable)
    stretches = _stretches(ordered)
    if len(stretches) != 2 or stretches[0][0] != Outcome.GOOD:
        return Conclusion(answer=Answer.NON_MONOTONE, stretches=stretches)
    passes, fails = stretches[0][1][-1], stretches[1][1][0]
    return Conclusion(
        answer=Answer.BOUNDARY,
        passes_up_to=passes,
        fails_from=fails,
        within_tolerance=axis.close(passes, fails),
    )


def next_values(axis: Axis, probes: Sequence[Probe], jobs: int, budget: int) -> list[Number]:
    """The values the next wave probes (none: the search is over): evenly spaced on the axis's scale between the
    last passing and the first failing value, `jobs` of them, at least two in the first wave, within the budget.
    """
    found = conclude(axis, probes)
    spent = sum(1 for p in probes if p.wave > 0)
    if found.passes_up_to is None or found.fails_from is None or found.within_tolerance or spent >= budget:
        return []
    width = max(jobs, 2) if spent == 0 else jobs
    return axis.between(found.passes_up_to, found.fails_from, min(width, budget - spent))


def _stretches(ordered: Sequence[Probe]) -> tuple[Stretch, ...]:
    """Consecutive probes with the same outcome, along the axis."""
    found: list[tuple[Outcome, list[Number]]] = []
    for probe in ordered:
        if found and found[-1][0] == probe.outcome:
            found[-1][1].append(probe.value)
        else:
            found.append((probe.outcome, [probe.value]))
    return tuple((outcome, tuple(values)) for outcome, values in found)


def _span(values: Sequence[Number]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


@dataclass(frozen=True, kw_only=True)
class TippingPoint:
    """Where the culprit param tips, as the report shows it: the param (its unit's name and id), the axis searched,
    the conclusion, the judged metric and the number the check compares it with (None: the check reads no single
    metric), and every probe along the axis, GOOD's and BAD's own values included.
    """

    param: str
    unit: str
    axis: Axis
    tipping: Tipping
    conclusion: Conclusion
    metric: str | None
    threshold: float | None
    probes: tuple[Probe, ...]

    @property
    def monotone(self) -> bool | None:
        """False when a value passes beyond one that fails; None when untestable or stopped probes leave it open."""
        answer = self.conclusion.answer
        return {Answer.BOUNDARY: True, Answer.NON_MONOTONE: False}.get(answer)

    @property
    def probed(self) -> int:
        """The probes the search ran (GOOD's and BAD's own values aside), what the budget counts."""
        return sum(1 for p in self.probes if p.wave > 0)

    def along(self) -> list[Probe]:
        """The probes ordered by value."""
        return sorted(self.probes, key=lambda p: p.value)

    def sentence(self, terms: Terms) -> str:
        """What the verdict's message adds: where it tips, or why no boundary is named."""
        found, name = self.conclusion, self.param
        cost = f"{self.probed} probe{'' if self.probed == 1 else 's'}"
        if found.answer == Answer.BOUNDARY:
            passes, fails = ("stays broken", "fixed") if terms.find_fix else ("passes", "fails")
            way = "up" if self.axis.bad > self.axis.good else "down"
            short = "" if found.within_tolerance else f"; its budget of {self.tipping.budget} ran out first"
            if not self.probed:
                short = f"; GOOD's and BAD's values are within the tolerance {self.tipping.tolerance:g} already"
            return f"{name} {passes} {way} to {found.passes_up_to}, {fails} from {found.fails_from} ({cost}{short})"
        if found.answer == Answer.NON_MONOTONE:
            return f"{name} is non-monotone: {found.describe(terms)} ({cost}); no single tipping point"
        if found.answer == Answer.UNTESTABLE:
            return f"no tipping point of {name}: {found.describe(terms)} ({cost})"
        return f"the search for {name}'s tipping point stopped: {found.describe(terms)}"

    def to_dict(self, terms: Terms) -> dict[str, Any]:
        found = self.conclusion
        return {
            "param": self.param,
            "unit": self.unit,
            "good": self.axis.good,
            "bad": self.axis.bad,
            "scale": str(self.axis.scale),
            "integer": self.axis.integer,
            "tolerance": self.tipping.tolerance,
            "budget": self.tipping.budget,
            "answer": str(found.answer),
            "monotone": self.monotone,
            "passes_up_to": found.passes_up_to,
            "fails_from": found.fails_from,
            "within_tolerance": found.within_tolerance,
            "reason": found.describe(terms),
            "metric": self.metric,
            "threshold": self.threshold,
            "probes": [p.to_dict(terms) for p in self.along()],
        }

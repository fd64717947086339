"""Where the culprit tips, when the minimal change is one numeric param: its value searched between GOOD's and
BAD's, every other unit at GOOD's (`core.tipping` chooses the values and reads the answer).

Each probe is an ordinary hybrid handed to the session's evaluator: GOOD plus one probe unit that takes the
param's key to the probed value. So it is journaled and reused by its fingerprint (which holds the value's digest
where BAD's digest would be), run by the executor in use, `jobs` at a time, shown live and logged to MLflow as a
child of the bisection's run like any other hybrid.
"""

from __future__ import annotations

from dataclasses import dataclass

from segbisect.core.errors import UndecidableError
from segbisect.core.judge import Judge
from segbisect.core.terms import CULPRIT, FIX
from segbisect.core.tipping import (
    Answer,
    Axis,
    Conclusion,
    Number,
    Probe,
    Tipping,
    TippingPoint,
    conclude,
    next_values,
    numeric,
    tippable,
)
from segbisect.core.units import Inventory, Unit
from segbisect.core.verdict import Verdict
from segbisect.project.snapshot import digest
from segbisect.session.evaluator import Evaluator
from segbisect.session.options import Options

NOT_TIPPABLE = "; no tipping point searched: the minimal change is not one numeric param"


def culprit_param(verdict: Verdict, inventory: Inventory) -> Unit | None:
    """The verdict's minimal change when it is exactly one numeric param, else None."""
    if not verdict.names_a_change or len(verdict.units) != 1:
        return None
    unit = inventory.unit(verdict.units[0])
    return unit if tippable(unit) else None


def offer(unit: Unit | None) -> str:
    """What the verdict's message adds when the tipping point was not asked for but can be found."""
    return f"; rerun with --tipping-point to find where {unit.name} tips" if unit else ""


@dataclass(frozen=True, kw_only=True)
class Prober:
    """What a search needs of the session: its evaluator (with the inventory the probes join), the judge (which
    metric the probes show), the culprit param, the limits and how many probes run at once.
    """

    evaluator: Evaluator
    judge: Judge
    unit: Unit
    tipping: Tipping
    jobs: int

    def find(self) -> TippingPoint:
        """Probe wave after wave until the answer is settled or the budget is spent; an environment failure or
        disagreeing repeats stop the search (its finished probes are kept) and leave the verdict as it is.
        """
        axis = Axis(good=self.unit.good, bad=self.unit.bad, tolerance=self.tipping.tolerance)
        probes: list[Probe] = []
        try:
            # GOOD's and BAD's own values: the hybrids of GOOD and of the culprit alone, which the search ran.
            probes += self._wave(0, [(axis.good, frozenset()), (axis.bad, frozenset({self.unit.id}))])
            wave = 1
            while values := next_values(axis, probes, self.jobs, self.tipping.budget):
                probes += self._wave(wave, [(value, self._probe(value)) for value in values])
                wave += 1
            found = conclude(axis, probes)
        except UndecidableError as exc:
            found = Conclusion(answer=Answer.STOPPED, reason=str(exc))
        metric, threshold = self._judged()
        return TippingPoint(
            param=self.unit.name,
            unit=self.unit.id,
            axis=axis,
            tipping=self.tipping,
            conclusion=found,
            metric=metric,
            threshold=threshold,
            probes=tuple(probes),
        )

    def _wave(self, wave: int, configs: list[tuple[Number, frozenset[str]]]) -> list[Probe]:
        """One evaluator call: the values' hybrids at once."""
        self.evaluator([(config, f"probe {self.unit.name}={value}") for value, config in configs])
        metric, _ = self._judged()
        probes = []
        for value, config in configs:
            hybrid = self.evaluator.get(config)
            seen = hybrid.metrics(self.judge.metrics_file).get(metric) if metric else None
            probes.append(
                Probe(
                    value=value,
                    outcome=hybrid.outcome,
                    hybrid=hybrid.id,
                    wave=wave,
                    metric=float(seen) if numeric(seen) else None,
                    note=hybrid.note,
                )
            )
        return probes

    def _probe(self, value: Number) -> frozenset[str]:
        """GOOD's configuration with the probe unit that takes the param to `value`."""
        probe = self.evaluator.plan.inventory.probe(self.unit, value, digest(value))
        return frozenset({probe.id})

    def _judged(self) -> tuple[str | None, float | None]:
        """The metric the probes show and the number the check compares it with: the predicate's one comparison
        of a metric with a number or with another metric (its value in GOOD's hybrid), else the one metric it reads
        (no threshold), else none (a --run check, or a predicate over several metrics, which the report plots as
        pass or fail).
        """
        predicate = self.judge.predicate
        if predicate is None:
            return None, None
        if predicate.bound is not None:
            metric, threshold = predicate.bound
            return metric, threshold if isinstance(threshold, float) else self._good_metric(threshold)
        keys = predicate.metric_keys
        return (keys[0], None) if len(keys) == 1 else (None, None)

    def _good_metric(self, key: str) -> float | None:
        """A metric as GOOD's hybrid gave it: the threshold, where the check compares with another metric (the
        probes change one param, so the tolerance a metrics file derives from the data is GOOD's for every probe
        that leaves the data alone).
        """
        found = self.evaluator.get(frozenset()).metrics(self.judge.metrics_file).get(key)
        return float(found) if numeric(found) else None


def tip(verdict: Verdict, evaluator: Evaluator, judge: Judge, opts: Options) -> tuple[TippingPoint | None, str]:
    """Where the verdict's one numeric param tips, when `opts` ask (`--tipping-point`), and what the verdict's
    message adds: the answer, the offer to search it, or why there is nothing to search.
    """
    unit = culprit_param(verdict, evaluator.plan.inventory)
    if opts.tipping is None:
        return None, offer(unit)
    if unit is None:
        return None, NOT_TIPPABLE if verdict.names_a_change else ""
    found = Prober(evaluator=evaluator, judge=judge, unit=unit, tipping=opts.tipping, jobs=opts.jobs).find()
    return found, "; " + found.sentence(FIX if opts.find_fix else CULPRIT)

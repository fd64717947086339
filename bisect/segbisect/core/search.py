"""The search: stage search over groups of units, confirmation in the other direction, then ddmin.

Pure logic over an `evaluate` callback, so it is testable without DVC. A configuration is the set of unit
ids taken from BAD (everything else is GOOD); outcomes are good, bad or skip as in git bisect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from segbisect.core.units import Group
from segbisect.core.verdict import Outcome, Verdict, VerdictKind

Config = frozenset[str]
Evaluate = Callable[[list[tuple[Config, str]]], list[Outcome]]


@dataclass(frozen=True)
class _Located:
    """Stage search's answer: the first group whose change turns GOOD bad, what it does alone, and other
    groups that were found sufficient in the same wave.
    """

    index: int
    alone: Outcome
    also: tuple[str, ...] = ()


def search(groups: Sequence[Group], evaluate: Evaluate, jobs: int = 1) -> Verdict:
    """Find the culprit group and its 1-minimal units; GOOD (no units) must be good and BAD (all) bad.

    Three steps after the preconditions: stage search, confirmation in the other direction, narrowing.
    """
    located = _locate(groups, evaluate, jobs)
    if isinstance(located, Verdict):
        return located
    everything = frozenset().union(*(g.ids for g in groups))
    group = groups[located.index]
    if located.alone == Outcome.BAD:
        necessary = _necessary(everything, group.ids, group.name, evaluate)
        units, minimal = ddmin([u.id for u in group.units], evaluate, jobs)
        return Verdict(
            kind=VerdictKind.CULPRIT,
            stage=group.name,
            stages=group.stages,
            units=tuple(units),
            sufficient=True,
            necessary=necessary,
            minimal=minimal,
            also_sufficient=located.also,
        )
    units, minimal = ddmin([u.id for g in groups[: located.index + 1] for u in g.units], evaluate, jobs)
    involved = [g for g in groups if g.ids & set(units)]
    combined = frozenset().union(*(g.ids for g in involved))
    necessary = _necessary(everything, combined, " + ".join(g.name for g in involved), evaluate)
    return Verdict(
        kind=VerdictKind.INTERACTION,
        stage=group.name,
        stages=tuple(dict.fromkeys(s for g in involved for s in g.stages)),
        units=tuple(units),
        sufficient=None if located.alone == Outcome.SKIP else False,
        necessary=necessary,
        minimal=minimal,
        also_sufficient=located.also,
    )


def _locate(groups: Sequence[Group], evaluate: Evaluate, jobs: int) -> _Located | Verdict:
    """Stage search: one wave of single groups when `jobs` allows, else a prefix bisection in pipeline order."""
    if len(groups) == 1:
        return _Located(0, Outcome.BAD)
    also: tuple[str, ...] = ()
    found: int | list[int] | None = None
    if jobs >= len(groups):
        outcomes = evaluate([(g.ids, f"search: {g.name}") for g in groups])
        bad = [i for i, o in enumerate(outcomes) if o == Outcome.BAD]
        if bad:
            found, also = bad[0], tuple(groups[i].name for i in bad[1:])
    if found is None:
        found = _prefix_search(groups, evaluate, jobs)
    if isinstance(found, list):
        return Verdict(kind=VerdictKind.AMBIGUOUS, candidates=tuple(groups[i].name for i in found))
    culprit = found
    alone = evaluate([(groups[culprit].ids, f"sufficient? {groups[culprit].name}")])[0]
    return _Located(culprit, alone, also)


def _necessary(everything: Config, ids: Config, name: str, evaluate: Evaluate) -> bool | None:
    """Confirm in the other direction: BAD with these units taken from GOOD should pass."""
    outcome = evaluate([(everything - ids, f"necessary? BAD - {name}")])[0]
    return {Outcome.GOOD: True, Outcome.BAD: False}.get(outcome)


def _prefix_search(groups: Sequence[Group], evaluate: Evaluate, jobs: int) -> int | list[int]:
    """Index of the group whose addition turns the GOOD-side prefix bad (git bisect over pipeline order).

    Prefix m takes groups[:m] from BAD; prefix 0 is GOOD (good) and prefix len(groups) is BAD (bad). With
    `jobs` probes per wave this needs about log_(jobs+1)(#groups) waves. Returns candidate indices when
    skipped hybrids leave the answer ambiguous.
    """
    lo, hi, skipped = 0, len(groups), set[int]()
    while hi - lo > 1:
        open_ = [m for m in range(lo + 1, hi) if m not in skipped]
        if not open_:
            return list(range(lo, hi))
        probes = _spread(open_, lo, hi, jobs)
        configs = [(frozenset().union(*(g.ids for g in groups[:m])), f"search: {_span(groups, m)}") for m in probes]
        for m, outcome in sorted(zip(probes, evaluate(configs))):
            if outcome == Outcome.SKIP:
                skipped.add(m)
            elif outcome == Outcome.BAD and m < hi:
                hi = m
            elif outcome == Outcome.GOOD and lo < m < hi:
                lo = m
    return hi - 1


def _spread(candidates: list[int], lo: int, hi: int, jobs: int) -> list[int]:
    """Up to `jobs` candidates nearest to evenly spaced cut points between lo and hi."""
    picks: list[int] = []
    for i in range(min(jobs, len(candidates))):
        target = lo + (hi - lo) * (i + 1) / (min(jobs, len(candidates)) + 1)
        picks.append(min((c for c in candidates if c not in picks), key=lambda c: (abs(c - target), c)))
    return sorted(picks)


def _span(groups: Sequence[Group], m: int) -> str:
    return groups[0].name if m == 1 else f"{groups[0].name}..{groups[m - 1].name}"


def ddmin(units: list[str], evaluate: Evaluate, jobs: int = 1) -> tuple[list[str], bool]:
    """Zeller's delta debugging: a 1-minimal failing subset of `units` (which as a whole fail).

    Returns the subset and whether 1-minimality is proven (no skipped hybrid in the final round).
    """
    current, n = list(units), 2
    if len(current) <= 1:
        return current, True
    clean = True
    while len(current) >= 2:
        parts = _split(current, n)
        hit, clean = _first_bad(parts, evaluate, jobs)
        if hit is not None:
            current, n = parts[hit], 2
            continue
        if n > 2:
            complements = [[u for u in current if u not in part] for part in parts]
            hit, skipped = _first_bad(complements, evaluate, jobs)
            clean = clean and skipped
            if hit is not None:
                current, n = complements[hit], max(n - 1, 2)
                continue
        if n >= len(current):
            break
        n = min(len(current), 2 * n)
    return current, clean


def _first_bad(configs: list[list[str]], evaluate: Evaluate, jobs: int) -> tuple[int | None, bool]:
    """Evaluate in waves of `jobs`, stopping at the first wave with a bad config; also says if none skipped."""
    clean = True
    for start in range(0, len(configs), max(jobs, 1)):
        wave = configs[start : start + max(jobs, 1)]
        outcomes = evaluate([(frozenset(c), f"ddmin: {_names(c)}") for c in wave])
        clean = clean and Outcome.SKIP not in outcomes
        if Outcome.BAD in outcomes:
            return start + outcomes.index(Outcome.BAD), clean
    return None, clean


def _names(ids: list[str]) -> str:
    names = [i.split(":", 1)[-1] for i in ids]
    return ", ".join(names) if len(names) <= 2 else f"{names[0]} +{len(names) - 1} more"


def _split(items: list[str], n: int) -> list[list[str]]:
    size, extra = divmod(len(items), n)
    parts: list[list[str]] = []
    start = 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        parts.append(items[start:end])
        start = end
    return [p for p in parts if p]

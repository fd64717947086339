"""Evaluate hybrid configurations: fingerprint, reuse earlier results, hand the rest to an executor.

This is the `evaluate` callback the search calls; it owns the journal, the judging and the live progress. A
hybrid the environment failed is never journaled (a later session runs it again) and, like disagreeing
repeats, stops the bisection undecided rather than letting the search build on it. A journaled hybrid is reused
only when its attempts ran in the numeric environment hybrids run in now (`machine.environment_differences`),
unless the plan says to reuse any: results from before an upgrade, or from another CPU, never silently feed a verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

from segbisect.core import machine
from segbisect.core.attempt import Attempt, AttemptPolicy
from segbisect.core.errors import UndecidableError
from segbisect.core.hybrid import Hybrid
from segbisect.core.judge import Judge
from segbisect.core.search import Config
from segbisect.core.units import Group, Inventory
from segbisect.core.verdict import Outcome
from segbisect.executors.base import Executor, Job
from segbisect.session.journal import HybridRecord, Journal


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the evaluator needs of a session: its units, the stages' groups, and earlier results to reuse (by
    fingerprint, oldest first): those computed in `environment`, the numeric environment its hybrids run in (see
    `Executor.environment`), or with `reuse_any_environment` also those computed in another.
    """

    inventory: Inventory
    groups: list[Group]
    stages: list[str]
    known: dict[str, list[HybridRecord]]
    policy: AttemptPolicy
    environment: dict[str, Any] = field(default_factory=dict)
    reuse_any_environment: bool = False


@dataclass(frozen=True, kw_only=True)
class Listeners:
    """Who hears of the evaluation as it goes: a hybrid started, a hybrid finished, a warning (the live line, the
    session's console and its MLflow run).
    """

    on_start: Callable[[Hybrid], None]
    on_done: Callable[[Hybrid], None]
    on_warning: Callable[[str], None]


class Evaluator:
    """Callable `search.Evaluate`: returns outcomes for a wave of configurations, running what is new."""

    def __init__(self, plan: Plan, executor: Executor, journal: Journal, judge: Judge, listeners: Listeners) -> None:
        self.plan, self.executor, self.journal, self.judge = plan, executor, journal, judge
        self.on_start, self.on_done, self.on_warning = listeners.on_start, listeners.on_done, listeners.on_warning
        self._warned: set[str] = set()
        self.hybrids: list[Hybrid] = []
        self._memo: dict[str, Hybrid] = {}
        self._journaled = {r.fingerprint for r in journal.records(HybridRecord)}

    def __call__(self, batch: list[tuple[Config, str]]) -> list[Outcome]:
        pending: list[Hybrid] = []
        for config, label in batch:
            fingerprint = self.plan.inventory.fingerprint(config)
            if fingerprint in self._memo:
                continue
            draft = self._draft(config, label, fingerprint)
            record = self._reusable(draft)
            if record is not None:
                self._finish(replace(draft, reused=True, origin=record.origin), self._attempts(record))
            else:
                pending.append(draft)
        self._run_all(pending)
        self._stop_if_undecidable([self.get(config) for config, _ in batch])
        return [self.get(config).outcome for config, _ in batch]

    def get(self, config: Config) -> Hybrid:
        """The evaluated hybrid of `config`."""
        return self._memo[self.plan.inventory.fingerprint(config)]

    def _stop_if_undecidable(self, hybrids: list[Hybrid]) -> None:
        """An environment failure (after retries) or disagreeing repeats make any verdict untrustworthy."""
        for outcome, kind, what in (
            (Outcome.ERROR, "cannot-decide", "the environment failed"),
            (Outcome.FLAKY, "flaky", "the same configuration gave different outcomes"),
        ):
            hit = next((h for h in hybrids if h.outcome == outcome), None)
            if hit:
                raise UndecidableError(kind, f"{what} for {hit.id} ({hit.label}): {hit.note}")

    def rejudge(self, hybrid: Hybrid) -> Hybrid:
        """Judge a finished hybrid's attempts again (once the judge knows its metrics file and keys)."""
        old = self._memo[hybrid.fingerprint]
        outcome, note = self.judge.all(old.attempts)
        new = replace(old, outcome=outcome, note=note)
        self._memo[old.fingerprint] = new
        self.hybrids = [new if h is old else h for h in self.hybrids]
        return new

    def _draft(self, config: Config, label: str, fingerprint: str) -> Hybrid:
        sides = {stage: "same" for stage in self.plan.stages}
        inventory = self.plan.inventory
        # A probe's group shows "probe": its unit takes neither GOOD's value nor BAD's.
        probed = {inventory.probes[i][0].sets for i in config if i in inventory.probes}
        for group in self.plan.groups:
            taken = group.ids & config
            side = "bad" if taken == group.ids else ("good" if not taken else "mixed")
            sides[group.name] = "probe" if group.ids & probed else side
        draft = Hybrid(
            id=f"h{len(self._memo) + 1:02d}",
            label=label,
            fingerprint=fingerprint,
            from_bad=inventory.taken(config),
            sides=sides,
            attempts=(),
            check=self.judge.check,
            outcome=Outcome.SKIP,
            note="running",
        )
        self._memo[fingerprint] = draft
        return draft

    def _reusable(self, draft: Hybrid) -> HybridRecord | None:
        """The latest journaled record of `draft` with enough attempts of its check computed in this numeric
        environment; failing that, with the plan's leave, the latest computed in another (warned once per session
        and difference).
        """
        records = [
            record
            for record in self.plan.known.get(draft.fingerprint, [])
            if len(record.attempts) >= self.plan.policy.repeat and record.check == draft.check
        ]
        if not records:
            return None
        here: HybridRecord | None = next((r for r in reversed(records) if not self._differences(r)), None)
        if here is not None:
            return here
        latest = records[-1]
        differences = "; ".join(self._differences(latest))
        what = f"results of session {latest.origin} computed in another environment ({differences})"
        if self.plan.reuse_any_environment:
            self._warn_once(f"--reuse-any-environment: reusing {what}")
            return latest
        self._warn_once(
            f"{what} are not reused: their hybrids run and are judged again here (DVC still restores the stages its "
            "cache holds: its run-cache is not keyed by the environment; --reuse-any-environment reuses the results)"
        )
        return None

    def _attempts(self, record: HybridRecord) -> tuple[Attempt, ...]:
        return record.attempts[: self.plan.policy.repeat]

    def _differences(self, record: HybridRecord) -> list[str]:
        """How the numeric environments of the record's attempts differ from the plan's (each difference once)."""
        here = self.plan.environment
        found = (d for a in self._attempts(record) for d in machine.environment_differences(a.machine, here))
        return list(dict.fromkeys(found))

    def _warn_once(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.on_warning(text)

    def _run_all(self, drafts: list[Hybrid]) -> None:
        futures: dict[Future[tuple[Attempt, ...]], Hybrid] = {}
        try:
            for draft in drafts:
                self.on_start(draft)
                units = tuple(self.plan.inventory.unit(u) for u in draft.from_bad)
                job = Job(
                    hybrid_id=draft.id,
                    fingerprint=draft.fingerprint,
                    units=units,
                    policy=self.plan.policy,
                )
                futures[self.executor.submit(job)] = draft
            for future in as_completed(futures):
                self._finish(futures[future], future.result())
        except BaseException:
            self.executor.stop()
            raise

    def _finish(self, draft: Hybrid, attempts: tuple[Attempt, ...]) -> None:
        outcome, note = self.judge.all(attempts)
        hybrid = replace(draft, attempts=attempts, outcome=outcome, note=note)
        # A hybrid this session ran is journaled even where an earlier record of it was not reusable (another
        # environment, fewer repeats), so later sessions find it; a reused one is copied in once.
        if outcome != Outcome.ERROR and not (hybrid.reused and hybrid.fingerprint in self._journaled):
            self.journal.append(HybridRecord.from_hybrid(hybrid))
            self._journaled.add(hybrid.fingerprint)
        self._memo[hybrid.fingerprint] = hybrid
        self.hybrids.append(hybrid)
        self.on_done(hybrid)

"""Evaluate hybrid configurations: fingerprint, reuse earlier results, hand the rest to an executor.

This is the `evaluate` callback the search calls; it owns the journal, the judging and the live progress. A
hybrid the environment failed is never journaled (a later session runs it again) and, like disagreeing
repeats, stops the bisection undecided rather than letting the search build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, replace
from typing import Any

from segbisect.attempt import Attempt
from segbisect.errors import UndecidableError
from segbisect.executor import Executor, Job
from segbisect.hybrid import Hybrid
from segbisect.journal import REUSED, Journal
from segbisect.judge import Judge
from segbisect.outcome import Outcome
from segbisect.search import Config
from segbisect.units import Group, Inventory


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the evaluator needs of a session: its units, the stages' groups, and earlier results to reuse."""

    inventory: Inventory
    groups: list[Group]
    stages: list[str]
    known: dict[str, dict[str, Any]]
    repeat: int
    retries: int = 1


class Evaluator:
    """Callable `search.Evaluate`: returns outcomes for a wave of configurations, running what is new."""

    def __init__(
        self,
        plan: Plan,
        executor: Executor,
        journal: Journal,
        judge: Judge,
        on_start: Callable[[Hybrid], None],
        on_done: Callable[[Hybrid], None],
    ) -> None:
        self.plan, self.executor, self.journal, self.judge = plan, executor, journal, judge
        self.on_start, self.on_done = on_start, on_done
        self.hybrids: list[Hybrid] = []
        self._memo: dict[str, Hybrid] = {}
        self._units = {u.id: u for u in plan.inventory.units}
        self._journaled = {r["fingerprint"] for r in journal.records("hybrid")}

    def __call__(self, batch: list[tuple[Config, str]]) -> list[Outcome]:
        pending: list[Hybrid] = []
        for config, label in batch:
            fingerprint = self.plan.inventory.fingerprint(config)
            if fingerprint in self._memo:
                continue
            draft = self._draft(config, label, fingerprint)
            reused = self._reusable(draft)
            if reused is not None:
                self._finish(replace(draft, reused=True), reused)
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
        for group in self.plan.groups:
            taken = group.ids & config
            sides[group.name] = "bad" if taken == group.ids else ("good" if not taken else "mixed")
        draft = Hybrid(
            id=f"h{len(self._memo) + 1:02d}",
            label=label,
            fingerprint=fingerprint,
            from_bad=tuple(u.id for u in self.plan.inventory.units if u.id in config),
            sides=sides,
            attempts=(),
            check=self.judge.check,
            outcome=Outcome.SKIP,
            note="running",
        )
        self._memo[fingerprint] = draft
        return draft

    def _reusable(self, draft: Hybrid) -> tuple[Attempt, ...] | None:
        record = self.plan.known.get(draft.fingerprint)
        if not record or len(record["attempts"]) < self.plan.repeat or record.get("check") != draft.check:
            return None
        return tuple(Attempt.from_record(a) for a in record["attempts"][: self.plan.repeat])

    def _run_all(self, drafts: list[Hybrid]) -> None:
        futures: dict[Future[tuple[Attempt, ...]], Hybrid] = {}
        try:
            for draft in drafts:
                self.on_start(draft)
                units = tuple(self._units[u] for u in draft.from_bad)
                job = Job(
                    hybrid_id=draft.id,
                    fingerprint=draft.fingerprint,
                    units=units,
                    repeat=self.plan.repeat,
                    retries=self.plan.retries,
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
        if hybrid.fingerprint not in self._journaled and outcome != Outcome.ERROR:
            self.journal.append({**hybrid.to_record(), **({REUSED: True} if hybrid.reused else {})})
            self._journaled.add(hybrid.fingerprint)
        self._memo[hybrid.fingerprint] = hybrid
        self.hybrids.append(hybrid)
        self.on_done(hybrid)

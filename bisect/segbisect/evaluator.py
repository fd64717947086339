"""Evaluate hybrid configurations: fingerprint, reuse earlier results, run the rest in parallel workspaces.

This is the `evaluate` callback the search calls; it owns the journal, the judging and the live progress.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from segbisect.errors import AbortError
from segbisect.hybrid import materialize
from segbisect.journal import Journal
from segbisect.predicate import Predicate, UnjudgeableError
from segbisect.runner import Attempt, Processes, attempt
from segbisect.snapshot import Snapshot
from segbisect.units import Group, Inventory


@dataclass
class Judge:
    """Turns attempts into good/bad/skip with the `--fail-if` predicate or a `--run` check's exit code."""

    predicate: Predicate | None = None
    check: str | None = None

    def keys(self) -> list[str]:
        """The metrics the predicate reads (none for a --run check)."""
        return self.predicate.metric_keys if self.predicate else []

    def one(self, a: dict[str, Any]) -> tuple[str, str]:
        if a["status"] != "ok":
            return "skip", a["reason"]
        if self.check is not None:
            rc = a["check_rc"]
            if rc == 0:
                return "good", "check exited 0"
            if rc == 125:
                return "skip", "check exited 125 (cannot test)"
            if 1 <= rc <= 127:
                return "bad", f"check exited {rc}"
            raise AbortError(f"--run check exited {rc}: aborting the bisection")
        try:
            failed = self.predicate(a["metrics"])
        except UnjudgeableError as exc:
            return "skip", str(exc)
        return ("bad", f"{self.predicate.text} holds") if failed else ("good", f"{self.predicate.text} does not hold")

    def all(self, attempts: list[dict[str, Any]]) -> tuple[str, str]:
        """One outcome for repeated attempts; disagreeing repeats make the hybrid untestable (noise)."""
        verdicts = [self.one(a) for a in attempts]
        outcomes = {o for o, _ in verdicts}
        if len(outcomes) == 1:
            return verdicts[-1]
        counts = ", ".join(f"{sum(o == x for o, _ in verdicts)} {x}" for x in sorted(outcomes))
        return "skip", f"repeats disagree ({counts}): predicate is noisy here"


@dataclass
class Hybrid:
    """One evaluated configuration, as journaled and reported."""

    id: str
    label: str
    fingerprint: str
    from_bad: list[str]
    sides: dict[str, str]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    check: str | None = None
    outcome: str = ""
    note: str = ""
    reused: bool = False

    @property
    def executed(self) -> list[str]:
        return [s for a in self.attempts for s in a["executed"]]

    @property
    def restored(self) -> list[str]:
        return list(dict.fromkeys(s for a in self.attempts for s in a["restored"]))

    @property
    def metrics(self) -> dict[str, Any]:
        return self.attempts[-1]["metrics"] if self.attempts else {}

    @property
    def seconds(self) -> float:
        return round(sum(a["seconds"] for a in self.attempts), 2)

    def record(self) -> dict[str, Any]:
        return {"type": "hybrid", "id": self.id, "label": self.label, "fingerprint": self.fingerprint,
                "from_bad": self.from_bad, "sides": self.sides, "attempts": self.attempts, "check": self.check}


@dataclass
class Context:
    """Everything needed to build and run hybrids of one session."""

    good: Snapshot
    bad: Snapshot
    inventory: Inventory
    groups: list[Group]
    workspaces: Any
    procs: Processes
    journal: Journal
    known: dict[str, dict[str, Any]]
    judge: Judge
    env: dict[str, str]
    metrics_file: str
    diagnostics: str | None
    logs: Path
    jobs: int = 1
    repeat: int = 1


class Evaluator:
    """Callable `search.Evaluate`: returns outcomes for a wave of configurations, running what is new."""

    def __init__(self, ctx: Context, on_start: Callable[[Hybrid], None], on_done: Callable[[Hybrid], None]) -> None:
        self.ctx, self.on_start, self.on_done = ctx, on_start, on_done
        self.hybrids: list[Hybrid] = []
        self._memo: dict[str, Hybrid] = {}
        self._units = {u.id: u for u in ctx.inventory.units}
        self._journaled = {r["fingerprint"] for r in ctx.journal.records("hybrid")}
        stages = [stage for snap in (ctx.good, ctx.bad) for stage in snap.stages]
        self._outs = sorted({out for stage in stages for out in stage.outs})
        self._locks = sorted({stage.lock_file for stage in stages})

    def __call__(self, batch: list[tuple[frozenset[str], str]]) -> list[str]:
        pending: dict[str, Hybrid] = {}
        for config, label in batch:
            fp = self.ctx.inventory.fingerprint(config)
            if fp in self._memo or fp in pending:
                continue
            hybrid = self._new(config, label, fp)
            if self._reuse(hybrid):
                self._finish(hybrid)
            else:
                pending[fp] = hybrid
        self._run_all(list(pending.values()))
        return [self.get(config).outcome for config, _ in batch]

    def get(self, config: frozenset[str]) -> Hybrid:
        """The evaluated hybrid of `config`."""
        return self._memo[self.ctx.inventory.fingerprint(config)]

    def _new(self, config: frozenset[str], label: str, fp: str) -> Hybrid:
        hid = f"h{len(self._memo) + 1:02d}"
        sides = {stage.name: "same" for stage in self.ctx.good.stages}
        for group in self.ctx.groups:
            taken = group.ids & config
            sides[group.name] = "bad" if taken == group.ids else ("good" if not taken else "mixed")
        from_bad = [u.id for u in self.ctx.inventory.units if u.id in config]
        hybrid = Hybrid(hid, label, fp, from_bad, sides, check=self.ctx.judge.check)
        self._memo[fp] = hybrid
        return hybrid

    def _reuse(self, hybrid: Hybrid) -> bool:
        record = self.ctx.known.get(hybrid.fingerprint)
        if not record or len(record["attempts"]) < self.ctx.repeat or record.get("check") != hybrid.check:
            return False
        hybrid.attempts, hybrid.reused = record["attempts"][: self.ctx.repeat], True
        return True

    def _run_all(self, hybrids: list[Hybrid]) -> None:
        if not hybrids:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, self.ctx.jobs))
        futures: dict[Future, Hybrid] = {}
        try:
            for hybrid in hybrids:
                self.on_start(hybrid)
                futures[pool.submit(self._execute, hybrid)] = hybrid
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    hybrid = futures[future]
                    hybrid.attempts = future.result()
                    self._finish(hybrid)
        except BaseException:
            self.ctx.procs.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _finish(self, hybrid: Hybrid) -> None:
        if hybrid.fingerprint not in self._journaled:
            self.ctx.journal.append(hybrid.record())
            self._journaled.add(hybrid.fingerprint)
        hybrid.outcome, hybrid.note = self.ctx.judge.all(hybrid.attempts)
        self.hybrids.append(hybrid)
        self.on_done(hybrid)

    def _execute(self, hybrid: Hybrid) -> list[dict[str, Any]]:
        ctx = self.ctx
        workspace = ctx.workspaces.acquire(hybrid.id, ctx.good.ref.commit, self._outs, self._locks)
        try:
            materialize(workspace, ctx.good, ctx.bad, [self._units[u] for u in hybrid.from_bad])
            env = {**ctx.env, "SEGBISECT_HYBRID": hybrid.id}
            log = ctx.logs / f"{hybrid.id}.log"
            run = partial(attempt, ctx.procs, workspace, env, log, ctx.metrics_file, ctx.judge.check,
                          diagnostics=ctx.diagnostics, data_sources=sorted({*ctx.good.data_sources, *ctx.bad.data_sources}))
            first: Attempt = run()
            attempts = [first]
            while len(attempts) < ctx.repeat and first.status == "ok" and first.executed:
                attempts.append(run(force=first.executed))
            return [a.as_dict() for a in attempts]
        finally:
            ctx.workspaces.release(workspace)

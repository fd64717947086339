"""A finished hybrid: a configuration (GOOD plus some of BAD's units), its attempts and its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segbisect.core.attempt import Attempt
from segbisect.core.verdict import Outcome


@dataclass(frozen=True, kw_only=True)
class Hybrid:
    """As journaled (`session.journal.HybridRecord`) and reported (`reporting.report.HybridRow`); `reused` when its
    attempts came from a journal, `origin` then naming the session whose run computed them.
    """

    id: str
    label: str
    fingerprint: str
    from_bad: tuple[str, ...]
    sides: dict[str, str]
    attempts: tuple[Attempt, ...]
    check: str | None
    outcome: Outcome
    note: str
    reused: bool = False
    origin: str | None = None

    @property
    def executed(self) -> list[str]:
        return [s for a in self.attempts for s in a.executed]

    @property
    def restored(self) -> list[str]:
        return list(dict.fromkeys(s for a in self.attempts for s in a.restored))

    @property
    def seconds(self) -> float:
        return round(sum(a.seconds for a in self.attempts), 2)

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds each executed stage took, over all attempts (a repeat runs its stages again)."""
        total: dict[str, float] = {}
        for a in self.attempts:
            for stage, seconds in a.stage_seconds.items():
                total[stage] = round(total.get(stage, 0.0) + seconds, 2)
        return total

    @property
    def figures(self) -> dict[str, str]:
        """The plot images its last run kept (declared path -> kept file), empty when none were."""
        return next((a.figures for a in reversed(self.attempts) if a.figures), {})

    def metrics(self, metrics_file: str | None) -> dict[str, Any]:
        """The last attempt's metrics from `metrics_file` (empty when it has none)."""
        if not self.attempts or metrics_file is None:
            return {}
        return self.attempts[-1].metrics.get(metrics_file, {})

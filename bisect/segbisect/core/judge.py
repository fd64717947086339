"""Turn attempts into outcomes, with the `--fail-if` predicate or the exit status of a `--run` check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segbisect.core.attempt import Attempt, AttemptStatus
from segbisect.core.errors import AbortError
from segbisect.core.predicate import Predicate, UnjudgeableError
from segbisect.core.verdict import Outcome

CANNOT_TEST = 125


@dataclass
class Judge:
    """Exactly one of `predicate` and `check`; `metrics_file` is the file the predicate reads (see `metrics`)."""

    predicate: Predicate | None
    check: str | None
    metrics_file: str | None = None
    invert: bool = False

    @property
    def ready(self) -> bool:
        """Whether outcomes can be judged before any hybrid ran (a check, or a predicate with file and keys)."""
        if self.check is not None:
            return True
        return self.metrics_file is not None and self.predicate is not None and self.predicate.resolved

    def keys(self) -> list[str]:
        """The metrics the predicate reads (none for a --run check)."""
        return self.predicate.metric_keys if self.predicate else []

    def one(self, attempt: Attempt) -> tuple[Outcome, str]:
        """The attempt's outcome; with `invert` (asking for the fix) passing counts as the change being found."""
        outcome, note = self._judged(attempt)
        if self.invert and outcome in (Outcome.GOOD, Outcome.BAD):
            outcome = Outcome.BAD if outcome == Outcome.GOOD else Outcome.GOOD
        return outcome, note

    def _judged(self, attempt: Attempt) -> tuple[Outcome, str]:
        if attempt.status == AttemptStatus.ERROR:
            return Outcome.ERROR, attempt.reason
        if attempt.status == AttemptStatus.CRASH:
            return Outcome.SKIP, attempt.reason
        if self.check is not None:
            return _checked(attempt.check_rc)
        if self.predicate is None or self.metrics_file is None:
            return Outcome.SKIP, "no metrics file to judge yet"
        metrics = attempt.metrics.get(self.metrics_file)
        if metrics is None:
            return Outcome.SKIP, attempt.unread.get(self.metrics_file, f"metrics file {self.metrics_file} is missing")
        try:
            failed = self.predicate(metrics)
        except UnjudgeableError as exc:
            return Outcome.SKIP, str(exc)
        if failed:
            return Outcome.BAD, f"{self.predicate.text} holds"
        return Outcome.GOOD, f"{self.predicate.text} does not hold"

    def all(self, attempts: Sequence[Attempt]) -> tuple[Outcome, str]:
        """One outcome for repeated attempts: ERROR if the environment failed one, FLAKY if they disagree."""
        verdicts = [self.one(a) for a in attempts]
        failed = next((v for v in verdicts if v[0] == Outcome.ERROR), None)
        if failed:
            return failed
        outcomes = {o for o, _ in verdicts}
        if len(outcomes) == 1:
            return verdicts[-1]
        sequence = ", ".join(o for o, _ in verdicts)
        return Outcome.FLAKY, f"repeats disagree ({sequence}): the check is not deterministic here"


def _checked(rc: int | None) -> tuple[Outcome, str]:
    """`git bisect run`'s rules for a check's exit status."""
    if rc == 0:
        return Outcome.GOOD, "check exited 0"
    if rc == CANNOT_TEST:
        return Outcome.SKIP, f"check exited {CANNOT_TEST} (cannot test)"
    if rc is not None and 1 <= rc <= 127:
        return Outcome.BAD, f"check exited {rc}"
    raise AbortError(f"--run check exited {rc}: aborting the bisection")

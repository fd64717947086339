"""A hybrid's outcome, as in `git bisect` (good, bad, skip), plus the two that stop a bisection undecided."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """Only GOOD and BAD decide anything. SKIP: the configuration cannot be tested (a stage's own crash, missing
    metrics, a check's 125). ERROR: the environment failed, even after retries. FLAKY: repeats disagreed.
    """

    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"
    ERROR = "error"
    FLAKY = "flaky"

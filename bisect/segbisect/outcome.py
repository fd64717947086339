"""A hybrid's outcome, as in `git bisect`: good, bad, or skip when it cannot be tested."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """Only GOOD and BAD decide anything; SKIP (a crash, missing metrics, noisy repeats) leaves a question open."""

    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"

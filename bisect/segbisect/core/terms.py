"""The words of a bisection, as `git bisect` has its terms: which change broke it, or which change fixed it.

The search always looks for the units of the second configuration that turn the first one's outcome around.
Asking for the fix, the first configuration is the broken one and the second the fixed one: outcomes, labels,
the verdict and the report speak of BROKEN and FIXED, and the evidence shown is the broken side's.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from segbisect.core.verdict import Outcome


@dataclass(frozen=True, kw_only=True)
class Terms:
    """`old` names the first configuration and what it does, `new` the second; `find_fix` asks for the fix."""

    old: str = "GOOD"
    new: str = "BAD"
    find_fix: bool = False

    def outcome(self, outcome: Outcome) -> str:
        """How an outcome reads to the user: like the first configuration, or like the second."""
        if outcome == Outcome.GOOD:
            return self.old.lower() if self.find_fix else str(outcome)
        if outcome == Outcome.BAD:
            return self.new.lower() if self.find_fix else str(outcome)
        return str(outcome)

    def swapped(self, old_ref: str, new_ref: str, note: str) -> str:
        """Why there is nothing to bisect when each configuration does what the other should (`note`: how the
        second was judged): the two were given the wrong way round, or the other question was meant.
        """
        does = "fails" if self.find_fix else "passes"
        reversed_command = shlex.join(["segbisect", new_ref, old_ref, *(["--find-fix"] if self.find_fix else [])])
        asked, other = ("fixed", "broke") if self.find_fix else ("broke", "fixed")
        toggle = "leave out --find-fix" if self.find_fix else "add --find-fix"
        return (
            f"{self.new} {does} ({self.outcome(Outcome.GOOD)}: {note}): they look swapped; to find the change "
            f"that {asked} it, give them the other way round ({reversed_command}, with your other options), or to "
            f"find the change that "
            f"{other} it, {toggle}"
        )


CULPRIT = Terms()
FIX = Terms(old="BROKEN", new="FIXED", find_fix=True)

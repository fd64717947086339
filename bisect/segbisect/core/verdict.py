"""What a hybrid came to (`Outcome`, as in `git bisect`: good, bad, skip, plus the two that stop a bisection
undecided) and what a bisection concluded, with its one-sentence explanation."""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The search's conclusion; `units` are unit ids, `stages` the stages they belong to."""

    kind: VerdictKind
    stage: str | None = None
    stages: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    sufficient: bool | None = None
    necessary: bool | None = None
    minimal: bool = False
    also_sufficient: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    asks_for_fix: bool = False

    @property
    def names_a_change(self) -> bool:
        return self.kind in (VerdictKind.CULPRIT, VerdictKind.FIX, VerdictKind.INTERACTION)

    def message(self) -> str:
        """The verdict in one sentence, as the report and the console print it."""
        if self.kind == VerdictKind.AMBIGUOUS:
            what = "fix" if self.asks_for_fix else "culprit"
            return f"untestable hybrids leave the {what} among: {', '.join(self.candidates)}"
        if self.kind in (VerdictKind.CULPRIT, VerdictKind.FIX):
            extra = f"; also sufficient on their own: {', '.join(self.also_sufficient)}" if self.also_sufficient else ""
            holds = "holds the fix, " if self.kind == VerdictKind.FIX else "is "
            return f"stage '{self.stage}' {holds}{self._role()}; minimal change: {len(self.units)} unit(s){extra}"
        needed = {True: "necessary", False: "not necessary", None: "necessity untestable"}[self.necessary]
        return (
            f"no single stage suffices: the {self.question} needs {len(self.units)} unit(s) together across "
            f"{', '.join(self.stages)} ({needed})"
        )

    @property
    def question(self) -> str:
        return "fix" if self.asks_for_fix else "failure"

    def as_fix(self) -> Verdict:
        """The same conclusion, worded for the reversed question (which change fixed it)."""
        kind = VerdictKind.FIX if self.kind == VerdictKind.CULPRIT else self.kind
        return replace(self, kind=kind, asks_for_fix=True)

    def _role(self) -> str:
        roles: dict[tuple[bool | None, bool | None], str] = {
            (True, True): "sufficient and necessary",
            (True, False): "sufficient but not necessary (BAD still fails without it)",
            (True, None): "sufficient (necessity untestable)",
        }
        return roles.get((self.sufficient, self.necessary), "")


class VerdictKind(StrEnum):
    """How a bisection ended; the first two name a change."""

    # A change found (exit 0): one stage suffices, or several units across stages only together.
    CULPRIT = "culprit"
    FIX = "fix"
    INTERACTION = "interaction"
    # No change named: untestable hybrids in the way, the environment failed, repeats disagreed (exit 1);
    # GOOD/BAD not as claimed (exit 3); interrupted.
    AMBIGUOUS = "ambiguous"
    CANNOT_DECIDE = "cannot-decide"
    FLAKY = "flaky"
    PRECONDITION_FAILED = "precondition-failed"
    STOPPED = "stopped"

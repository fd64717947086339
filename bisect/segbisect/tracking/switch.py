"""The session's tracking switch. A store that fails mid-bisection turns tracking off for the rest of the session:
segbisect's own runs stop, and the hybrids that start afterwards run their stages untracked, so a dead store costs
runs, never a verdict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from segbisect.tracking.store import unusable

# Set to "off" in a stage's environment, it runs the stage without MLflow (see pipeline.tracking.TRACKING_SWITCH).
TRACKING_SWITCH = "SEGBISECT_TRACKING"
REASON_CHARS = 300


def untracked(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for stages that run without MLflow: they do not import it, so no store can fail them."""
    off = {name: value for name, value in env.items() if name != "MLFLOW_TRACKING_URI"}
    return off | {TRACKING_SWITCH: "off"}


@dataclass(frozen=True)
class Outage:
    """The bisection's tracking failing mid-run: `during` what (segbisect's own logging, or a hybrid's stages)."""

    during: str
    reason: str


class StageTracking:
    """Whether the session tracks: read by segbisect's own `Tracker`, and by an executor as each hybrid starts.

    On (the stage environment as the session built it) until the bisection's tracking fails; off from then on, after
    one warning: segbisect's runs stop and the hybrids that start afterwards run their stages untracked, as a session
    that never tracked would. Executors call it from their own threads.
    """

    def __init__(self, uri: str | None, warn: Callable[[str], None]) -> None:
        self.uri, self.warn = uri, warn
        self.outage: Outage | None = None
        self.first_untracked: str | None = None
        self._tracked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return self.uri is not None and self.outage is None

    def stage_env(self, env: Mapping[str, str], hybrid: str) -> dict[str, str]:
        """The environment of `hybrid`'s stages, which start now."""
        with self._lock:
            if self.on:
                self._tracked.add(hybrid)
                return dict(env)
            if self.outage is not None and self.first_untracked is None:
                self.first_untracked = hybrid
        return untracked(env)

    def turn_off(self, during: str, reason: str) -> None:
        """Tracking failed `during` something: off for the rest of the session (one warning, whoever else finds
        the store failed too).
        """
        lines = reason.strip().splitlines()
        with self._lock:
            if not self.on:
                return
            self.outage = Outage(during, lines[0][:REASON_CHARS] if lines else "no reason given")
        self.warn(
            f"MLflow store {self.uri} failed {during} ({self.outage.reason}): the rest of this session runs "
            "untracked, the stages of every hybrid that starts from now on included"
        )

    def store_failed(self, hybrid: str) -> bool:
        """Whether `hybrid`, which the environment failed, ran its stages tracked while the store failed (it is
        unusable now, or tracking went off meanwhile): tracking is then off, and the hybrid may run again untracked.
        True at most once per hybrid.
        """
        with self._lock:
            if hybrid not in self._tracked:
                return False
            self._tracked.discard(hybrid)
        uri = self.uri
        if uri is not None and self.on:
            reason = unusable(uri)
            if reason is None:
                return False
            self.turn_off(f"under {hybrid}'s stages", reason)
        return True

    def describe(self, start: str) -> str:
        """The report's word on tracking: `start`, how the session began, and where tracking went off."""
        if self.outage is None:
            return start
        since = f"from {self.first_untracked} on" if self.first_untracked else "none started after"
        return f"{start}; went off mid-run, {self.outage.during} ({self.outage.reason}): hybrids untracked {since}"

"""A live progress line on a terminal: hybrids done of those planned, what runs now, time elapsed.

Off a terminal (a log, CI, `--json` piped) nothing is drawn: the plain per-hybrid lines are the record.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from segbisect.core.hybrid import Hybrid
from segbisect.core.units import Group
from segbisect.project.runner import running_stage


def planned(groups: list[Group], jobs: int) -> int:
    """About how many hybrids a bisection takes: GOOD and BAD, the stage search, the two confirmations, and
    delta debugging over the largest group (its exact count depends on the outcomes).
    """
    search = len(groups) if jobs >= len(groups) else math.ceil(math.log2(max(len(groups), 1)))
    largest = max((len(g.units) for g in groups), default=1)
    return 2 + search + 2 + (2 * math.ceil(math.log2(largest)) if largest > 1 else 0)


class Progress:
    """Use as a context manager around the search; `started`/`done` are the evaluator's hooks."""

    def __init__(self, console: Console, logs: Path, expected: int) -> None:
        self.console, self.logs, self.expected = console, logs, expected
        self.running: dict[str, str] = {}
        self.finished = 0
        self.start = time.monotonic()
        self._live = Live(console=console, get_renderable=self._line, refresh_per_second=2, transient=True)

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._live.stop()

    def started(self, hybrid: Hybrid) -> None:
        self.running[hybrid.id] = hybrid.label

    def done(self, hybrid: Hybrid) -> None:
        self.running.pop(hybrid.id, None)
        self.finished += 1

    def _line(self) -> Text:
        elapsed = int(time.monotonic() - self.start)
        now = [
            f"{h} {label} ({running_stage(self.logs / f'{h}.log') or 'starting'})" for h, label in self.running.items()
        ]
        total = max(self.expected, self.finished + len(self.running))
        return Text(
            f"hybrids done {self.finished} of about {total} · {'; '.join(now) or 'judging'} · "
            f"{elapsed // 60}m{elapsed % 60:02d}s",
            style="dim",
        )

"""The executors `--executor` names, in one table: each kind's preflight (what would fail where its hybrids run,
checked before anything runs), its constructor from the one `ExecutorContext`, and whether its DVC commands fork
from this machine's warm DVC server. A new executor is one module and one registration here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from segbisect.executors import ray
from segbisect.executors.base import Executor, ExecutorContext, Preflight
from segbisect.executors.local import LocalExecutor


class ExecutorKind(StrEnum):
    """Where hybrids run: worktrees on this machine, or Ray tasks on a cluster sharing a DVC remote."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class Registration:
    """One executor: `preflight` returns what its constructor needs found first (`ExecutorContext.checked`)."""

    build: Callable[[ExecutorContext], Executor]
    preflight: Callable[[Preflight], Mapping[str, str]]
    forks_dvc: bool


def _nothing_to_check(_: Preflight) -> Mapping[str, str]:
    return {}


EXECUTORS: dict[ExecutorKind, Registration] = {
    ExecutorKind.LOCAL: Registration(build=LocalExecutor, preflight=_nothing_to_check, forks_dvc=True),
    ExecutorKind.RAY: Registration(build=ray.RayExecutor, preflight=ray.preflight, forks_dvc=False),
}

"""A hybrid's outcome must not depend on which hybrids ran before it in the same worktree.

A worktree is reused from hybrid to hybrid with the previous hybrid's DVC outputs in place. A stage that writes into
another stage's output (the kind of bug segbisect hunts), or a `--run` check that edits outputs, leaves them unlike
what `dvc.lock` says; DVC's own check finds that and restores them before anything reads them. Real git, DVC and
fork server on the toy project; each hybrid is run in one reused worktree after every hybrid (itself included) and
compared with the same hybrid in a new worktree.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segbisect.core.attempt import Attempt, AttemptPolicy, AttemptStatus
from segbisect.core.units import Unit
from segbisect.executors.base import ClusterOptions, ExecutorContext, Job
from segbisect.executors.local import LocalExecutor
from segbisect.project.changes import diff
from segbisect.project.gateway import ForkedDvc
from segbisect.project.refs import resolve
from segbisect.project.runner import Task
from segbisect.project.snapshot import load_all
from segbisect.project.workspace import Workspaces
from segbisect_toy import bad_commit

# BAD's evaluate "normalises" the scores' inputs and writes them back into preprocess's output: its own result is
# right, and whatever reads data/processed.json afterwards (train, evaluate) sees the damage.
SCORES = 'scores = [x - m["threshold"] for x in d["x"]]\n'
IN_PLACE_BUG = (SCORES, SCORES + 'write("data/processed.json", {"x": [0.0] * len(d["x"]), "y": d["y"]})\n')
# A `--run` check that edits an output while it looks at it.
EDITING_CHECK = (
    "python -c \"import json; d = json.load(open('data/processed.json')); d['x'] = [0.0] * len(d['x']); "
    "json.dump(d, open('data/processed.json', 'w'))\""
)


def pair_walk(count: int) -> list[int]:
    """A sequence of 0..count-1 in which every ordered pair (a, b), a == b included, occurs as neighbours: each
    hybrid runs right after every hybrid. An Euler circuit of the complete graph with loops (Hierholzer).
    """
    unused = {node: list(range(count)) for node in range(count)}
    stack, walk = [0], []
    while stack:
        node = stack[-1]
        if unused[node]:
            stack.append(unused[node].pop())
        else:
            walk.append(stack.pop())
    return walk[::-1]


def test_a_pair_walk_holds_every_ordered_pair() -> None:
    walk = pair_walk(3)
    assert len(walk) == 10 and set(itertools.pairwise(walk)) == {(a, b) for a in range(3) for b in range(3)}


def outcome(attempts: tuple[Attempt, ...]) -> tuple[Any, ...]:
    """What the judge reads from a hybrid: its status, metrics and check status."""
    last = attempts[-1]
    return last.status, last.metrics, last.check_rc, last.reason


class Hybrids:
    """GOOD and BAD of the toy repository, and an executor factory over them."""

    def __init__(self, repo: Path, bad: str, check: str | None, root: Path) -> None:
        self.repo, self.check, self.root = repo, check, root
        refs = [(resolve(repo, "good", None), root / "good"), (resolve(repo, bad, None), root / "bad")]
        with ForkedDvc() as dvc:
            self.good, self.bad = load_all(refs, repo, dvc)
        self.units = diff(self.good, self.bad).units
        self._count = 0

    def run(self, configs: list[tuple[Unit, ...]], *, fresh: bool) -> Iterator[tuple[Any, ...]]:
        """Each configuration's outcome, in order: one worktree for all of them, or (`fresh`) a new one each."""
        dvc = ForkedDvc()
        with Workspaces(self.repo, keep=fresh, parent=self.root, dvc=dvc) as workspaces:
            executor = self._executor(workspaces, dvc)
            try:
                for units in configs:
                    self._count += 1
                    job = Job(
                        hybrid_id=f"h{self._count}", fingerprint=str(self._count), units=units, policy=AttemptPolicy()
                    )
                    yield outcome(executor.submit(job).result())
            finally:
                executor.close()

    def _executor(self, workspaces: Workspaces, dvc: ForkedDvc) -> LocalExecutor:
        """`jobs=1`: one worktree, handed from hybrid to hybrid (a new one each with `keep`)."""
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        task = Task(env=dict(os.environ), metrics_files=tuple(self.good.metrics_files), check=self.check)
        context = ExecutorContext(
            good=self.good,
            bad=self.bad,
            task=task,
            folder=self.root,
            jobs=1,
            workspaces=workspaces,
            dvc=dvc,
            cluster=ClusterOptions(),
            checked={},
        )
        return LocalExecutor(context)


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["a BAD stage", "the check"])
def test_outcomes_in_a_reused_worktree_do_not_depend_on_the_hybrids_before(
    toy: Path, tmp_path: Path, damage: str
) -> None:
    """Three hybrids (GOOD, BAD, BAD's evaluate code alone), each after every one of them in one worktree, give
    the outcomes each gives in a new worktree. BAD also trains differently, so a hybrid after another differs in
    train or evaluate only: upstream of them, preprocess's output is the one damaged.
    """
    code = (toy / "evaluate.py").read_text()
    files = {"evaluate.py": code.replace(*IN_PLACE_BUG)} if damage == "a BAD stage" else {"evaluate.py": code + "\n"}
    bad = bad_commit(toy, {"train": {"epochs": 6}, "evaluate": {"margin": 0.2}}, files)
    hybrids = Hybrids(toy, bad, EDITING_CHECK if damage == "the check" else None, tmp_path)
    code_unit = tuple(u for u in hybrids.units if u.name == "evaluate.py")
    assert len(code_unit) == 1 and len(hybrids.units) == 3, hybrids.units
    configs: list[tuple[Unit, ...]] = [(), tuple(hybrids.units), code_unit]
    fresh = list(hybrids.run(configs, fresh=True))
    assert all(found[0] == AttemptStatus.OK for found in fresh), fresh
    assert len({repr(found) for found in fresh}) > 1  # the hybrids differ, so a wrong reuse can show
    walk = pair_walk(len(configs))
    reused = list(hybrids.run([configs[i] for i in walk], fresh=False))
    for position, (index, found) in enumerate(zip(walk, reused, strict=True)):
        after = "first" if position == 0 else f"after hybrid {walk[position - 1]}"
        assert found == fresh[index], f"hybrid {index} {after}: {found} != {fresh[index]} in a new worktree"

"""Resumable training: the state after each finished epoch, kept where DVC never looks.

DVC removes a stage's outputs before it runs the stage, so the backup lives beside them in `.train-backup/<key>`,
keyed by everything the training result depends on (the train params, the processed data's spec with its shard
checksums, the pipeline's code, and the numeric environment: host, CPU, oneDNN settings, library versions, GPUs):
a changed configuration never resumes a stale backup, and backups of other keys are removed. A backup holds the
weights with the optimizer's state, early stopping's state and the history so far; the stage removes it when the
training has an outcome.

Under a bisection the stage runs in a temporary worktree that goes with the session; segbisect names a folder that
outlives it in `SEGBISECT_STATE_DIR`, and the backup lives there instead (`train-backup/<key>`), so a bisection
interrupted and run again resumes its trainings. Hybrids of a session train there side by side, so backups of other
keys stay (the session removes the folder when it has its answer), and one training at a time holds a key: a second
training of the same inputs at once (another hybrid) keeps its backup in its own worktree rather than share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_file
from pipeline.numerics import numeric_environment

BACKUP_ROOT = Path(".train-backup")
STATE_VARIABLE = "SEGBISECT_STATE_DIR"
STATE_BACKUPS = "train-backup"
LATEST = "latest.json"
STATE = "state.npz"
BEST = "best.npz"
PIPELINE_DIR = Path(__file__).resolve().parent
EARLY_STOPPING_STATE = ("wait", "stopped_epoch", "best", "best_epoch")


def backup_key(params: dict[str, Any], spec_file: Path) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(spec_file.read_bytes())
    for source in sorted(PIPELINE_DIR.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    machine = {**numeric_environment(), "tf_config": os.environ.get("TF_CONFIG")}
    digest.update(json.dumps(machine, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@dataclass
class Progress:
    """Where a training stands after its last finished epoch."""

    epochs_done: int = 0
    seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)
    early_stopping: dict[str, Any] = field(default_factory=dict)


class Backup:
    """The backup folder of one key; `clear_others` removes every stale one."""

    def __init__(self, key: str, root: Path = BACKUP_ROOT) -> None:
        self.root = root
        self.folder = root / key

    def clear_others(self) -> None:
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry != self.folder:
                    shutil.rmtree(entry, ignore_errors=True)

    def progress(self) -> Progress:
        latest = self.folder / LATEST
        if not latest.exists():
            return Progress()
        return Progress(**json.loads(latest.read_text())["progress"])

    def restore(self, model: Any, early_stopping: Any) -> None:
        """The model's weights and optimizer state, and early stopping's state, as the last finished epoch left them."""
        latest = self.folder / LATEST
        if not latest.exists():
            return
        state = json.loads(latest.read_text())
        epoch_dir = self.folder / state["dir"]
        with np.load(epoch_dir / STATE) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for variable, value in zip(_state_variables(model), values, strict=True):
            variable.assign(value)
        for name, value in state["progress"]["early_stopping"].items():
            setattr(early_stopping, name, value)
        if (epoch_dir / BEST).exists():
            with np.load(epoch_dir / BEST) as best:
                early_stopping.best_weights = [best[f"arr_{i}"] for i in range(len(best.files))]

    def save(self, model: Any, early_stopping: Any, progress: Progress) -> None:
        """A new epoch folder first, then the pointer to it (atomically), then the old folders go."""
        epoch_dir = self.folder / f"epoch-{progress.epochs_done:05d}"
        shutil.rmtree(epoch_dir, ignore_errors=True)
        epoch_dir.mkdir(parents=True)
        np.savez(epoch_dir / STATE, *(np.asarray(variable) for variable in _state_variables(model)))
        if early_stopping.best_weights is not None:
            np.savez(epoch_dir / BEST, *early_stopping.best_weights)
        progress.early_stopping = {name: _plain(getattr(early_stopping, name)) for name in EARLY_STOPPING_STATE}
        with atomic_file(self.folder / LATEST) as tmp:
            tmp.write_text(json.dumps({"dir": epoch_dir.name, "progress": progress.__dict__}))
        for old in self.folder.glob("epoch-*"):
            if old != epoch_dir:
                shutil.rmtree(old, ignore_errors=True)

    @contextmanager
    def until_outcome(self) -> Iterator[None]:
        """Remove the backup once the training has an outcome: it finished, or failed in a way a resume would only
        repeat (bad input, divergence). A fault of the environment or a kill keeps it for the next run."""
        try:
            yield
        except PipelineError:
            self.remove()
            raise
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()


@contextmanager
def claimed(key: str) -> Iterator[Backup]:
    """The backup of `key` for one training, held until it ends: in the bisection's state folder when there is one
    and no other training of the same key holds it now (an exclusive lock, released by the process ending however it
    ends), else in the workspace, where other keys' backups are stale and go.
    """
    state = os.environ.get(STATE_VARIABLE)
    if state:
        root = Path(state) / STATE_BACKUPS
        root.mkdir(parents=True, exist_ok=True)
        # The lock file stays: removed, a waiting process and a new one could each lock a file of that name.
        with open(root / f"{key}.lock", "a", encoding="utf-8") as lock:
            if _locked(lock.fileno()):
                yield Backup(key, root)
                return
    backup = Backup(key)
    backup.clear_others()
    yield backup


def _locked(fd: int) -> bool:
    """Whether this process now holds the exclusive lock on `fd` (False at once when another holds it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _state_variables(model: Any) -> list[Any]:
    """What a resumed training needs, in the order the same model's build gives: every weight (BatchNorm's moving
    statistics included) and the optimizer's state. One npz of their values, not `save_weights`: Keras walks every
    layer into an HDF5 group, 0.5 s of each epoch of the casebook's trainings where the npz takes 0.08 s."""
    return [*model.weights, *model.optimizer.variables]


def _plain(value: Any) -> Any:
    """Early stopping keeps numpy scalars and +-inf; JSON takes floats (inf included, as Python writes it)."""
    return value.item() if isinstance(value, np.generic) else value


def backup_callback(backup: Backup, early_stopping: Any, progress: Progress, clock: Any) -> Any:
    """A Keras callback: restore at the start of fit (after early stopping resets itself), save after each epoch."""
    import keras

    class EpochBackup(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            backup.restore(self.model, early_stopping)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            for key, value in (logs or {}).items():
                progress.history.setdefault(key, []).append(float(value))
            progress.epochs_done = epoch + 1
            progress.seconds = clock()
            backup.save(self.model, early_stopping, progress)

    return EpochBackup()

"""`models/train_meta.json`: what the train stage tells evaluate about its model, one type for writer and reader.

evaluate reads it leniently: a field that is missing or malformed becomes None (unknown), so a broken record
weakens the diagnosis instead of crashing the stage; only a file that is not a JSON object is an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json

FILE = "train_meta.json"


@dataclasses.dataclass(frozen=True)
class TrainMeta:
    """The model's head (logits or not), classes, training normalization and input statistics, and its results."""

    from_logits: bool | None
    num_classes: int | None
    ignore_index: int | None
    normalization: dict[str, Any] | None
    input_stats: dict[str, list[float]] | None
    class_weights: list[float] | None
    epochs_run: int | None
    best_val_mean_iou: float | None
    model_sha256: str | None

    def write(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: Path) -> TrainMeta:
        data = read_json(path, "train")
        if not isinstance(data, dict):
            raise PipelineError(f"{path}: expected a JSON object")
        return cls(**{f.name: _valid(f.name, data.get(f.name)) for f in dataclasses.fields(cls)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_stats(value: Any) -> bool:
    """Per-channel mean and std of 3 values each (min and max are informative only)."""
    return isinstance(value, dict) and all(
        isinstance(value.get(k), list) and len(value[k]) == 3 for k in ("mean", "std")
    )


CHECKS: dict[str, Callable[[Any], bool]] = {
    "from_logits": lambda v: isinstance(v, bool),
    "num_classes": _is_int,
    "ignore_index": _is_int,
    "normalization": lambda v: isinstance(v, dict),
    "input_stats": _is_stats,
    "class_weights": lambda v: isinstance(v, list),
    "epochs_run": _is_int,
    "best_val_mean_iou": _is_number,
    "model_sha256": lambda v: isinstance(v, str),
}


def _valid(name: str, value: Any) -> Any:
    if not CHECKS[name](value):
        return None
    return float(value) if name == "best_val_mean_iou" else value

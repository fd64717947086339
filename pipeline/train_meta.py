"""`models/train_meta.json`: what the train stage tells evaluate about its model, one type for writer and reader.

evaluate reads it leniently: a field that is missing or malformed becomes None (unknown), so a broken record
weakens the diagnosis instead of crashing the stage (and a file written before a field existed stays readable);
only a file that is not a JSON object is an error. The measurements train makes after fit (`confusion_matrix`,
`iou_per_class`) live here too, numpy only, beside the field they fill; the label shares come from the batches fit
consumed (pipeline/label_metrics.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
    train_foreground_share: float | None = None
    val_foreground_share: float | None = None
    val_iou_per_class: list[float | None] | None = None
    train_foreground_iou: list[float] | None = None
    val_foreground_iou: list[float] | None = None
    epochs: int | None = None
    min_loss: float | None = None
    loss: str | None = None

    def write(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: Path) -> TrainMeta:
        data = read_json(path, "train")
        if not isinstance(data, dict):
            raise PipelineError(f"{path}: expected a JSON object")
        return cls(**{f.name: _valid(f.name, data.get(f.name)) for f in dataclasses.fields(cls)})


def valid_pixels(masks: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Pixels holding a class id: neither the ignore index nor out of range."""
    valid = np.asarray(masks) < num_classes
    if ignore_index is not None:
        valid &= np.asarray(masks) != ignore_index
    return valid


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """(num_classes, num_classes) counts over the valid pixels; rows true classes, columns predicted classes."""
    keep = valid_pixels(true, num_classes, ignore_index).ravel()
    t = np.asarray(true).ravel()[keep].astype(np.int64)
    p = np.asarray(pred).ravel()[keep].astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> list[float | None]:
    """TP / (TP + FP + FN) per class; None where the class is absent from truth and prediction (0/0)."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    return [float(t / u) if u > 0 else None for t, u in zip(tp, union)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_ious(value: Any) -> bool:
    """One IoU per epoch."""
    return isinstance(value, list) and bool(value) and all(_is_number(x) and 0.0 <= x <= 1.0 for x in value)


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
    "train_foreground_share": lambda v: _is_number(v) and 0.0 <= v <= 1.0,
    "val_foreground_share": lambda v: _is_number(v) and 0.0 <= v <= 1.0,
    "train_foreground_iou": _is_ious,
    "val_foreground_iou": _is_ious,
    "epochs": _is_int,
    "min_loss": lambda v: _is_number(v) and math.isfinite(v),
    "loss": lambda v: isinstance(v, str),
    "val_iou_per_class": lambda v: (
        isinstance(v, list) and bool(v) and all(x is None or (_is_number(x) and 0.0 <= x <= 1.0) for x in v)
    ),
}
FLOATS = ("best_val_mean_iou", "train_foreground_share", "val_foreground_share", "min_loss")
LISTS = ("train_foreground_iou", "val_foreground_iou")


def _valid(name: str, value: Any) -> Any:
    if not CHECKS[name](value):
        return None
    if name in LISTS:
        return [float(x) for x in value]
    if name == "val_iou_per_class":
        return [None if x is None else float(x) for x in value]
    return float(value) if name in FLOATS else value

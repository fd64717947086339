"""Keras metrics over the batches fit actually consumes: what the model saw, not what the files on disk hold.

A fault in the input path after the files (a transform in train_data, a flip applied to the image alone) shows
only here: the foreground share of the labels each epoch trained and validated on, and each epoch's foreground IoU
on both. fit logs them per epoch (`foreground_share`, `foreground_iou` and their `val_` twins); train_meta.json
keeps what the diagnosis reasons from.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class ForegroundShare(keras.metrics.Metric):
    """Share of the valid label pixels (a class id, not ignore) that are not background, over the epoch's batches."""

    def __init__(self, num_classes: int, ignore_index: int | None, name: str = "foreground_share") -> None:
        super().__init__(name=name)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.foreground = self.add_variable(shape=(), initializer="zeros", name="foreground", dtype="float32")
        self.valid = self.add_variable(shape=(), initializer="zeros", name="valid", dtype="float32")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Counts labels as they arrived: the loss's per-pixel weights do not change what the batch held."""
        labels = ops.cast(y_true, "int32")
        valid = labels < self.num_classes
        if self.ignore_index is not None:
            valid = ops.logical_and(valid, labels != self.ignore_index)
        foreground = ops.logical_and(valid, labels != 0)
        self.foreground.assign_add(ops.sum(ops.cast(foreground, "float32")))
        self.valid.assign_add(ops.sum(ops.cast(valid, "float32")))

    def result(self) -> Any:
        return ops.divide_no_nan(self.foreground, self.valid)

    def reset_state(self) -> None:
        self.foreground.assign(0.0)
        self.valid.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index, "name": self.name}


def foreground_iou(num_classes: int, ignore_index: int | None) -> Any:
    """The foreground classes' IoU of the argmax (their mean with several): zero while the model finds no
    foreground, whatever background scores."""
    return keras.metrics.IoU(
        num_classes,
        target_class_ids=list(range(1, num_classes)),
        name="foreground_iou",
        ignore_class=ignore_index,
        sparse_y_pred=False,
    )

"""The train stage's loss: cross-entropy on the logits, soft Dice on their softmax, or the sum of the two.

Every loss skips ignore pixels and reads the class weights from the per-pixel sample weights the training batches
carry (`train_data.pixel_weight_table`: a pixel weighs its class's weight, an ignore pixel 0), computed in float32
whatever the layers' precision: the model's logits are float32 under mixed precision, and Keras divides a
replica's loss by the number of replicas under a distribution strategy, so the per-replica mean used here adds up
to the global batch's mean as the cross-entropy's does.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

DENOMINATOR_FLOOR = 1e-7
"""Keeps Dice finite where both the prediction and the labels are empty and the smoothing is 0."""


def crossentropy(ignore_index: int | None) -> keras.losses.Loss:
    """Sparse categorical cross-entropy from logits; Keras masks the ignore pixels out of the mean."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_index)


def soft_dice(
    labels: Any, logits: Any, pixel_weights: Any, num_classes: int, ignore_index: int | None, smooth: float
) -> Any:
    """Mean over images and foreground classes of 1 - (2 |P∩T| + smooth) / (|P| + |T| + smooth), P the softmax.

    Per image, as segmentation Dice usually is, so that an image without a class (a background-only image) has
    its own term: there only `smooth` rewards an empty prediction, and without it the term is 1 whatever the
    model predicts. The soft counts are sums of pixel weights, so a class weight of 2 counts that class's pixels
    twice in both the overlap and the sizes (a miss costs more than a false alarm on a weight-1 class); ignore
    pixels weigh nothing.
    """
    labels = ops.cast(labels, "int32")
    valid = (
        ops.ones_like(labels, dtype="float32") if ignore_index is None else ops.cast(labels != ignore_index, "float32")
    )
    weights = valid if pixel_weights is None else ops.cast(pixel_weights, "float32") * valid
    target = ops.one_hot(ops.where(valid > 0, labels, 0), num_classes, dtype="float32")[..., 1:]
    probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)[..., 1:]
    weights = ops.expand_dims(weights, -1)
    axes = (1, 2)
    overlap = ops.sum(weights * probs * target, axis=axes)
    sizes = ops.sum(weights * (probs + target), axis=axes)
    dice = (2.0 * overlap + smooth) / ops.maximum(sizes + smooth, DENOMINATOR_FLOOR)
    return ops.mean(1.0 - dice)


@keras.saving.register_keras_serializable(package="pipeline")
class SegmentationLoss(keras.losses.Loss):
    """Soft Dice (`soft_dice`), alone or added to the cross-entropy, with the class weights as sample weights.

    Dice is not a mean of per-pixel terms, so the weights enter its soft counts rather than Keras' weighted mean:
    `__call__` takes the sample weights itself instead of `call` returning per-pixel losses.
    """

    def __init__(
        self,
        loss: str,
        num_classes: int,
        ignore_index: int | None,
        dice_smooth: float,
        name: str = "segmentation_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.loss = loss
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dice_smooth = dice_smooth
        self._crossentropy = crossentropy(ignore_index)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        total = soft_dice(y_true, y_pred, sample_weight, self.num_classes, self.ignore_index, self.dice_smooth)
        if self.loss == "crossentropy+dice":
            total = total + ops.cast(self._crossentropy(y_true, y_pred, sample_weight), "float32")
        return total

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "loss": self.loss,
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "dice_smooth": self.dice_smooth,
        }


def segmentation_loss(loss: str, num_classes: int, ignore_index: int | None, dice_smooth: float) -> keras.losses.Loss:
    """The loss `train.loss` names (`crossentropy`, `dice` or `crossentropy+dice`); plain cross-entropy is Keras'
    own, exactly as the stage always compiled it."""
    if loss == "crossentropy":
        return crossentropy(ignore_index)
    return SegmentationLoss(loss, num_classes, ignore_index, dice_smooth)

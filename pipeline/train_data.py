"""The train stage's input: tf.data streams over the processed shards, and one numpy pass for the label evidence.

Each epoch's shard order, shuffle and flips derive from (seed, epoch) alone, never from an iterator's history, so
a training resumed at epoch k sees exactly the batches an uninterrupted one sees from epoch k on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import normalization
from pipeline.errors import PipelineError
from pipeline.processed import Spec, decoder, read
from pipeline.stats import ChannelStats

EPOCH_STRIDE = 1_000_003  # seed * stride + epoch: distinct shuffle seeds for any realistic number of epochs
LABEL_BATCH = 32


def pixel_weight_table(class_weights: list[float] | None, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Lookup mask value -> loss weight (uint8 masks index it directly); ignore pixels weigh 0."""
    table = np.zeros(256, np.float32)
    table[:num_classes] = class_weights if class_weights is not None else 1.0
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = 0.0
    return table


@dataclasses.dataclass(frozen=True)
class Batching:
    """How the training split is fed: the global batch, the bounded shuffle buffer, flips, and the seed."""

    batch_size: int
    shuffle_buffer: int
    flips: bool
    seed: int


def training_batches(
    spec: Spec,
    folder: Path,
    batching: Batching,
    epochs: range,
    weight_table: np.ndarray | None,
) -> Any:
    """The batches of `epochs`, one epoch after another, each shuffled and flipped from (seed, epoch)."""
    import tensorflow as tf

    files = spec.files(folder, "train")
    buffer = max(1, min(spec.splits["train"].images, batching.shuffle_buffer))
    decode = decoder(spec.image_size)

    def one_epoch(epoch: int) -> Any:
        # A Python int, not a tensor: under a global seed of 0 (train.seed: 0) TensorFlow compares a tensor op seed
        # with 0 in Python, which fails while a dataset function is traced.
        seed = batching.seed * EPOCH_STRIDE + epoch
        shards = tf.data.Dataset.from_tensor_slices(files).shuffle(
            len(files), seed=seed, reshuffle_each_iteration=False
        )
        pairs = shards.interleave(
            tf.data.TFRecordDataset, cycle_length=min(len(files), 4), num_parallel_calls=tf.data.AUTOTUNE
        ).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        pairs = pairs.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
        if batching.flips:
            flip_seed = tf.constant(seed, tf.int64)
            pairs = pairs.enumerate().map(lambda i, record: _random_flip(record, tf.stack([flip_seed, i])))
        else:
            pairs = pairs.map(lambda _stem, image, mask: (image, mask))
        return pairs.batch(batching.batch_size)

    steps = math.ceil(spec.splits["train"].images / batching.batch_size)
    batches = functools.reduce(tf.data.Dataset.concatenate, [one_epoch(e) for e in epochs], one_epoch(0).take(0))
    return _finish(
        batches.apply(tf.data.experimental.assert_cardinality(len(epochs) * steps)), spec.normalization, weight_table
    )


def validation_batches(spec: Spec, folder: Path, batch_size: int) -> Any:
    """The validation split in file order, batched and normalized like the training batches."""
    import tensorflow as tf

    pairs = tf.data.TFRecordDataset(spec.files(folder, "val")).map(
        decoder(spec.image_size), num_parallel_calls=tf.data.AUTOTUNE
    )
    batches = pairs.map(lambda _stem, image, mask: (image, mask)).batch(batch_size)
    steps = math.ceil(spec.splits["val"].images / batch_size)
    return _finish(batches.apply(tf.data.experimental.assert_cardinality(steps)), spec.normalization, None)


def _finish(batches: Any, norm: dict[str, Any], weight_table: np.ndarray | None) -> Any:
    """Normalize, integer labels, per-pixel weights; prefetch so the accelerator never waits on a batch."""
    import tensorflow as tf

    def finish(image: Any, mask: Any) -> Any:
        x = normalization.apply(image, norm)
        y = tf.cast(mask, tf.int32)
        if weight_table is None:
            return x, y
        return x, y, tf.gather(tf.constant(weight_table), y)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(options)


def _random_flip(record: Any, seed: Any) -> tuple[Any, Any]:
    """Horizontal and vertical flips from one stateless draw, so (seed, epoch, position) replays them exactly."""
    import tensorflow as tf

    _stem, image, mask = record
    coin = tf.random.stateless_uniform([2], seed=seed) < 0.5
    image = tf.cond(coin[0], lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(coin[0], lambda: tf.reverse(mask, [1]), lambda: mask)
    image = tf.cond(coin[1], lambda: tf.reverse(image, [0]), lambda: image)
    mask = tf.cond(coin[1], lambda: tf.reverse(mask, [0]), lambda: mask)
    return image, mask


@dataclasses.dataclass
class SplitLabels:
    """What one pass over a split tells before training: mask value counts and the normalized input statistics."""

    counts: np.ndarray
    inputs: ChannelStats


def read_labels(spec: Spec, folder: Path, split: str) -> SplitLabels:
    """One streaming pass, shard by shard, so a label outside the classes is named with its shard."""
    labels = SplitLabels(np.zeros(256, np.int64), ChannelStats())
    for file in spec.files(folder, split):
        stream = read([file], spec.image_size).batch(LABEL_BATCH)
        for _stems, images, masks in stream.as_numpy_iterator():
            counts = np.bincount(masks.ravel(), minlength=256)
            check_mask_values(counts, spec.num_classes, spec.ignore_index, file)
            labels.counts += counts
            labels.inputs.update(normalization.apply(images, spec.normalization))
    return labels


def check_mask_values(counts: np.ndarray, num_classes: int, ignore_index: int | None, where: str) -> None:
    """Labels outside the class range would be silently clipped or crash the loss: fail with the value instead."""
    bad = [value for value in np.flatnonzero(counts) if value >= num_classes and value != ignore_index]
    if bad:
        raise PipelineError(
            f"{where}: mask value {bad[0]} is neither a class id (0..{num_classes - 1}) nor ignore_index {ignore_index}"
        )

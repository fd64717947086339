"""Train stage: DeepLabV3+ on data/processed -> models/ (logits model + metadata), history and metrics reports."""

from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import normalization
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, atomic_file, write_json
from pipeline.params import load_section
from pipeline.processed import load_spec, load_split
from pipeline.tracking import log_artifact, log_keras_model, log_metrics, set_tag, stage_run
from pipeline.train_meta import FILE as META_FILE
from pipeline.train_meta import TrainMeta, confusion_matrix, foreground_share, iou_per_class

PROCESSED_DIR = Path("data/processed")
MODELS_DIR = Path("models")
MODEL_FILE = "model.keras"
METRICS_FILE = Path("reports/train_metrics.json")
HISTORY_FILE = Path("reports/train_history.csv")
MONITOR = "val_mean_iou"
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", MONITOR)


@dataclass
class TrainParams:
    """The `train` section of params.yaml."""

    backbone: Literal["mobilenetv2", "resnet18", "resnet50"]
    alpha: float
    output_stride: int
    aspp_filters: int
    decoder_filters: int
    epochs: int
    batch_size: int
    optimizer: Literal["adam", "sgd"]
    learning_rate: float
    class_weights: list[float] | None
    augment_flips: bool
    early_stopping_patience: int
    seed: int
    mixed_precision: bool = False

    def validate(self) -> None:
        """Reject values that would crash deep inside Keras or silently train nothing."""
        if not 0 < self.alpha <= 4:
            raise ValueError(f"alpha must be in (0, 4], got {self.alpha}")
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {self.output_stride}")
        for name in ("aspp_filters", "decoder_filters", "epochs", "batch_size", "early_stopping_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.class_weights is not None:
            if not self.class_weights or any(not math.isfinite(w) or w < 0 for w in self.class_weights):
                raise ValueError(f"class_weights must be non-negative numbers, one per class, got {self.class_weights}")
            if not any(self.class_weights):
                raise ValueError("class_weights are all zero: nothing would be learned")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")


def check_masks(masks: np.ndarray, num_classes: int, ignore_index: int | None, where: str) -> None:
    """Labels outside the class range would be silently clipped or crash the loss: fail with the value instead."""
    values = np.unique(masks)
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if bad:
        raise PipelineError(
            f"{where}: mask value {bad[0]} is neither a class id (0..{num_classes - 1}) nor ignore_index {ignore_index}"
        )


def pixel_weight_table(class_weights: list[float] | None, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Lookup mask value -> loss weight (uint8 masks index it directly); ignore pixels weigh 0."""
    table = np.zeros(256, np.float32)
    table[:num_classes] = class_weights if class_weights is not None else 1.0
    if ignore_index is not None and 0 <= ignore_index < 256:
        table[ignore_index] = 0.0
    return table


def make_dataset(
    images: np.ndarray,
    masks: np.ndarray,
    norm: dict[str, Any],
    batch_size: int,
    weight_table: np.ndarray | None = None,
    flips: bool = False,
    shuffle_seed: int | None = None,
) -> Any:
    """tf.data pipeline: (shuffle, flips applied identically to image and mask), batch, normalize, weights, prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    if flips:
        draws = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, draws)).map(_random_flip, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)

    def finish(image, mask):
        x = normalization.apply(image, norm)
        y = tf.cast(mask, tf.int32)
        if weight_table is None:
            return x, y
        return x, y, tf.gather(tf.constant(weight_table), y)

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _random_flip(pair, draw):
    """Horizontal and vertical flips from one stateless draw per element, so a seed replays them exactly."""
    import tensorflow as tf

    image, mask = pair
    coin = tf.random.stateless_uniform([2], seed=tf.stack([draw, tf.constant(0, tf.int64)])) < 0.5
    image = tf.cond(coin[0], lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(coin[0], lambda: tf.reverse(mask, [1]), lambda: mask)
    image = tf.cond(coin[1], lambda: tf.reverse(image, [0]), lambda: image)
    mask = tf.cond(coin[1], lambda: tf.reverse(mask, [0]), lambda: mask)
    return image, mask


def input_stats(images: np.ndarray, norm: dict[str, Any]) -> dict[str, list[float]]:
    """Per-channel stats of the normalized training inputs, so evaluate can detect a normalization mismatch."""
    x = normalization.apply(images, norm).reshape(-1, images.shape[-1]).astype(np.float64)
    return {
        name: [float(v) for v in fn(x, axis=0)]
        for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max))
    }


def build_model(
    params: TrainParams, input_shape: tuple[int, int, int], num_classes: int, ignore_index: int | None
) -> Any:
    """DeepLabV3+ compiled with a logits loss that skips ignore pixels, and val mean IoU over argmax.

    With `mixed_precision` the model is built under Keras' mixed_float16 policy (float16 compute, float32
    weights and logits), and compile wraps the optimizer in a loss-scale optimizer.
    """
    import keras

    from pipeline.model import build_deeplabv3plus

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16" if params.mixed_precision else "float32")
    try:
        model = build_deeplabv3plus(
            input_shape,
            num_classes,
            backbone=params.backbone,
            alpha=params.alpha,
            output_stride=params.output_stride,
            aspp_filters=params.aspp_filters,
            decoder_filters=params.decoder_filters,
            bn_momentum=0.9,
        )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    optimizer = (
        keras.optimizers.Adam(params.learning_rate)
        if params.optimizer == "adam"
        else keras.optimizers.SGD(params.learning_rate, momentum=0.9)
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_index),
        metrics=[keras.metrics.MeanIoU(num_classes, name="mean_iou", ignore_class=ignore_index, sparse_y_pred=False)],
    )
    return model


def fit(model: Any, train_ds: Any, val_ds: Any, params: TrainParams) -> dict[str, list[float]]:
    """Fit with early stopping on val mean IoU (best weights restored) and NaN termination; per-epoch MLflow metrics."""
    import keras

    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=params.early_stopping_patience, restore_best_weights=True, verbose=1
        ),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log_metrics(_floats(logs), step=epoch + 1)),
    ]
    history = model.fit(
        train_ds, validation_data=val_ds, epochs=params.epochs, callbacks=callbacks, shuffle=False, verbose=2
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def validation_iou(model: Any, val_ds: Any, num_classes: int, ignore_index: int | None) -> list[float | None]:
    """Per-class IoU of the model's argmax on the validation split, from one confusion matrix (numpy).

    Run after fit, on the restored best weights: the per-class view of the best epoch's val mIoU. Keras' mean IoU
    averages only the classes present, so a validation split without foreground scores 1.0 on background alone;
    the foreground class's own IoU says whether the model found foreground.
    """
    cm = np.zeros((num_classes, num_classes), np.int64)
    for x, y in val_ds:
        pred = np.asarray(model.predict_on_batch(x)).argmax(axis=-1)
        cm += confusion_matrix(np.asarray(y), pred, num_classes, ignore_index)
    return iou_per_class(cm)


def check_finite(history: dict[str, list[float]], learning_rate: float) -> None:
    """A NaN/inf loss means training diverged: stop the stage rather than save a broken model."""
    for epoch, loss in enumerate(history.get("loss", []), start=1):
        if not math.isfinite(loss):
            raise PipelineError(
                f"training loss became {loss} in epoch {epoch}: "
                f"lower train.learning_rate (now {learning_rate:g}) in params.yaml"
            )


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """One row per epoch; epoch, loss, val_loss, val_mean_iou first so DVC plots find them."""
    extra = sorted(k for k in history if k not in HISTORY_COLUMNS)
    columns = list(HISTORY_COLUMNS) + extra
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for i in range(len(history["loss"])):
            writer.writerow([i + 1] + [f"{history[c][i]:.6g}" if c in history else "" for c in columns[1:]])


def summarize(history: dict[str, list[float]], seconds: float, n_train: int, max_epochs: int) -> dict[str, Any]:
    """Metrics for reports/train_metrics.json: best val mIoU and the cost of reaching it."""
    ious = history[MONITOR]
    best = int(np.argmax(ious))
    epochs_run = len(ious)
    return {
        "best_val_mean_iou": ious[best],
        "best_epoch": best + 1,
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < max_epochs,
        "final_loss": history["loss"][-1],
        "final_val_loss": history["val_loss"][-1],
        "train_seconds": round(seconds, 2),
        "images_per_second": round(epochs_run * n_train / seconds, 2),
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_requirements() -> list[str]:
    """The installed TF/Keras pins, given explicitly so MLflow does not spend seconds inferring them."""
    pins = []
    for dist in ("tensorflow-cpu", "tensorflow", "keras"):
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def signature(model: Any) -> Any:
    """The model's tensor signature from its static shapes (no prediction needed, unlike infer_signature)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(tensor: Any) -> Any:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, *tensor.shape[1:]))])

    return ModelSignature(inputs=spec(model.inputs[0]), outputs=spec(model.outputs[0]))


def _floats(logs: dict[str, Any] | None) -> dict[str, float]:
    return {key: float(value) for key, value in (logs or {}).items()}


def train_meta(
    spec: dict[str, Any],
    params: TrainParams,
    metrics: dict[str, Any],
    stats: dict[str, Any],
    digest: str,
    labels: dict[str, Any] | None = None,
) -> TrainMeta:
    """What evaluate needs to use the model and to diagnose a train/eval mismatch.

    labels: `train_foreground_share`, `val_foreground_share` and `val_iou_per_class` (see `label_evidence`).
    """
    return TrainMeta(
        from_logits=True,
        num_classes=spec["num_classes"],
        ignore_index=spec.get("ignore_index"),
        normalization=spec["normalization"],
        input_stats=stats,
        class_weights=params.class_weights,
        epochs_run=metrics["epochs_run"],
        best_val_mean_iou=metrics["best_val_mean_iou"],
        model_sha256=digest,
        **(labels or {}),
    )


def label_evidence(
    y_train: np.ndarray, y_val: np.ndarray, val_iou: list[float | None], num_classes: int, ignore_index: int | None
) -> dict[str, Any]:
    """The foreground share of the training and validation labels, and the best epoch's per-class val IoU."""
    return {
        "train_foreground_share": foreground_share(y_train, num_classes, ignore_index),
        "val_foreground_share": foreground_share(y_val, num_classes, ignore_index),
        "val_iou_per_class": val_iou,
    }


def log_results(model: Any, metrics: dict[str, Any], digest: str) -> None:
    """Final metrics, the history CSV, the model file's hash and the model itself (Keras flavor) to the stage's run."""
    log_metrics({key: float(value) for key, value in metrics.items()})
    log_artifact(str(HISTORY_FILE))
    set_tag("model_sha256", digest)
    log_keras_model(model, name="model", signature=signature, pip_requirements=pip_requirements())


def load_data(folder: Path) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """spec.json plus the train and val splits, with their labels checked against the spec."""
    spec = load_spec(folder)
    missing = [key for key in ("num_classes", "normalization") if key not in spec]
    if missing:
        raise PipelineError(f"{folder / 'spec.json'}: missing key '{missing[0]}'")
    splits = []
    for split in ("train", "val"):
        images, masks, _ = load_split(folder, split)
        if len(images) == 0:
            raise PipelineError(f"{folder / split}.npz: no images")
        check_masks(masks, spec["num_classes"], spec.get("ignore_index"), f"{folder / split}.npz")
        splits.append((images, masks))
    return spec, splits[0], splits[1]


def train(params: TrainParams, processed: Path = PROCESSED_DIR, models: Path = MODELS_DIR) -> dict[str, Any]:
    """Run the whole stage; returns the metrics written to reports/train_metrics.json."""
    import keras
    import tensorflow as tf

    spec, (x_train, y_train), (x_val, y_val) = load_data(processed)
    num_classes, ignore_index, norm = spec["num_classes"], spec.get("ignore_index"), spec["normalization"]
    if params.class_weights is not None and len(params.class_weights) != num_classes:
        raise PipelineError(
            f"params.yaml: train.class_weights has {len(params.class_weights)} values "
            f"but {processed / 'spec.json'} has {num_classes} classes"
        )
    keras.utils.set_random_seed(params.seed)
    tf.config.experimental.enable_op_determinism()
    weights = (
        None if params.class_weights is None else pixel_weight_table(params.class_weights, num_classes, ignore_index)
    )
    train_ds = make_dataset(x_train, y_train, norm, params.batch_size, weights, params.augment_flips, params.seed)
    val_ds = make_dataset(x_val, y_val, norm, params.batch_size)
    with atomic_dir(models) as out, stage_run("train", params, out / "train_run.json"):
        model = build_model(params, x_train.shape[1:], num_classes, ignore_index)
        start = time.perf_counter()
        history = fit(model, train_ds, val_ds, params)
        seconds = time.perf_counter() - start
        check_finite(history, params.learning_rate)
        model.save(out / MODEL_FILE)
        metrics = summarize(history, seconds, len(x_train), params.epochs)
        digest = sha256(out / MODEL_FILE)
        val_iou = validation_iou(model, val_ds, num_classes, ignore_index)
        labels = label_evidence(y_train, y_val, val_iou, num_classes, ignore_index)
        train_meta(spec, params, metrics, input_stats(x_train, norm), digest, labels).write(out / META_FILE)
        write_json(METRICS_FILE, metrics)
        write_history(HISTORY_FILE, history)
        log_results(model, metrics, digest)
    return metrics


def main() -> None:
    params = load_section("train", TrainParams)
    metrics = train(params)
    print(
        f"train: best val mean IoU {metrics['best_val_mean_iou']:.4f} at epoch {metrics['best_epoch']}, "
        f"{metrics['train_seconds']:.0f} s ({metrics['images_per_second']:.1f} images/s)"
    )


if __name__ == "__main__":
    run_stage(main)

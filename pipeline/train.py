"""Train stage: DeepLabV3+ on data/processed -> models/ (logits model + metadata), history and metrics reports."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import accelerate
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, atomic_file, file_sha256, write_json
from pipeline.params import load_section
from pipeline.processed import SPEC_FILE, Spec
from pipeline.resume import Backup, Progress, backup_callback, backup_key, claimed
from pipeline.tracking import TRACKING_SWITCH, log_artifact, log_keras_model, log_metrics, set_tag, stage_run
from pipeline.train_data import Batching, pixel_weight_table, read_labels, training_batches, validation_batches
from pipeline.train_meta import FILE as META_FILE
from pipeline.train_meta import TrainMeta, confusion_matrix, iou_per_class

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
    mixed_precision: accelerate.Precision = "none"
    distribute: accelerate.Distribute = "none"
    jit_compile: bool = False
    shuffle_buffer: int = 1024
    loss: Literal["crossentropy", "dice", "crossentropy+dice"] = "crossentropy"
    dice_smooth: float = 1.0

    def validate(self) -> None:
        """Reject values that would crash deep inside Keras or silently train nothing."""
        if not 0 < self.alpha <= 4:
            raise ValueError(f"alpha must be in (0, 4], got {self.alpha}")
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {self.output_stride}")
        for name in (
            "aspp_filters",
            "decoder_filters",
            "epochs",
            "batch_size",
            "early_stopping_patience",
            "shuffle_buffer",
        ):
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
        if self.loss not in ("crossentropy", "dice", "crossentropy+dice"):
            raise ValueError(f"loss must be crossentropy, dice or crossentropy+dice, got {self.loss!r}")
        if not (math.isfinite(self.dice_smooth) and self.dice_smooth >= 0):
            raise ValueError(f"dice_smooth must be a non-negative number, got {self.dice_smooth}")


def build_model(
    params: TrainParams, input_shape: tuple[int, int, int], num_classes: int, ignore_index: int | None
) -> Any:
    """DeepLabV3+ compiled with a logits loss that skips ignore pixels, and val mean IoU over argmax; build it inside
    the strategy's scope.

    Under a half-precision policy the layers compute in float16 or bfloat16 while the logits, the softmax inside the
    loss and the loss stay float32; under float16 compile wraps the optimizer in a loss-scale optimizer.
    """
    import keras
    import tensorflow as tf

    from pipeline.label_metrics import ForegroundShare, foreground_iou
    from pipeline.losses import segmentation_loss
    from pipeline.model import build_deeplabv3plus

    with accelerate.dtype_policy(params.mixed_precision):
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
    optimizer = (
        keras.optimizers.Adam(params.learning_rate)
        if params.optimizer == "adam"
        else keras.optimizers.SGD(params.learning_rate, momentum=0.9)
    )
    model.compile(
        optimizer=optimizer,
        loss=segmentation_loss(params.loss, num_classes, ignore_index, params.dice_smooth),
        metrics=[
            keras.metrics.MeanIoU(num_classes, name="mean_iou", ignore_class=ignore_index, sparse_y_pred=False),
            ForegroundShare(num_classes, ignore_index),
            foreground_iou(num_classes, ignore_index),
        ],
        **accelerate.compile_options(params.jit_compile, params.mixed_precision, tf.distribute.get_strategy()),
    )
    # Built here, not on fit's first step: an optimizer that creates its variables while the training step is traced
    # makes TensorFlow trace that step twice (12 s of each casebook training on 2 cores; the same weights result).
    model.optimizer.build(model.trainable_variables)
    return model


def fit(model: Any, data: TrainingData, params: TrainParams, backup: Backup, progress: Progress) -> None:
    """Fit with early stopping on val mean IoU (best weights restored) and NaN termination; per-epoch MLflow metrics.

    Resumes where `progress` (the backup's) stands, and backs up each epoch it finishes into `progress` and the
    backup. A backup whose early stopping had already ended the training runs no epoch: fit only restores it.
    """
    import keras

    start = time.perf_counter() - progress.seconds
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=MONITOR, mode="max", patience=params.early_stopping_patience, restore_best_weights=True, verbose=1
    )
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        early_stopping,
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: log_metrics(_floats(logs), step=epoch + 1)),
        backup_callback(backup, early_stopping, progress, lambda: time.perf_counter() - start),
    ]
    if progress.epochs_done:
        print(f"train: resuming after epoch {progress.epochs_done} from {backup.folder}")
    model.fit(
        data.train,
        validation_data=data.val,
        epochs=progress.epochs_done if progress.early_stopping.get("stopped_epoch") else params.epochs,
        initial_epoch=progress.epochs_done,
        steps_per_epoch=data.steps,
        callbacks=callbacks,
        shuffle=False,
        verbose=2,
    )


def validation_iou(model: Any, val_ds: Any, num_classes: int, ignore_index: int | None) -> list[float | None]:
    """Per-class IoU of the model's argmax on the validation split, from one confusion matrix (numpy).

    Run after fit, on the restored best weights: the per-class view of the best epoch's val mIoU. Keras' mean IoU
    averages only the classes present, so a validation split without foreground scores 1.0 on background alone;
    the foreground class's own IoU says whether the model found foreground. The model is called directly, on this
    process's copy of the weights: under a multi-worker strategy `predict` would spread each batch over the cluster.
    """
    cm = np.zeros((num_classes, num_classes), np.int64)
    for x, y in val_ds:
        pred = np.asarray(model(x, training=False)).argmax(axis=-1)
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
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
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
    spec: Spec,
    params: TrainParams,
    metrics: dict[str, Any],
    stats: dict[str, Any],
    digest: str,
    labels: dict[str, Any] | None = None,
) -> TrainMeta:
    """What evaluate needs to use the model and to diagnose a train/eval mismatch.

    labels: what training saw and made of it (see `label_evidence`).
    """
    return TrainMeta(
        from_logits=True,
        num_classes=spec.num_classes,
        ignore_index=spec.ignore_index,
        normalization=spec.normalization,
        input_stats=stats,
        class_weights=params.class_weights,
        epochs_run=metrics["epochs_run"],
        best_val_mean_iou=metrics["best_val_mean_iou"],
        model_sha256=digest,
        **(labels or {}),
    )


def label_evidence(history: dict[str, list[float]], val_iou: list[float | None], params: TrainParams) -> dict[str, Any]:
    """What the model saw and made of it, from the metrics fit logged over the batches it consumed (see
    label_metrics), never from a separate pass over the files: the training labels' foreground share (the mean
    over epochs), the validation labels' (the last epoch's), each epoch's foreground IoU on the training batches
    (BatchNorm in training mode) and on validation (inference mode), the lowest training loss, which loss it was and
    the epochs it was given; and the restored best epoch's per-class val IoU.
    """
    return {
        "train_foreground_share": float(np.mean(history["foreground_share"])),
        "val_foreground_share": history["val_foreground_share"][-1],
        "val_iou_per_class": val_iou,
        "train_foreground_iou": history["foreground_iou"],
        "val_foreground_iou": history["val_foreground_iou"],
        "epochs": params.epochs,
        "min_loss": min(history["loss"]),
        "loss": params.loss,
    }


def log_results(model: Any, metrics: dict[str, Any], digest: str) -> None:
    """Final metrics, the history CSV, the model file's hash and the model itself (Keras flavor) to the stage's run."""
    log_metrics({key: float(value) for key, value in metrics.items()})
    log_artifact(str(HISTORY_FILE))
    set_tag("model_sha256", digest)
    log_keras_model(model, name="model", signature=signature, pip_requirements=pip_requirements())


@dataclass(frozen=True)
class TrainingData:
    """The streams fit consumes: the remaining epochs' training batches, and the validation batches."""

    train: Any
    val: Any
    steps: int


def read_spec(processed: Path, params: TrainParams) -> Spec:
    """The processed data's spec, checked against the train params and for splits train can use."""
    spec = Spec.load(processed)
    for split in ("train", "val"):
        if spec.splits[split].images == 0:
            raise PipelineError(f"{processed / SPEC_FILE}: the {split} split has no images")
    if params.class_weights is not None and len(params.class_weights) != spec.num_classes:
        raise PipelineError(
            f"params.yaml: train.class_weights has {len(params.class_weights)} values "
            f"but {processed / SPEC_FILE} has {spec.num_classes} classes"
        )
    return spec


def training_data(spec: Spec, processed: Path, params: TrainParams, batch_size: int, first_epoch: int) -> TrainingData:
    weights = (
        None
        if params.class_weights is None
        else pixel_weight_table(params.class_weights, spec.num_classes, spec.ignore_index)
    )
    batching = Batching(batch_size, params.shuffle_buffer, params.augment_flips, params.seed)
    return TrainingData(
        train=training_batches(spec, processed, batching, range(first_epoch, params.epochs), weights),
        val=validation_batches(spec, processed, batch_size),
        steps=math.ceil(spec.splits["train"].images / batch_size),
    )


@contextmanager
def output_dir(models: Path, chief: bool) -> Iterator[Path]:
    """The chief writes the stage's outputs; another worker of a multi-worker run writes a throwaway copy."""
    if chief:
        with atomic_dir(models) as out:
            yield out
    else:
        with tempfile.TemporaryDirectory(prefix="train-worker-") as scratch:
            yield Path(scratch)


def compile_for_saving(model: Any, params: TrainParams, num_classes: int, ignore_index: int | None) -> None:
    """Recompile the trained model with what Keras alone can load (its loss, its mean IoU, the trained optimizer and
    its state): the label metrics of `label_metrics` only feed fit's logs, and a model.keras naming them would not
    load where this package is not imported (MLflow's Keras flavor, a user's `keras.models.load_model`).
    """
    import keras
    import tensorflow as tf

    model.compile(
        optimizer=model.optimizer,
        loss=model.loss,
        metrics=[keras.metrics.MeanIoU(num_classes, name="mean_iou", ignore_class=ignore_index, sparse_y_pred=False)],
        **accelerate.compile_options(params.jit_compile, params.mixed_precision, tf.distribute.get_strategy()),
    )


def train(params: TrainParams, processed: Path = PROCESSED_DIR, models: Path = MODELS_DIR) -> dict[str, Any]:
    """Run the whole stage; returns the metrics written to reports/train_metrics.json."""
    import keras
    import tensorflow as tf

    strategy = accelerate.make_strategy(params.distribute)
    chief = accelerate.is_chief(strategy)
    if not chief:
        os.environ[TRACKING_SWITCH] = "off"
    spec = read_spec(processed, params)
    train_labels = read_labels(spec, processed, "train")
    read_labels(spec, processed, "val")  # checks every validation mask value before training starts
    keras.utils.set_random_seed(params.seed)
    if not params.jit_compile:
        tf.config.experimental.enable_op_determinism()
    batch_size = accelerate.global_batch_size(params.batch_size, strategy)
    key = backup_key(dataclasses.asdict(params), processed / SPEC_FILE)
    with (
        claimed(key) as backup,
        backup.until_outcome(),
        output_dir(models, chief) as out,
        stage_run("train", params, out / "train_run.json"),
    ):
        progress = backup.progress()
        data = training_data(spec, processed, params, batch_size, progress.epochs_done)
        with strategy.scope():
            model = build_model(params, (spec.image_size, spec.image_size, 3), spec.num_classes, spec.ignore_index)
        fit(model, data, params, backup, progress)
        check_finite(progress.history, params.learning_rate)
        with strategy.scope():
            compile_for_saving(model, params, spec.num_classes, spec.ignore_index)
        model.save(out / MODEL_FILE)
        metrics = summarize(progress.history, progress.seconds, spec.splits["train"].images, params.epochs)
        digest = file_sha256(out / MODEL_FILE)
        val_iou = validation_iou(model, data.val, spec.num_classes, spec.ignore_index)
        labels = label_evidence(progress.history, val_iou, params)
        train_meta(spec, params, metrics, train_labels.inputs.result(), digest, labels).write(out / META_FILE)
        if chief:
            write_json(METRICS_FILE, metrics)
            write_history(HISTORY_FILE, progress.history)
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

"""Evaluate stage: predict the test split, post-process, and write metrics, diagnostics and figures.

Besides the usual metrics it records the evidence that separates the causes of all-zero predictions
(raw output range and kind, the raw outputs' own argmax, label values, input statistics next to the
training ones) and lets pipeline.diagnostics name the likely cause.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import diagnostics, figures, metrics, normalization
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, write_json
from pipeline.params import PARAMS_FILE, load_section
from pipeline.processed import SPEC_FILE, Spec, batches
from pipeline.stats import ChannelStats
from pipeline.tracking import log_artifact, log_artifacts, log_metrics, set_tags, stage_run
from pipeline.train_meta import FILE as META_NAME
from pipeline.train_meta import TrainMeta

DATA_DIR = Path("data/processed")
MODEL_FILE = Path("models/model.keras")
META_FILE = Path("models") / META_NAME
METRICS_FILE = Path("reports/metrics.json")
EVAL_DIR = Path("reports/evaluate")
FIGURES_DIR = Path("reports/figures")
PROBABILITY_TOLERANCE = 1e-3
BACKGROUND = 0


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    postprocess: Literal["argmax", "threshold"] = "argmax"
    threshold: float = 0.5
    batch_size: int = 8
    n_overlays: int = 4
    overlay_names: list[str] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in (0, 1], got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.n_overlays < 0:
            raise ValueError(f"n_overlays must be 0 or more, got {self.n_overlays}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the class axis (-1)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def postprocess(outputs: np.ndarray, params: EvaluateParams) -> np.ndarray:
    """Class ids (N, H, W) from logits (N, H, W, C) as params say.

    threshold: the best non-background class where its softmax probability reaches the threshold,
    background elsewhere (trades recall for precision on rare foreground).
    """
    if params.postprocess == "argmax":
        return outputs.argmax(axis=-1)
    foreground = softmax(outputs)[..., BACKGROUND + 1 :]
    if foreground.shape[-1] == 0:
        return np.zeros(outputs.shape[:-1], np.int64)
    best = foreground.argmax(axis=-1)
    return np.where(foreground.max(axis=-1) >= params.threshold, best + BACKGROUND + 1, BACKGROUND)


class OutputStats:
    """Streaming range of the raw outputs and whether they behave like probabilities."""

    def __init__(self) -> None:
        self.low = np.inf
        self.high = -np.inf
        self.total = 0.0
        self.count = 0
        self.worst_sum_error = 0.0
        self.saturated_raw = 0
        self.saturated_softmax = 0
        self.pixels = 0
        self.zeros = 0
        self.fractional = 0
        self.max_foreground_probability = 0.0

    def update(self, outputs: np.ndarray) -> None:
        self.low = min(self.low, float(outputs.min()))
        self.high = max(self.high, float(outputs.max()))
        self.total += float(outputs.sum(dtype=np.float64))
        self.count += outputs.size
        self.zeros += int(np.count_nonzero(outputs == 0.0))
        self.fractional += int(np.count_nonzero(outputs != np.round(outputs)))
        self.worst_sum_error = max(self.worst_sum_error, float(np.abs(outputs.sum(axis=-1) - 1.0).max()))
        self.pixels += outputs.size // outputs.shape[-1]
        self.saturated_raw += int((outputs.max(axis=-1) >= diagnostics.SATURATED).sum())
        probabilities = softmax(outputs)
        self.saturated_softmax += int((probabilities.max(axis=-1) >= diagnostics.SATURATED).sum())
        if outputs.shape[-1] > 1:
            top = float(probabilities[..., BACKGROUND + 1 :].max())
            self.max_foreground_probability = max(self.max_foreground_probability, top)

    @property
    def bounded(self) -> bool:
        return self.low >= -PROBABILITY_TOLERANCE and self.high <= 1.0 + PROBABILITY_TOLERANCE

    @property
    def probabilities(self) -> bool:
        return self.bounded and self.worst_sum_error <= PROBABILITY_TOLERANCE

    @property
    def saturated_fraction(self) -> float:
        """Share of pixels with a class probability >= SATURATED.

        Of the raw outputs if they are probabilities, else of their softmax.
        """
        return (self.saturated_raw if self.probabilities else self.saturated_softmax) / self.pixels

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.count

    @property
    def fractional_fraction(self) -> float:
        return self.fractional / self.count


@dataclasses.dataclass(frozen=True)
class Overlay:
    stem: str
    image: np.ndarray
    mask: np.ndarray
    pred: np.ndarray


class OverlayPicker:
    """Keeps, of the whole stream, only the test images the overlays draw: the named ones, else the first n by name.

    Chosen by name, never by what the labels or predictions hold, so every configuration of the pipeline draws the
    same test images and two runs can be compared picture by picture.
    """

    def __init__(self, names: list[str], n: int) -> None:
        self.names, self.n = names, n
        self.kept: dict[str, Overlay] = {}

    def offer(self, stems: list[str], images: np.ndarray, masks: np.ndarray, preds: np.ndarray) -> None:
        for i, stem in enumerate(stems):
            if self._wanted(stem):
                self.kept[stem] = Overlay(stem, images[i], masks[i], preds[i].astype(np.uint8))
                if not self.names and len(self.kept) > self.n:
                    del self.kept[max(self.kept)]

    def _wanted(self, stem: str) -> bool:
        if self.names:
            return stem in self.names
        return self.n > 0 and (len(self.kept) < self.n or stem < max(self.kept))

    def picks(self) -> list[Overlay]:
        missing = [name for name in self.names if name not in self.kept]
        if missing:
            raise PipelineError(f"{PARAMS_FILE}: evaluate.overlay_names: '{missing[0]}' is not a test image")
        order = self.names or sorted(self.kept)
        return [self.kept[stem] for stem in order]


@dataclasses.dataclass
class Prediction:
    """Everything one pass over the test split yields."""

    model_classes: int
    cm: np.ndarray
    reference_cm: np.ndarray
    label_counts: np.ndarray
    inputs: ChannelStats
    outputs: OutputStats
    overlays: OverlayPicker


def predict_split(model: Any, spec: Spec, folder: Path, params: EvaluateParams) -> Prediction:
    """Predict the streamed test split in batches, accumulating confusion matrices and statistics, keeping only the
    overlays' images."""
    check_input_shape(model, (None, spec.image_size, spec.image_size, 3))
    outputs_per_pixel = model_classes(model)
    num_labels = max(spec.num_classes, outputs_per_pixel)
    result = Prediction(
        model_classes=outputs_per_pixel,
        cm=np.zeros((num_labels, num_labels), np.int64),
        reference_cm=np.zeros((num_labels, num_labels), np.int64),
        label_counts=np.zeros(256, np.int64),
        inputs=ChannelStats(),
        outputs=OutputStats(),
        overlays=OverlayPicker(params.overlay_names, params.n_overlays),
    )
    for stems, images, masks in batches(spec, folder, "test", params.batch_size):
        x = np.asarray(normalization.apply(images, spec.normalization))
        result.inputs.update(x)
        outputs = np.asarray(model.predict_on_batch(x), np.float32)
        check_output_shape(outputs, masks.shape)
        result.outputs.update(outputs)
        pred = postprocess(outputs, params)
        result.overlays.offer(stems, images, masks, pred)
        result.label_counts += np.bincount(masks.ravel(), minlength=256)
        result.cm += metrics.confusion_matrix(masks, pred, num_labels, spec.ignore_index)
        result.reference_cm += metrics.confusion_matrix(masks, outputs.argmax(axis=-1), num_labels, spec.ignore_index)
    return result


def check_input_shape(model: Any, image_shape: tuple[int | None, ...]) -> None:
    expected = model.input_shape
    if not isinstance(expected, tuple) or len(expected) != 4:
        raise PipelineError(f"{MODEL_FILE}: expected one image input (N, H, W, 3), got {expected}")
    if any(e is not None and e != a for e, a in zip(expected[1:], image_shape[1:])):
        raise PipelineError(f"{MODEL_FILE}: model input {expected} does not fit the test images {tuple(image_shape)}")


def model_classes(model: Any) -> int:
    shape = model.output_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] is None:
        raise PipelineError(f"{MODEL_FILE}: expected one output of shape (N, H, W, classes), got {shape}")
    return int(shape[-1])


def check_output_shape(outputs: np.ndarray, mask_shape: tuple[int, ...]) -> None:
    if outputs.ndim != 4 or outputs.shape[:3] != tuple(mask_shape):
        raise PipelineError(
            f"{MODEL_FILE}: output shape {outputs.shape} does not match the test masks {tuple(mask_shape)}"
        )


def read_spec(folder: Path) -> Spec:
    """The processed data's spec, with a test split to evaluate on."""
    spec = Spec.load(folder)
    if spec.splits["test"].images == 0:
        raise PipelineError(f"{folder / SPEC_FILE}: the test split is empty")
    return spec


def load_model(path: Path) -> Any:
    if not path.exists():
        raise PipelineError(f"{path}: not found (run the train stage first)")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad file; all mean the same to the user
        raise PipelineError(
            f"{path}: cannot load the model ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None


def class_names(spec: Spec, num_labels: int) -> list[str]:
    names = [str(n) for n in spec.class_names]
    return names + [f"class_{i}" for i in range(len(names), num_labels)]


def build_metrics(pred: Prediction, names: list[str]) -> dict[str, Any]:
    result = metrics.summarize(pred.cm, names)
    result.update(
        reference_foreground_fraction=metrics.foreground_fraction(pred.reference_cm),
        output_min=pred.outputs.low,
        output_max=pred.outputs.high,
        output_mean=pred.outputs.total / pred.outputs.count,
        outputs_are_probabilities=int(pred.outputs.probabilities),
    )
    return result


def build_evidence(
    pred: Prediction,
    scores: dict[str, Any],
    spec: Spec,
    meta: TrainMeta,
    params: EvaluateParams,
) -> diagnostics.Evidence:
    test = spec.splits["test"]
    return diagnostics.Evidence(
        num_classes=spec.num_classes,
        model_classes=pred.model_classes,
        ignore_index=spec.ignore_index,
        foreground_fraction=scores["foreground_fraction"],
        reference_foreground_fraction=scores["reference_foreground_fraction"],
        true_foreground_fraction=scores["true_foreground_fraction"],
        label_counts={int(v): int(pred.label_counts[v]) for v in np.flatnonzero(pred.label_counts)},
        output_min=pred.outputs.low,
        output_max=pred.outputs.high,
        output_mean=scores["output_mean"],
        outputs_are_probabilities=pred.outputs.probabilities,
        outputs_bounded=pred.outputs.bounded,
        saturated_fraction=pred.outputs.saturated_fraction,
        zero_output_fraction=pred.outputs.zero_fraction,
        fractional_output_fraction=pred.outputs.fractional_fraction,
        postprocess=params.postprocess,
        threshold=params.threshold,
        max_foreground_probability=pred.outputs.max_foreground_probability,
        eval_normalization=spec.normalization,
        eval_input_stats=pred.inputs.result(),
        raw_foreground_fraction=test.raw_foreground_share,
        prepared_foreground_fraction=test.prepared_foreground_share,
        **training_evidence(meta),
    )


def training_evidence(meta: TrainMeta) -> dict[str, Any]:
    """The train_meta fields the diagnostics use (None where the record was malformed: unknown, never a crash)."""
    return {
        "from_logits": meta.from_logits,
        "best_val_mean_iou": meta.best_val_mean_iou,
        "class_weights": meta.class_weights,
        "train_normalization": meta.normalization,
        "train_input_stats": meta.input_stats,
        "train_foreground_share": meta.train_foreground_share,
        "val_foreground_share": meta.val_foreground_share,
        "val_iou_per_class": meta.val_iou_per_class,
        "train_foreground_ious": meta.train_foreground_iou,
        "val_foreground_ious": meta.val_foreground_iou,
        "epochs_run": meta.epochs_run,
        "max_epochs": meta.epochs,
        "min_loss": meta.min_loss,
        "loss": meta.loss,
    }


def flat_metrics(scores: dict[str, Any]) -> dict[str, float]:
    """MLflow wants flat numeric keys.

    per_class_iou.foreground -> iou_foreground, matrix cells -> confusion_matrix_i_j; an undefined (null) metric
    and the lists of names (`absent_class_names`, in metrics.json) are left out.
    """
    prefixes = {
        "per_class_iou": "iou",
        "predicted_class_histogram": "predicted_fraction",
        "true_class_histogram": "true_fraction",
    }
    flat: dict[str, float] = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            flat.update({f"{prefixes.get(key, key)}_{_metric_name(k)}": float(v) for k, v in value.items()})
        elif isinstance(value, list) and all(isinstance(row, list) for row in value):
            flat.update({f"{key}_{i}_{j}": float(v) for i, row in enumerate(value) for j, v in enumerate(row)})
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def _metric_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)


def write_figures(
    folder: Path, pred: Prediction, overlays: list[Overlay], names: list[str], ignore_index: int | None
) -> None:
    """The confusion matrix, the predicted and true class shares, and one overlay per picked test image
    (`overlays/<name>.png`), which a bisection report sets side by side for GOOD, BAD and the culprit.
    """
    figures.plot_confusion_matrix(pred.cm, names, folder / "confusion_matrix.png")
    figures.plot_class_shares(pred.cm, names, folder / "class_shares.png")
    if overlays:
        (folder / "overlays").mkdir()
    for overlay in overlays:
        figures.plot_overlay(
            overlay.image,
            overlay.mask,
            overlay.pred,
            overlay.stem,
            len(names),
            ignore_index,
            folder / "overlays" / f"{overlay.stem}.png",
        )


def main() -> None:
    params = load_section("evaluate", EvaluateParams)
    spec = read_spec(DATA_DIR)
    meta = TrainMeta.read(META_FILE)
    model = load_model(MODEL_FILE)
    pred = predict_split(model, spec, DATA_DIR, params)
    if pred.cm.sum() == 0:
        raise PipelineError(f"{DATA_DIR / SPEC_FILE}: no test pixel has a class id (all are ignore or out of range)")
    overlays = pred.overlays.picks()
    names = class_names(spec, pred.cm.shape[0])
    scores = build_metrics(pred, names)
    record = diagnostics.diagnose(build_evidence(pred, scores, spec, meta, params))
    scores["all_zero_threshold"] = record["all_zero_threshold"]
    scores["all_zero_symptom"] = int(record["symptom"])
    print(
        f"mean_iou {scores['mean_iou']:.4f}  foreground_fraction {scores['foreground_fraction']:.4f}  "
        f"diagnosis {record['category']}/{record['cause']}"
    )
    with (
        atomic_dir(EVAL_DIR) as eval_dir,
        atomic_dir(FIGURES_DIR) as fig_dir,
        stage_run("evaluate", params, eval_dir / "evaluate_run.json"),
    ):
        write_json(eval_dir / "diagnostics.json", record)
        write_figures(fig_dir, pred, overlays, names, spec.ignore_index)
        log_metrics(flat_metrics(scores))
        set_tags(
            {
                "diagnosis": record["category"],
                "diagnosis.cause": record["cause"],
                "model_sha256": meta.model_sha256 or "unknown",
            }
        )
        log_artifact(str(eval_dir / "diagnostics.json"), "evaluate")
        log_artifacts(str(fig_dir), "figures")
        write_json(METRICS_FILE, scores)


if __name__ == "__main__":
    run_stage(main)

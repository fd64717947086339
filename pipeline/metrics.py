"""Segmentation metrics from a confusion matrix: pure numpy, so tests and other tools need no TensorFlow.

Everything is derived from one confusion matrix (rows = true class, columns = predicted class), which
can be accumulated batch by batch and summed, so the metrics of a large test set need no full copy.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(
    true: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predicted classes.

    Pixels whose label is `ignore_index` are excluded. Labels outside [0, num_classes) are excluded
    too (the diagnostics count and report them); a prediction outside that range is a bug and raises.
    """
    true = np.asarray(true).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in size: {true.size} vs {pred.size}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class ids must lie in [0, {num_classes}), got {pred.min()}..{pred.max()}")
    keep = (true >= 0) & (true < num_classes)
    if ignore_index is not None:
        keep &= true != ignore_index
    flat = true[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN where the class is absent from truth and prediction (0/0)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over classes present in truth or prediction.

    A class absent from both has an undefined IoU; counting it as 0 would punish a test set for lacking
    a class, counting it as 1 would reward it. A class that is only predicted (a false alarm) does count,
    with IoU 0. With no valid pixels at all the result is NaN.
    """
    ious = iou_per_class(cm)
    defined = ious[~np.isnan(ious)]
    return float(defined.mean()) if defined.size else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of valid pixels predicted correctly (NaN with no valid pixels)."""
    total = np.asarray(cm).sum()
    return float(np.trace(cm) / total) if total else float("nan")


def true_histogram(cm: np.ndarray) -> np.ndarray:
    """Share of valid pixels per true class."""
    return _shares(np.asarray(cm).sum(axis=1))


def predicted_histogram(cm: np.ndarray) -> np.ndarray:
    """Share of valid pixels per predicted class."""
    return _shares(np.asarray(cm).sum(axis=0))


def foreground_fraction(cm: np.ndarray, background: int = 0) -> float:
    """Share of valid pixels predicted as any class but background: 0 is the all-zero symptom."""
    shares = predicted_histogram(cm)
    return float(shares.sum() - shares[background])


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def summarize(cm: np.ndarray, class_names: list[str]) -> dict[str, object]:
    """The metrics.json view of a confusion matrix; classes with an undefined IoU are left out of per_class_iou."""
    ious = iou_per_class(cm)
    true_hist = true_histogram(cm)
    return {
        "mean_iou": mean_iou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
        "foreground_fraction": foreground_fraction(cm),
        "true_foreground_fraction": float(true_hist[1:].sum()),
        "per_class_iou": {name: float(v) for name, v in zip(class_names, ious) if not np.isnan(v)},
        "predicted_class_histogram": {name: float(v) for name, v in zip(class_names, predicted_histogram(cm))},
        "true_class_histogram": {name: float(v) for name, v in zip(class_names, true_hist)},
        "confusion_matrix": [[int(v) for v in row] for row in np.asarray(cm)],
    }

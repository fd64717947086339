"""Segmentation metrics from a confusion matrix: pure numpy, so tests and other tools need no TensorFlow.

Everything is derived from one confusion matrix (rows = true class, columns = predicted class), which
can be accumulated batch by batch and summed, so the metrics of a large test set need no full copy.
The matrix has a row and a column for every declared class, so a class the test labels lack still counts in
every mean (see `mean_iou`), and `absent_classes` names it.
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


def absent_classes(cm: np.ndarray) -> np.ndarray:
    """Ids of the classes with no pixel in the test labels (a row of zeros)."""
    return np.flatnonzero(np.asarray(cm).sum(axis=1) == 0)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over every class of the matrix, the declared ones; a class absent from the test labels counts 0.

    Averaging only the classes present would score a test set whose labels lost a class (foreground mapped to the
    ignore index, say) 1.0 for predicting the rest, the best score of all. A class the labels lack cannot show that
    the model segments it, so it scores 0: its IoU is 0 already when it is predicted (false alarms only) and
    undefined (0/0) when it is not. `absent_classes` names them. With no valid pixels at all every class is absent,
    and the mean is 0: a number in metrics.json, never NaN.
    """
    return float(np.nan_to_num(iou_per_class(cm), nan=0.0).mean())


def class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per class, the share of its labelled pixels predicted as it (recall); NaN for a class absent from the labels."""
    cm = np.asarray(cm, dtype=np.float64)
    labelled = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(labelled > 0, np.diag(cm) / np.where(labelled > 0, labelled, 1.0), np.nan)


def mean_accuracy(cm: np.ndarray) -> float:
    """Mean over the declared classes of `class_accuracy`, a class absent from the test labels counting 0.

    Unlike pixel accuracy it weighs every class alike: a model that predicts background everywhere scores
    1 / num_classes, however rare the foreground. 0 with no valid pixels (every class absent).
    """
    return float(np.nan_to_num(class_accuracy(cm), nan=0.0).mean())


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of valid pixels predicted correctly; NaN when a class is absent from the test labels (or none is valid).

    Pooled over pixels it cannot see a class the labels lack: such a test set would score 1.0 for predicting the
    rest, so it is left undefined rather than reported as the best score.
    """
    total = np.asarray(cm).sum()
    if not total or absent_classes(cm).size:
        return float("nan")
    return float(np.trace(cm) / total)


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
    """The metrics.json view of a confusion matrix, one entry per class of the matrix in every per-class table.

    `per_class_iou` holds what `mean_iou` averages (0 for a class absent from the test labels), `absent_classes`
    counts those classes and `absent_class_names` names them; an undefined `pixel_accuracy` is null.
    """
    ious = np.nan_to_num(iou_per_class(cm), nan=0.0)
    true_hist = true_histogram(cm)
    absent = absent_classes(cm)
    return {
        "mean_iou": mean_iou(cm),
        "pixel_accuracy": _defined(pixel_accuracy(cm)),
        "mean_accuracy": mean_accuracy(cm),
        "absent_classes": int(absent.size),
        "absent_class_names": [class_names[i] for i in absent],
        "foreground_fraction": foreground_fraction(cm),
        "true_foreground_fraction": float(true_hist[1:].sum()),
        "per_class_iou": {name: float(v) for name, v in zip(class_names, ious)},
        "predicted_class_histogram": {name: float(v) for name, v in zip(class_names, predicted_histogram(cm))},
        "true_class_histogram": {name: float(v) for name, v in zip(class_names, true_hist)},
        "confusion_matrix": [[int(v) for v in row] for row in np.asarray(cm)],
    }


def _defined(value: float) -> float | None:
    """NaN as JSON's null: metrics.json stays valid JSON, and a null metric is not logged."""
    return None if np.isnan(value) else value

"""Evaluation plots written with matplotlib's Agg backend, so they render on headless machines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

IGNORE_COLOR = (0.55, 0.55, 0.55)


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalized (recall) colours with raw counts written in: an all-zero model shows one lit column."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    size = 3.5 + 0.8 * len(class_names)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            f"{count}\n{shares[i, j]:.1%}",
            ha="center",
            va="center",
            color="white" if shares[i, j] > 0.5 else "black",
            fontsize=8,
        )
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalized)", fontsize=10)
    _save(fig, path)


def plot_overlay(
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    title: str,
    num_classes: int,
    ignore_index: int | None,
    path: Path,
) -> None:
    """image | truth | prediction, classes in fixed colours, ignore pixels grey."""
    cmap = _class_cmap(num_classes)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.7))
    panels = (
        (image, f"{title}: image", None),
        (_label_view(truth, num_classes, ignore_index), "truth", cmap),
        (_label_view(pred, num_classes, ignore_index), "prediction", cmap),
    )
    for ax, (data, label, colors) in zip(axes, panels):
        if colors is None:
            ax.imshow(data)
        else:
            ax.imshow(data, cmap=colors, vmin=0, vmax=num_classes, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    _save(fig, path)


def plot_class_shares(cm: np.ndarray, class_names: list[str], path: Path) -> None:
    """Predicted next to true share of the test pixels per class: all-zero predictions leave one bar."""
    cm = np.asarray(cm, np.float64)
    total = max(cm.sum(), 1.0)
    true, predicted = cm.sum(axis=1) / total, cm.sum(axis=0) / total
    ticks = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(3.0 + 0.6 * len(class_names), 3.0))
    ax.bar(ticks - 0.2, true, width=0.4, label="true", color="0.6")
    ax.bar(ticks + 0.2, predicted, width=0.4, label="predicted", color="tab:blue")
    for x, share in zip(ticks + 0.2, predicted):
        ax.text(x, share, f"{share:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of test pixels")
    ax.set_title("predicted vs true class shares", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def _class_cmap(num_classes: int) -> ListedColormap:
    """Class i gets colour i (background black); index num_classes is the ignore colour."""
    palette = [(0.0, 0.0, 0.0)] + [plt.get_cmap("tab10")(i % 10)[:3] for i in range(1, num_classes)]
    return ListedColormap([*palette, IGNORE_COLOR])


def _label_view(labels: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Map ignore and out-of-range ids to the ignore colour slot."""
    view = labels.astype(np.int64)
    bad = view >= num_classes
    if ignore_index is not None:
        bad |= view == ignore_index
    return np.where(bad, num_classes, view)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

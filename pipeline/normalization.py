"""Input normalization named by the preprocessing spec; training and evaluation both apply it from here."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Method = Literal["unit", "standardize", "none"]
METHODS: tuple[str, ...] = ("unit", "standardize", "none")


def fit_stats(images: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], computed on the training split."""
    scaled = images.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 1, 2))
    std = scaled.std(axis=(0, 1, 2))
    return {"mean": [float(m) for m in mean], "std": [float(max(s, 1e-6)) for s in std]}


def make_spec(method: str, images: np.ndarray) -> dict[str, Any]:
    """The normalization part of the preprocessing spec."""
    if method not in METHODS:
        raise ValueError(f"unknown normalization '{method}' (known: {', '.join(METHODS)})")
    spec: dict[str, Any] = {"method": method}
    if method == "standardize":
        spec.update(fit_stats(images))
    return spec


def apply(images: Any, spec: dict[str, Any]) -> Any:
    """Normalize uint8 images (numpy or tf tensors, channels last) as `spec` says; returns float32."""
    method = spec["method"]
    x = _to_float(images)
    if method == "none":
        return x
    x = x / np.float32(255.0)
    if method == "unit":
        return x
    if method == "standardize":
        return (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    raise ValueError(f"unknown normalization '{method}' (known: {', '.join(METHODS)})")


def _to_float(images: Any) -> Any:
    if isinstance(images, np.ndarray):
        return images.astype(np.float32)
    import tensorflow as tf

    return tf.cast(images, tf.float32)

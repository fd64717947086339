"""Input normalization named by the preprocessing spec; training and evaluation both apply it from here."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Method = Literal["unit", "standardize", "none"]
METHODS: tuple[str, ...] = ("unit", "standardize", "none")


class PixelMoments:
    """Exact per-channel sums over uint8 pixels: the statistics do not depend on the order images arrive in, so a
    split can be fitted while it streams."""

    def __init__(self) -> None:
        self.total = np.zeros(3, np.int64)
        self.squares = np.zeros(3, np.int64)
        self.pixels = 0

    def add(self, images: np.ndarray) -> None:
        """One image (H, W, 3) or a batch (N, H, W, 3) of uint8 pixels."""
        flat = np.asarray(images).reshape(-1, 3).astype(np.int64)
        self.total += flat.sum(axis=0)
        self.squares += (flat * flat).sum(axis=0)
        self.pixels += len(flat)

    def merge(self, other: PixelMoments) -> None:
        self.total += other.total
        self.squares += other.squares
        self.pixels += other.pixels

    def stats(self) -> dict[str, list[float]]:
        """Per-channel mean and std of the pixels scaled to [0, 1]."""
        mean = self.total / self.pixels
        std = np.sqrt(np.maximum(self.squares / self.pixels - mean**2, 0.0)) / 255.0
        return {"mean": [float(m) for m in mean / 255.0], "std": [float(max(s, 1e-6)) for s in std]}


def make_spec(method: str, moments: PixelMoments) -> dict[str, Any]:
    """The normalization part of the preprocessing spec; standardize uses the training split's moments."""
    if method not in METHODS:
        raise ValueError(f"unknown normalization '{method}' (known: {', '.join(METHODS)})")
    spec: dict[str, Any] = {"method": method}
    if method == "standardize":
        spec.update(moments.stats())
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

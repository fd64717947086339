"""Streaming per-channel statistics of model inputs: train records them, evaluate compares its own against them."""

from __future__ import annotations

from typing import Any

import numpy as np


class ChannelStats:
    """Streaming per-channel mean, std, min and max, in the layout of train_meta's input_stats."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | float = 0.0
        self.squares: np.ndarray | float = 0.0
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        self.count += len(flat)
        self.total = self.total + flat.sum(axis=0)
        self.squares = self.squares + (flat**2).sum(axis=0)
        low, high = flat.min(axis=0), flat.max(axis=0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def result(self) -> dict[str, list[float]]:
        mean = np.asarray(self.total) / self.count
        std = np.sqrt(np.maximum(np.asarray(self.squares) / self.count - mean**2, 0.0))
        columns: tuple[tuple[str, Any], ...] = (("mean", mean), ("std", std), ("min", self.low), ("max", self.high))
        return {k: [float(v) for v in arr] for k, arr in columns}

"""The preprocess stage's on-disk contract: one .npz per split plus spec.json, read by train and evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_file, read_json

SPLITS = ("train", "val", "test")
SPEC_FILE = "spec.json"


def save_split(folder: Path, split: str, images: np.ndarray, masks: np.ndarray, stems: list[str]) -> None:
    """images: uint8 (N, H, W, 3); masks: uint8 class ids (N, H, W), ignore pixels hold the ignore index."""
    with atomic_file(folder / f"{split}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=images, masks=masks, stems=np.asarray(stems))


def load_split(folder: Path | str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    path = Path(folder) / f"{split}.npz"
    try:
        with np.load(path) as data:
            return data["images"], data["masks"], [str(s) for s in data["stems"]]
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run the preprocess stage first)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{path}: unreadable processed split ({exc})") from None


def load_spec(folder: Path | str) -> dict[str, Any]:
    """{"image_size": int, "num_classes": int, "ignore_index": int, "class_names": [...],
    "normalization": {"method": "unit"|"standardize"|"none", "mean": [...], "std": [...]},
    "image_interpolation": "bilinear", "mask_interpolation": "nearest"}"""
    return read_json(Path(folder) / SPEC_FILE, "preprocess")

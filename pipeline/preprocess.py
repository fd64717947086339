"""Resize every split to one size (bilinear images, nearest masks) and fix the normalization spec.

The spec, with statistics fitted on the training split only, is the single source that training
and evaluation both normalize from, so the two cannot silently drift apart. Pairs are resized by a
pool of threads and written in order into bounded shards, so memory does not grow with the data set.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline import normalization
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.params import PREPARED_LABELS, SPLITS, ClassesParams, load_section
from pipeline.processed import SPEC_FILE, Spec, Split, SplitWriter, encode_png, example
from pipeline.tracking import log_dict, stage_run

IN_DIR = Path("data/prepared")
OUT_DIR = Path("data/processed")
WINDOW = 64  # pairs in flight per worker pool round: bounds memory whatever the data set's size


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    image_size: int
    normalization: str
    shard_mb: float = 100.0

    def validate(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 and at least 16, got {self.image_size}")
        if self.normalization not in normalization.METHODS:
            raise ValueError(
                f"normalization must be one of {', '.join(normalization.METHODS)}, got {self.normalization!r}"
            )
        if not self.shard_mb > 0:
            raise ValueError(f"shard_mb must be positive, got {self.shard_mb}")


@dataclasses.dataclass(frozen=True)
class Resized:
    """One pair ready to write, with the sums the normalization statistics need."""

    record: bytes
    moments: normalization.PixelMoments


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image, mode="RGB").resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour: interpolating class ids would invent classes (or erase thin structures)."""
    return np.asarray(Image.fromarray(mask, mode="L").resize((size, size), Image.Resampling.NEAREST))


def resize_pair(image_path: Path, size: int) -> Resized:
    mask_path = image_path.parent.parent / "masks" / image_path.name
    if not mask_path.exists():
        raise PipelineError(f"{mask_path}: missing (re-run the prepare stage)")
    image = resize_image(np.asarray(Image.open(image_path).convert("RGB")), size)
    mask = resize_mask(np.asarray(Image.open(mask_path)), size)
    moments = normalization.PixelMoments()
    moments.add(image)
    return Resized(example(image_path.stem, encode_png(image), encode_png(mask)), moments)


def resized_pairs(paths: list[Path], size: int, pool: ThreadPoolExecutor) -> Iterator[Resized]:
    """In the order of `paths`, a bounded window at a time."""
    for start in range(0, len(paths), WINDOW):
        yield from pool.map(lambda path: resize_pair(path, size), paths[start : start + WINDOW])


def write_split(pairs: Iterable[Resized], writer: SplitWriter, moments: normalization.PixelMoments | None) -> Split:
    for pair in pairs:
        writer.add(pair.record)
        if moments is not None:
            moments.merge(pair.moments)
    return writer.close()


def with_prepared_shares(split: Split, shares: dict[str, Any]) -> Split:
    """The split with the foreground shares prepare recorded for it carried on, so evaluation can tell a foreground
    the data never had from one lost after prepare."""
    return dataclasses.replace(
        split,
        raw_foreground_share=shares.get("raw_foreground_share"),
        prepared_foreground_share=shares.get("foreground_share"),
    )


def prepared_shares() -> dict[str, Any]:
    """prepare's per-split label record; an older prepared folder without one leaves the shares unknown."""
    path = IN_DIR / PREPARED_LABELS
    data = read_json(path, "prepare") if path.exists() else {}
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a JSON object")
    return {name: data[name] if isinstance(data.get(name), dict) else {} for name in SPLITS}


def image_paths(split: str) -> list[Path]:
    return sorted((IN_DIR / split / "images").glob("*.png"))


def workers() -> int:
    return len(os.sched_getaffinity(0))


def main() -> None:
    params = load_section("preprocess", PreprocessParams)
    classes = load_section("classes", ClassesParams)
    if not IN_DIR.is_dir():
        raise PipelineError(f"{IN_DIR}: not found (run the prepare stage first)")
    paths = {name: image_paths(name) for name in SPLITS}
    if not paths["train"]:
        raise PipelineError(f"{IN_DIR / 'train'}: no training images")
    shard_bytes = int(params.shard_mb * 1e6)
    moments = normalization.PixelMoments()
    with (
        atomic_dir(OUT_DIR) as out,
        stage_run("preprocess", params, out / "preprocess_run.json"),
        ThreadPoolExecutor(workers()) as pool,
    ):
        shares = prepared_shares()
        splits = {
            name: with_prepared_shares(
                write_split(
                    resized_pairs(paths[name], params.image_size, pool),
                    SplitWriter(out, name, shard_bytes),
                    moments if name == "train" else None,
                ),
                shares[name],
            )
            for name in SPLITS
        }
        spec = Spec(
            image_size=params.image_size,
            num_classes=classes.num_classes,
            class_names=classes.names,
            ignore_index=classes.ignore_index,
            normalization=normalization.make_spec(params.normalization, moments),
            splits=splits,
        )
        write_json(out / SPEC_FILE, spec.to_json())
        log_dict(spec.to_json(), SPEC_FILE)
    shards = sum(len(split.shards) for split in splits.values())
    print(f"preprocess: {params.image_size}px, normalization {params.normalization}, {shards} shards -> {OUT_DIR}")


if __name__ == "__main__":
    run_stage(main)

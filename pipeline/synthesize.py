"""Deterministic synthetic WiSe data: textured backgrounds with thin and blob-like foreground structures.

The foreground covers a small share of pixels, so the class imbalance that makes real models collapse is real.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.errors import run_stage
from pipeline.io import atomic_dir
from pipeline.params import load_section
from pipeline.tracking import log_metric, stage_run

OUT_DIR = Path("data/synthetic")


@dataclasses.dataclass(frozen=True)
class SynthesizeParams:
    n_images: int
    image_size: int
    seed: int
    mask_values: list[int]
    empty_share: float = 0.0

    def validate(self) -> None:
        if self.n_images < 3:
            raise ValueError(f"n_images must be at least 3 (one per split), got {self.n_images}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if (
            len(self.mask_values) != 2
            or len(set(self.mask_values)) != 2
            or not all(0 <= v <= 255 for v in self.mask_values)
        ):
            raise ValueError(f"mask_values must be two distinct values in [0, 255], got {self.mask_values}")
        if not 0 <= self.empty_share <= 1:
            raise ValueError(f"empty_share must be in [0, 1], got {self.empty_share}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(40, 150, size=3)
    coarse = rng.normal(0, 1, size=(size // 12 + 2, size // 12 + 2, 3))
    low = np.stack(
        [
            np.asarray(
                Image.fromarray(coarse[..., c].astype(np.float32), mode="F").resize(
                    (size, size), Image.Resampling.BICUBIC
                )
            )
            for c in range(3)
        ],
        axis=-1,
    )
    grain = rng.normal(0, 10, size=(size, size, 3))
    return base + 28 * low + grain


def _foreground_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.1, 0.9, size=2) * size
        rx, ry = rng.uniform(0.04, 0.11, size=2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    for _ in range(int(rng.integers(1, 3))):
        points = [tuple(p) for p in (rng.uniform(0, 1, size=(int(rng.integers(2, 5)), 2)) * size)]
        draw.line(points, fill=255, width=int(rng.integers(3, 6)), joint="curve")
    return np.asarray(mask) > 127


def empty_indices(params: SynthesizeParams) -> set[int]:
    """The images drawn without foreground: `empty_share` of them (rounded), picked at random by the seed."""
    count = round(params.empty_share * params.n_images)
    order = np.random.default_rng([params.seed, params.n_images]).permutation(params.n_images)
    return {int(i) for i in order[:count]}


def make_sample(seed: int, index: int, size: int, empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, boolean foreground mask) pair; the same (seed, index) always gives the same pair.

    An empty sample is the same image with no foreground drawn on it: its background and colours stay those of
    the (seed, index) pair, so adding background-only images changes nothing else in the data.
    """
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    fg = _foreground_mask(rng, size) & (not empty)
    fg_color = rng.uniform(170, 245, size=3)
    fg_color[int(rng.integers(0, 3))] = rng.uniform(40, 90)
    stripes = 12 * np.sin(np.arange(size)[None, :, None] * rng.uniform(0.5, 1.2) + rng.uniform(0, 6.3))
    fg_pixels = fg_color + stripes + rng.normal(0, 10, size=(size, size, 3))
    image = np.where(fg[..., None], fg_pixels, image)
    return np.clip(image, 0, 255).astype(np.uint8), fg


def main() -> None:
    params = load_section("synthesize", SynthesizeParams)
    background, foreground = params.mask_values
    with atomic_dir(OUT_DIR) as out, stage_run("synthesize", params, out / "synthesize_run.json"):
        (out / "images").mkdir()
        (out / "masks").mkdir()
        fg_pixels = 0
        empty = empty_indices(params)
        for i in range(params.n_images):
            image, fg = make_sample(params.seed, i, params.image_size, i in empty)
            stem = f"wise_{i:05d}"
            Image.fromarray(image, mode="RGB").save(out / "images" / f"{stem}.png")
            Image.fromarray(np.where(fg, foreground, background).astype(np.uint8), mode="L").save(
                out / "masks" / f"{stem}.png"
            )
            fg_pixels += int(fg.sum())
        share = fg_pixels / (params.n_images * params.image_size**2)
        log_metric("foreground_share", share)
        print(f"synthesize: wrote {params.n_images} image/mask pairs to {OUT_DIR} (foreground share {share:.3f})")


if __name__ == "__main__":
    run_stage(main)

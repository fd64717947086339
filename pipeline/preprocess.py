"""Resize every split to one size (bilinear images, nearest masks) and fix the normalization spec.

The spec, with statistics fitted on the training split only, is the single source that training
and evaluation both normalize from, so the two cannot silently drift apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import normalization
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, write_json
from pipeline.params import ClassesParams, load_section
from pipeline.processed import SPEC_FILE, SPLITS, save_split
from pipeline.tracking import log_dict, stage_run

IN_DIR = Path("data/prepared")
OUT_DIR = Path("data/processed")


@dataclasses.dataclass(frozen=True)
class PreprocessParams:
    image_size: int
    normalization: str

    def validate(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 and at least 16, got {self.image_size}")
        if self.normalization not in normalization.METHODS:
            raise ValueError(
                f"normalization must be one of {', '.join(normalization.METHODS)}, got {self.normalization!r}"
            )


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image, mode="RGB").resize((size, size), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour: interpolating class ids would invent classes (or erase thin structures)."""
    return np.asarray(Image.fromarray(mask, mode="L").resize((size, size), Image.Resampling.NEAREST))


def load_prepared_split(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    image_paths = sorted((folder / "images").glob("*.png"))
    stems = [p.stem for p in image_paths]
    images = np.zeros((len(stems), size, size, 3), np.uint8)
    masks = np.zeros((len(stems), size, size), np.uint8)
    for i, path in enumerate(image_paths):
        mask_path = folder / "masks" / path.name
        if not mask_path.exists():
            raise PipelineError(f"{mask_path}: missing (re-run the prepare stage)")
        images[i] = resize_image(np.asarray(Image.open(path).convert("RGB")), size)
        masks[i] = resize_mask(np.asarray(Image.open(mask_path)), size)
    return images, masks, stems


def main() -> None:
    params = load_section("preprocess", PreprocessParams)
    classes = load_section("classes", ClassesParams)
    if not IN_DIR.is_dir():
        raise PipelineError(f"{IN_DIR}: not found (run the prepare stage first)")
    splits = {name: load_prepared_split(IN_DIR / name, params.image_size) for name in SPLITS}
    if len(splits["train"][2]) == 0:
        raise PipelineError(f"{IN_DIR / 'train'}: no training images")
    spec = {
        "image_size": params.image_size,
        "num_classes": classes.num_classes,
        "class_names": classes.names,
        "ignore_index": classes.ignore_index,
        "normalization": normalization.make_spec(params.normalization, splits["train"][0]),
        "image_interpolation": "bilinear",
        "mask_interpolation": "nearest",
    }
    with atomic_dir(OUT_DIR) as out, stage_run("preprocess", params, out / "preprocess_run.json"):
        for name, (images, masks, stems) in splits.items():
            save_split(out, name, images, masks, stems)
        write_json(out / SPEC_FILE, spec)
        log_dict(spec, SPEC_FILE)
    print(f"preprocess: {params.image_size}px, normalization {params.normalization} -> {OUT_DIR}")


if __name__ == "__main__":
    run_stage(main)

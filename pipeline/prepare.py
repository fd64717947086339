"""Validate WiSe image/mask pairs, map mask values to class ids, and split deterministically.

Every pair is checked before anything is written, so a bad file fails the stage with one line
naming it, and no partial output is left behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, write_json
from pipeline.params import ClassesParams, load_section
from pipeline.processed import SPLITS
from pipeline.tracking import log_artifact, log_metric, stage_run

OUT_DIR = Path("data/prepared")
SUMMARY_FILE = Path("reports/prepare_summary.json")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    raw_dir: str
    label_map: dict[int, int]
    split: dict[str, float]
    seed: int

    def validate(self) -> None:
        if not self.label_map:
            raise ValueError("label_map must map at least one mask value")
        if set(self.split) != set(SPLITS):
            raise ValueError(f"split must have exactly the keys {', '.join(SPLITS)}, got {', '.join(self.split)}")
        if any(v < 0 for v in self.split.values()) or abs(sum(self.split.values()) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {self.split}")


@dataclasses.dataclass
class Pair:
    stem: str
    image: np.ndarray
    mask: np.ndarray


def check_label_map(label_map: dict[int, int], classes: ClassesParams) -> None:
    """Every target must be a class id or the ignore index, or training silently learns nonsense."""
    for value, target in label_map.items():
        if not (0 <= target < classes.num_classes or target == classes.ignore_index):
            raise PipelineError(
                f"params.yaml: prepare.label_map maps {value} to {target}, which is neither a class id "
                f"(0..{classes.num_classes - 1}) nor classes.ignore_index ({classes.ignore_index})"
            )


def find_pairs(raw_dir: Path) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) for every image, matched to masks by file stem."""
    images_dir, masks_dir = raw_dir / "images", raw_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise PipelineError(f"{folder}: folder not found (expected {raw_dir}/images and {raw_dir}/masks)")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise PipelineError(f"{images_dir}: no images found")
    lonely_images = sorted(set(images) - set(masks))
    if lonely_images:
        raise PipelineError(f"{images[lonely_images[0]]}: no mask with the same stem in {masks_dir}")
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_masks:
        raise PipelineError(f"{masks[lonely_masks[0]]}: no image with the same stem in {images_dir}")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PipelineError(f"{path}: unreadable image ({exc.__class__.__name__})") from None


def map_labels(mask: np.ndarray, label_map: dict[int, int], path: Path) -> np.ndarray:
    """Class ids for a raw mask; a value the label map does not cover is an error naming the file and value."""
    values = np.unique(mask)
    unmapped = [int(v) for v in values if int(v) not in label_map]
    if unmapped:
        raise PipelineError(
            f"{path}: mask value {unmapped[0]} is not covered by prepare.label_map "
            f"(covered: {', '.join(map(str, sorted(label_map)))})"
        )
    out = np.zeros(mask.shape, dtype=np.uint8)
    for value in values:
        out[mask == value] = label_map[int(value)]
    return out


def load_pair(stem: str, image_path: Path, mask_path: Path, label_map: dict[int, int]) -> Pair:
    image = _open(image_path)
    mask = _open(mask_path)
    if mask.mode not in ("L", "P", "I", "I;16", "1"):
        raise PipelineError(f"{mask_path}: mask must be single-channel, got mode {mask.mode}")
    if image.size != mask.size:
        raise PipelineError(f"{mask_path}: mask size {mask.size} differs from image size {image.size} of {image_path}")
    raw = np.asarray(mask if mask.mode != "1" else mask.convert("L"))
    return Pair(stem, np.asarray(image.convert("RGB")), map_labels(raw, label_map, mask_path))


def mask_image(mask: np.ndarray, num_classes: int) -> Image.Image:
    """A class-id mask as a palette PNG, as annotation tools write them: the pixel values are the class ids, the
    palette a grey ramp from background (black) to the last class (white), so a viewer shows the classes.
    """
    image = Image.fromarray(mask, mode="P")
    greys = [round(255 * c / (num_classes - 1)) for c in range(num_classes)]
    palette = [g for grey in greys for g in (grey, grey, grey)]
    image.putpalette(palette + [0] * (768 - len(palette)))  # a full palette keeps 8-bit indices in the file
    return image


def split_stems(stems: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[str]]:
    """Seeded split; every split with a non-zero fraction gets at least one image when there are enough."""
    order = np.random.default_rng(seed).permutation(len(stems))
    counts = {name: round(fractions[name] * len(stems)) for name in SPLITS}
    for name in SPLITS:
        if fractions[name] > 0 and counts[name] == 0:
            counts[name] = 1
    counts["train"] = len(stems) - counts["val"] - counts["test"]
    if counts["train"] < 1:
        raise PipelineError(f"params.yaml: prepare.split leaves no training images out of {len(stems)}")
    shuffled = [stems[i] for i in order]
    bounds = np.cumsum([0] + [counts[name] for name in SPLITS])
    return {name: sorted(shuffled[bounds[i] : bounds[i + 1]]) for i, name in enumerate(SPLITS)}


def class_frequencies(masks: list[np.ndarray], classes: ClassesParams) -> dict[str, float]:
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256) if masks else np.zeros(256)
    total = max(int(counts.sum()), 1)
    freq = {name: float(counts[i] / total) for i, name in enumerate(classes.names)}
    freq["ignore"] = float(counts[classes.ignore_index] / total)
    return freq


def main() -> None:
    params = load_section("prepare", PrepareParams)
    classes = load_section("classes", ClassesParams)
    check_label_map(params.label_map, classes)
    pairs = [load_pair(stem, img, msk, params.label_map) for stem, img, msk in find_pairs(Path(params.raw_dir))]
    by_stem = {p.stem: p for p in pairs}
    splits = split_stems(list(by_stem), params.split, params.seed)
    summary: dict[str, Any] = {
        "n_images": len(pairs),
        "splits": {
            name: {
                "n_images": len(stems),
                "class_pixel_frequency": class_frequencies([by_stem[s].mask for s in stems], classes),
            }
            for name, stems in splits.items()
        },
    }
    with atomic_dir(OUT_DIR) as out, stage_run("prepare", params, out / "prepare_run.json"):
        for name, stems in splits.items():
            (out / name / "images").mkdir(parents=True)
            (out / name / "masks").mkdir(parents=True)
            for stem in stems:
                Image.fromarray(by_stem[stem].image, mode="RGB").save(out / name / "images" / f"{stem}.png")
                mask_image(by_stem[stem].mask, classes.num_classes).save(out / name / "masks" / f"{stem}.png")
            log_metric(f"{name}_images", len(stems))
            for cls, freq in summary["splits"][name]["class_pixel_frequency"].items():
                log_metric(f"{name}_freq_{cls}", freq)
        write_json(SUMMARY_FILE, summary)
        log_artifact(str(SUMMARY_FILE))
    print(f"prepare: {len(pairs)} pairs -> " + ", ".join(f"{n} {len(s)}" for n, s in splits.items()))


if __name__ == "__main__":
    run_stage(main)

"""Validate WiSe image/mask pairs, map mask values to class ids, and split deterministically.

Pairs stream one at a time into a temp folder that replaces data/prepared once all passed: memory holds one pair,
and a bad file fails the stage with one line naming it and leaves no partial output behind.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, write_json
from pipeline.params import PREPARED_LABELS, SPLITS, ClassesParams, load_section
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
    raw_foreground: int  # raw mask pixels that are not 0, before the label map


@dataclasses.dataclass
class SplitLabels:
    """A split's pixel count per class id, and its raw mask pixels that were not 0 before the label map.

    WiSe (like most binary mask formats) stores background as 0, so the raw share is the foreground the data holds
    whatever the label map makes of it: evaluation measures the all-zero symptom against it too, and a foreground
    that prepare wrote but the processed masks lack was lost after prepare.
    """

    counts: np.ndarray
    raw_foreground: int = 0

    def shares(self, classes: ClassesParams) -> dict[str, float | None]:
        total = int(self.counts.sum())
        valid = self.counts[: classes.num_classes].copy()
        if 0 <= classes.ignore_index < classes.num_classes:
            valid[classes.ignore_index] = 0
        return {
            "raw_foreground_share": self.raw_foreground / total if total else None,
            "foreground_share": float((valid.sum() - valid[0]) / valid.sum()) if valid.sum() else None,
        }


def check_label_map(label_map: dict[int, int], classes: ClassesParams) -> None:
    """Every target must be a class id or the ignore index, or training silently learns nonsense."""
    for value, target in label_map.items():
        if not (0 <= target < classes.num_classes or target == classes.ignore_index):
            raise PipelineError(
                f"params.yaml: prepare.label_map maps {value} to {target}, which is neither a class id "
                f"(0..{classes.num_classes - 1}) nor classes.ignore_index ({classes.ignore_index})"
            )


@dataclasses.dataclass(frozen=True)
class RawPairs:
    """The raw folder's pairs as their stems and file suffixes: a few dozen bytes per pair, so listing a collection
    of any size costs little memory; each pair's paths are built when it is loaded."""

    raw_dir: Path
    suffixes: dict[str, tuple[str, str]]

    def paths(self, stem: str) -> tuple[Path, Path]:
        image_suffix, mask_suffix = self.suffixes[stem]
        return self.raw_dir / "images" / f"{stem}{image_suffix}", self.raw_dir / "masks" / f"{stem}{mask_suffix}"


def _by_stem(folder: Path) -> dict[str, str]:
    """stem -> suffix of the image files in `folder` (suffix strings shared, not one per file)."""
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            found[stem] = sys.intern(suffix)
    return found


def find_pairs(raw_dir: Path) -> RawPairs:
    """Every image with its mask, matched by file stem."""
    images_dir, masks_dir = raw_dir / "images", raw_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise PipelineError(f"{folder}: folder not found (expected {raw_dir}/images and {raw_dir}/masks)")
    images, masks = _by_stem(images_dir), _by_stem(masks_dir)
    if not images:
        raise PipelineError(f"{images_dir}: no images found")
    lonely_images = sorted(images.keys() - masks.keys())
    if lonely_images:
        stem = lonely_images[0]
        raise PipelineError(f"{images_dir / (stem + images[stem])}: no mask with the same stem in {masks_dir}")
    lonely_masks = sorted(masks.keys() - images.keys())
    if lonely_masks:
        stem = lonely_masks[0]
        raise PipelineError(f"{masks_dir / (stem + masks[stem])}: no image with the same stem in {images_dir}")
    return RawPairs(raw_dir, {stem: (images[stem], masks[stem]) for stem in sorted(images)})


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return _complete(img, path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PipelineError(f"{path}: unreadable image ({_problem(exc)})") from None


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
    mapped = map_labels(raw, label_map, mask_path)
    return Pair(stem, np.asarray(image.convert("RGB")), mapped, int(np.count_nonzero(raw)))


# How a complete file of each format ends: the IEND chunk (empty, with its fixed CRC), the end-of-image marker.
END_MARKERS = {"PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


def _complete(img: Image.Image, path: Path) -> Image.Image:
    """`img`, once its file ends with its format's end marker: PIL decodes a PNG or JPEG cut just after its last
    pixel data without complaint, and pads one cut anywhere when ImageFile.LOAD_TRUNCATED_IMAGES is on.
    """
    marker = END_MARKERS.get(img.format or "")
    if marker is not None:
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - len(marker), 0))
            if f.read() != marker:
                raise PipelineError(f"{path}: unreadable image (truncated: the {img.format} end marker is missing)")
    return img


def _problem(exc: Exception) -> str:
    """PIL reports a file cut short as an OSError ('image file is truncated', 'Truncated File Read'): say so."""
    return "truncated" if "truncated" in str(exc).lower() else exc.__class__.__name__


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
    """Seeded split. A split left empty is a params error here: evaluate would only find out after training."""
    order = np.random.default_rng(seed).permutation(len(stems))
    counts = {name: round(fractions[name] * len(stems)) for name in SPLITS}
    for name in SPLITS:
        if fractions[name] > 0 and counts[name] == 0:
            counts[name] = 1
    counts["train"] = len(stems) - counts["val"] - counts["test"]
    for name in SPLITS:
        if fractions[name] <= 0 or counts[name] < 1:
            shares = ", ".join(f"{key} {fractions[key]:g}" for key in SPLITS)
            raise PipelineError(
                f"params.yaml: prepare.split leaves the {name} split empty ({len(stems)} images, fractions {shares})"
            )
    shuffled = [stems[i] for i in order]
    bounds = np.cumsum([0] + [counts[name] for name in SPLITS])
    return {name: sorted(shuffled[bounds[i] : bounds[i + 1]]) for i, name in enumerate(SPLITS)}


def write_split(
    folder: Path, found: RawPairs, stems: list[str], label_map: dict[int, int], num_classes: int
) -> SplitLabels:
    """Load, check and write one pair at a time, so memory never holds the split; returns its pixel count per mask
    value, all `class_frequencies` needs, and its raw foreground.
    """
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    labels = SplitLabels(np.zeros(256, np.int64))
    for stem in stems:
        pair = load_pair(stem, *found.paths(stem), label_map)
        Image.fromarray(pair.image, mode="RGB").save(folder / "images" / f"{stem}.png")
        mask_image(pair.mask, num_classes).save(folder / "masks" / f"{stem}.png")
        labels.counts += np.bincount(pair.mask.ravel(), minlength=256)
        labels.raw_foreground += pair.raw_foreground
    return labels


def class_frequencies(counts: np.ndarray, classes: ClassesParams) -> dict[str, float]:
    """Each class's share of a split's pixels, and the ignored pixels' share, from its count per mask value."""
    total = max(int(counts.sum()), 1)
    freq = {name: float(counts[i] / total) for i, name in enumerate(classes.names)}
    freq["ignore"] = float(counts[classes.ignore_index] / total)
    return freq


def main() -> None:
    """Pairs stream split by split into the temp folder; the MLflow run starts only once all passed, so bad input
    leaves neither output nor run behind.
    """
    params = load_section("prepare", PrepareParams)
    classes = load_section("classes", ClassesParams)
    check_label_map(params.label_map, classes)
    found = find_pairs(Path(params.raw_dir))
    splits = split_stems(list(found.suffixes), params.split, params.seed)
    with atomic_dir(OUT_DIR) as out:
        labels = {
            name: write_split(out / name, found, stems, params.label_map, classes.num_classes)
            for name, stems in splits.items()
        }
        write_json(out / PREPARED_LABELS, {name: split.shares(classes) for name, split in labels.items()})
        summary: dict[str, Any] = {
            "n_images": len(found.suffixes),
            "splits": {
                name: {"n_images": len(stems), "class_pixel_frequency": class_frequencies(labels[name].counts, classes)}
                for name, stems in splits.items()
            },
        }
        with stage_run("prepare", params, out / "prepare_run.json"):
            for name, split in summary["splits"].items():
                log_metric(f"{name}_images", split["n_images"])
                for cls, freq in split["class_pixel_frequency"].items():
                    log_metric(f"{name}_freq_{cls}", freq)
            write_json(SUMMARY_FILE, summary)
            log_artifact(str(SUMMARY_FILE))
    print(f"prepare: {len(found.suffixes)} pairs -> " + ", ".join(f"{n} {len(s)}" for n, s in splits.items()))


if __name__ == "__main__":
    run_stage(main)

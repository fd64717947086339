"""preprocess and normalization: nearest resize keeps class ids, stats come from the training split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import normalization
from pipeline.errors import PipelineError
from pipeline.params import SPLITS, ClassesParams, load_section
from pipeline.preprocess import PreprocessParams, resize_image, resize_mask
from pipeline.processed import Spec, batches
from pipeline.scratch import ROOT
from pipeline.train_data import read_labels, validation_batches
from support import read_split, run_stage, two_class_spec, write_processed


def test_nearest_resize_never_invents_class_ids() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[::2, ::3] = 1
    mask[5:, 5:] = 255
    out = resize_mask(mask, 16)
    assert out.shape == (16, 16)
    assert set(np.unique(out)) <= {0, 1, 255}


def test_bilinear_image_resize_blends() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 2:] = 200
    out = resize_image(image, 8)
    assert out.shape == (8, 8, 3)
    assert len(np.unique(out)) > 2


def test_normalization_methods() -> None:
    images = np.stack([np.full((2, 2, 3), 0, np.uint8), np.full((2, 2, 3), 255, np.uint8)])
    assert normalization.apply(images, {"method": "none"}).max() == 255.0
    assert normalization.apply(images, {"method": "unit"}).max() == 1.0
    moments = normalization.PixelMoments()
    moments.add(images)
    spec = normalization.make_spec("standardize", moments)
    assert spec["mean"] == pytest.approx([0.5] * 3)
    out = normalization.apply(images, spec)
    assert out.dtype == np.float32
    assert out.mean() == pytest.approx(0.0, abs=1e-6)
    assert out.std() == pytest.approx(1.0, abs=1e-5)


def test_unknown_normalization_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"preprocess": {"image_size": 32, "normalization": "zscore"}}))
    with pytest.raises(PipelineError, match="normalization must be one of unit, standardize, none, got 'zscore'"):
        load_section("preprocess", PreprocessParams, tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"image_size": 30, "normalization": "unit"}, "image_size must be a multiple of 16"),
        ({"image_size": "big", "normalization": "unit"}, "'preprocess.image_size' must be an integer"),
        ({"image_size": 32}, "missing key 'preprocess.normalization'"),
        ({"image_size": 32, "normalization": "unit", "size": 3}, "unknown key 'preprocess.size'"),
    ],
)
def test_params_validation_names_the_key(tmp_path: Path, section: dict, message: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"preprocess": section}))
    with pytest.raises(PipelineError, match=message):
        load_section("preprocess", PreprocessParams, tmp_path / "params.yaml")


def test_classes_must_be_consistent(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"classes": {"num_classes": 3, "names": ["a", "b"]}}))
    with pytest.raises(PipelineError, match="names has 2 entries but num_classes is 3"):
        load_section("classes", ClassesParams, tmp_path / "params.yaml")


def test_pixel_moments_equal_numpy_and_ignore_order_and_batching() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    whole = normalization.PixelMoments()
    whole.add(images)
    parts = normalization.PixelMoments()
    for image in images[::-1]:
        one = normalization.PixelMoments()
        one.add(image)
        parts.merge(one)
    assert parts.stats() == whole.stats()
    scaled = images.astype(np.float64) / 255.0
    assert whole.stats()["mean"] == pytest.approx(scaled.mean(axis=(0, 1, 2)).tolist(), rel=1e-12)
    assert whole.stats()["std"] == pytest.approx(scaled.std(axis=(0, 1, 2)).tolist(), rel=1e-9)


def _stage_folder(tmp_path: Path, n_images: int, shard_mb: float) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthesize"].update(n_images=n_images, image_size=24)
    params["prepare"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params["preprocess"].update(image_size=16, shard_mb=shard_mb)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("synthesize", "prepare", "preprocess"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 0, result.stderr
    return tmp_path


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """synthesize, prepare and preprocess once for the module: 25 images in shards of about two records each."""
    return _stage_folder(tmp_path_factory.mktemp("staged"), n_images=25, shard_mb=0.002)


def prepared_split(folder: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """What preprocess must have written for a split: the prepared pairs resized, read here with PIL alone."""
    paths = sorted((folder / "data/prepared" / split / "images").glob("*.png"))
    images = [resize_image(np.asarray(Image.open(p).convert("RGB")), size) for p in paths]
    masks = [resize_mask(np.asarray(Image.open(p.parent.parent / "masks" / p.name)), size) for p in paths]
    return np.stack(images), np.stack(masks), [p.stem for p in paths]


@pytest.mark.e2e
def test_preprocess_stage_writes_spec_and_shards_that_read_back_bit_exactly(staged: Path) -> None:
    """Small shards: several per split and a partial last one; the readers get back every pixel preprocess made."""
    folder = staged
    spec = Spec.load(folder / "data/processed")
    assert spec.image_size == 16 and spec.num_classes == 2 and spec.mask_interpolation == "nearest"
    train = spec.splits["train"]
    assert train.images == 13 and len(train.shards) > 2
    assert len({shard.images for shard in train.shards}) > 1, "expected a partial last shard"
    labels = json.loads((folder / "data/prepared/labels.json").read_text())
    for split in SPLITS:
        carried = (spec.splits[split].raw_foreground_share, spec.splits[split].prepared_foreground_share)
        assert carried == (labels[split]["raw_foreground_share"], labels[split]["foreground_share"])
        assert carried[1] is not None and carried[1] > 0.0
    for split in SPLITS:
        images, masks, stems = read_split(folder / "data/processed", split)
        expected_images, expected_masks, expected_stems = prepared_split(folder, split, 16)
        assert stems == expected_stems
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(masks, expected_masks)
    moments = normalization.PixelMoments()
    moments.add(prepared_split(folder, "train", 16)[0])
    assert spec.normalization == normalization.make_spec("standardize", moments)
    for shard in train.shards:
        digest = hashlib.sha256((folder / "data/processed" / shard.file).read_bytes()).hexdigest()
        assert digest == shard.sha256


@pytest.mark.e2e
def test_train_and_evaluate_streams_read_the_shards_bit_exactly(staged: Path) -> None:
    """Train's validation stream (in stem order) and label pass, and evaluate's batches, see the same pixels."""
    processed = staged / "data/processed"
    spec = Spec.load(processed)
    assert len(spec.splits["val"].shards) > 1
    images, masks, _ = read_split(processed, "val")
    streamed = [(np.asarray(x), np.asarray(y)) for x, y in validation_batches(spec, processed, 2)]
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in streamed]), normalization.apply(images, spec.normalization)
    )
    np.testing.assert_array_equal(np.concatenate([y for _, y in streamed]), masks)
    np.testing.assert_array_equal(read_labels(spec, processed, "val").counts, np.bincount(masks.ravel(), minlength=256))
    evaluated = {
        stem: (image, mask)
        for stems, batch_images, batch_masks in batches(spec, processed, "test", 2)
        for stem, image, mask in zip(stems, batch_images, batch_masks, strict=True)
    }
    test_images, test_masks, test_stems = read_split(processed, "test")
    assert sorted(evaluated) == test_stems
    for stem, image, mask in zip(test_stems, test_images, test_masks, strict=True):
        np.testing.assert_array_equal(evaluated[stem][0], image)
        np.testing.assert_array_equal(evaluated[stem][1], mask)


def test_spec_load_names_the_problem(tmp_path: Path) -> None:
    fields = two_class_spec(16, 255)
    images = np.zeros((3, 16, 16, 3), np.uint8)
    write_processed(tmp_path, fields, {name: (images, images[..., 0]) for name in SPLITS}, shard_bytes=1)
    spec = json.loads((tmp_path / "spec.json").read_text())
    shard = tmp_path / spec["splits"]["train"]["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(PipelineError, match=r"train-00001\.tfrecord: \d+ bytes, spec.json says"):
        Spec.load(tmp_path)
    shard.unlink()
    with pytest.raises(PipelineError, match=r"train-00001\.tfrecord: shard not found"):
        Spec.load(tmp_path)
    for key, value, message in (
        ("num_classes", 1, "num_classes must be an integer >= 2"),
        ("splits", {"train": spec["splits"]["train"]}, "splits must list exactly train, val, test"),
        ("format", "npz", "format 'npz' is not"),
        ("normalization", {"method": "zscore"}, "normalization.method must be one of"),
    ):
        (tmp_path / "spec.json").write_text(json.dumps({**spec, key: value}))
        with pytest.raises(PipelineError, match=f"spec.json: {message}"):
            Spec.load(tmp_path)

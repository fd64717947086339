"""preprocess and normalization: nearest resize keeps class ids, stats come from the training split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_stage
from pipeline import normalization
from pipeline.errors import PipelineError
from pipeline.params import ClassesParams, load_section
from pipeline.preprocess import PreprocessParams, resize_image, resize_mask
from pipeline.processed import load_spec, load_split
from pipeline.scratch import ROOT


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
    spec = normalization.make_spec("standardize", images)
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


@pytest.mark.e2e
def test_preprocess_stage_writes_spec_and_splits(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthesize"].update(n_images=8, image_size=24)
    params["prepare"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params["preprocess"]["image_size"] = 16
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("synthesize", "prepare", "preprocess"):
        result = run_stage(tmp_path, stage)
        assert result.returncode == 0, result.stderr
    spec = load_spec(tmp_path / "data/processed")
    assert spec["image_size"] == 16 and spec["num_classes"] == 2 and spec["mask_interpolation"] == "nearest"
    images, masks, stems = load_split(tmp_path / "data/processed", "train")
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    assert masks.shape == (4, 16, 16) and set(np.unique(masks)) <= {0, 1}
    assert len(stems) == 4
    assert spec["normalization"] == normalization.make_spec("standardize", images)

"""Train stage: params validation, the tf.data pipeline, and tiny real runs (in-process and as `python -m`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import two_class_spec
from pipeline import train
from pipeline.errors import PipelineError
from pipeline.params import load_section
from pipeline.processed import load_split, save_split

SIZE = 32
IGNORE = 255
TINY_PARAMS: dict[str, Any] = {
    "backbone": "mobilenetv2",
    "alpha": 0.35,
    "output_stride": 16,
    "aspp_filters": 8,
    "decoder_filters": 8,
    "epochs": 2,
    "batch_size": 4,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "class_weights": [1.0, 3.0],
    "augment_flips": True,
    "early_stopping_patience": 2,
    "seed": 1,
}
META_KEYS = {
    "from_logits",
    "num_classes",
    "ignore_index",
    "normalization",
    "input_stats",
    "class_weights",
    "epochs_run",
    "best_val_mean_iou",
    "model_sha256",
    "train_foreground_share",
    "val_foreground_share",
    "val_iou_per_class",
}


def write_params(folder: Path, **overrides: Any) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {**TINY_PARAMS, **overrides}}))
    return path


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bright squares (class 1) on noise, with a few ignore pixels: learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, SIZE - 10, 2)
        masks[i, r : r + 10, c : c + 10] = 1
        images[i, r : r + 10, c : c + 10] += 150
    masks[:, 0, :2] = IGNORE
    return images, masks


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stage working directory with a tiny data/processed and params.yaml."""
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    for split, n in (("train", 8), ("val", 4)):
        images, masks = squares(n, seed=n)
        save_split(processed, split, images, masks, [f"{split}{i}" for i in range(n)])
    spec = two_class_spec(SIZE, IGNORE)
    (processed / "spec.json").write_text(json.dumps(spec))
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha": 0}, "alpha"),
        ({"output_stride": 32}, "output_stride must be 8 or 16"),
        ({"learning_rate": -0.1}, "learning_rate must be a positive"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"class_weights": [1.0, -2.0]}, "class_weights must be non-negative"),
        ({"class_weights": [0.0, 0.0]}, "all zero"),
        ({"backbone": "vgg16"}, "train.backbone' must be one of"),
        ({"optimizer": "rmsprop"}, "train.optimizer' must be one of"),
        ({"batch_size": "8"}, "must be an integer"),
    ],
)
def test_params_validation_rejects_bad_values(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        load_section("train", train.TrainParams, write_params(tmp_path, **overrides))


def test_default_params_file_is_valid() -> None:
    params = load_section("train", train.TrainParams, Path(__file__).resolve().parents[1] / "params.yaml")
    assert params.output_stride in (8, 16)


def test_mixed_precision_computes_in_float16_with_float32_logits_and_restores_the_policy() -> None:
    params = train.TrainParams(**{**TINY_PARAMS, "mixed_precision": True})
    model = train.build_model(params, (SIZE, SIZE, 3), 2, IGNORE)
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert model.get_layer("classifier").compute_dtype == "float16"
    assert model.get_layer("classifier").variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    outputs = model.predict_on_batch(np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert outputs.dtype == np.float32 and outputs.shape == (1, SIZE, SIZE, 2)
    assert (
        train.build_model(train.TrainParams(**TINY_PARAMS), (SIZE, SIZE, 3), 2, IGNORE)
        .get_layer("classifier")
        .compute_dtype
        == "float32"
    )


def test_weight_table_zeroes_ignore_pixels() -> None:
    table = train.pixel_weight_table([1.0, 4.0], 2, IGNORE)
    assert table[0] == 1.0 and table[1] == 4.0 and table[IGNORE] == 0.0
    assert train.pixel_weight_table(None, 2, IGNORE)[:2].tolist() == [1.0, 1.0]


def test_check_masks_names_the_bad_value() -> None:
    train.check_masks(np.array([[0, 1, IGNORE]], np.uint8), 2, IGNORE, "x.npz")
    with pytest.raises(PipelineError, match=r"x\.npz: mask value 7"):
        train.check_masks(np.array([[0, 7]], np.uint8), 2, IGNORE, "x.npz")


def flip_used(mask: np.ndarray, originals: np.ndarray) -> str | None:
    """Which flip turns some original mask into `mask` (None if none does)."""
    transforms = {"none": lambda m: m, "lr": np.fliplr, "ud": np.flipud, "both": lambda m: np.flipud(np.fliplr(m))}
    for name, fn in transforms.items():
        if any(np.array_equal(fn(o), mask) for o in originals):
            return name
    return None


def test_flips_move_image_and_mask_together_and_replay_with_the_seed() -> None:
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, (16, 8, 8), dtype=np.uint8)
    images = np.repeat(masks[..., None] * 200, 3, axis=-1).astype(np.uint8)
    table = train.pixel_weight_table([1.0, 2.0], 2, IGNORE)

    def batches() -> list[tuple[np.ndarray, ...]]:
        ds = train.make_dataset(images, masks, {"method": "none"}, 16, table, flips=True, shuffle_seed=3)
        return [tuple(np.asarray(t) for t in batch) for batch in ds]

    ((x, y, w),) = batches()
    np.testing.assert_array_equal(x[..., 0] / 200, y)
    np.testing.assert_array_equal(w, table[y])
    flips = [flip_used(m, masks) for m in y]
    assert None not in flips, "every output must be a flipped copy of an input mask"
    assert len(set(flips)) > 1, "flips never applied"
    ((_, y2, _),) = batches()
    np.testing.assert_array_equal(y, y2)


@pytest.mark.e2e
def test_tiny_run_writes_the_contract_outputs(workdir: Path, tracking_uri: str) -> None:
    train.main()
    meta = json.loads((workdir / "models/train_meta.json").read_text())
    assert set(meta) == META_KEYS
    assert meta["from_logits"] is True and meta["num_classes"] == 2 and meta["ignore_index"] == IGNORE
    assert meta["normalization"] == {"method": "unit"} and len(meta["input_stats"]["mean"]) == 3
    assert meta["model_sha256"] == train.sha256(workdir / "models/model.keras")

    model = keras.models.load_model(workdir / "models/model.keras")
    assert tuple(model.output.shape) == (None, SIZE, SIZE, 2)
    assert_label_fields(meta, model, workdir / "data" / "processed")

    with open(workdir / "reports/train_history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["epoch", "loss", "val_loss", "val_mean_iou"]
    assert [r["epoch"] for r in rows] == [str(i + 1) for i in range(meta["epochs_run"])]
    metrics = json.loads((workdir / "reports/train_metrics.json").read_text())
    assert metrics["best_val_mean_iou"] == pytest.approx(meta["best_val_mean_iou"])
    assert 0.0 <= metrics["best_val_mean_iou"] <= 1.0 and metrics["images_per_second"] > 0

    run_id = json.loads((workdir / "models/train_run.json").read_text())["run_id"]
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.tags["stage"] == "train" and run.data.tags["model_sha256"] == meta["model_sha256"]
    assert run.data.params["learning_rate"] == "0.01"
    assert len(MlflowClient(tracking_uri).get_metric_history(run_id, "val_mean_iou")) == meta["epochs_run"]
    assert "train_history.csv" in {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id)}
    assert not list(workdir.glob(".models.*")), "temp dir left behind"


def assert_label_fields(meta: dict[str, Any], model: Any, processed: Path) -> None:
    """The label fields recomputed here: foreground shares of the splits, per-class IoU of the saved model on val."""
    for split in ("train", "val"):
        masks = load_split(processed, split)[1]
        valid = masks != IGNORE
        assert meta[f"{split}_foreground_share"] == pytest.approx((valid & (masks == 1)).sum() / valid.sum())
    images, masks, _ = load_split(processed, "val")
    val_ds = train.make_dataset(images, masks, {"method": "unit"}, TINY_PARAMS["batch_size"])
    pred = np.concatenate([np.asarray(model.predict_on_batch(x)).argmax(axis=-1) for x, _ in val_ds])
    valid = masks != IGNORE
    ious = [((valid & (masks == c) & (pred == c)).sum(), (valid & ((masks == c) | (pred == c))).sum()) for c in (0, 1)]
    expected = [float(tp / union) if union else None for tp, union in ious]
    assert meta["val_iou_per_class"] == pytest.approx(expected)


def test_class_weights_must_match_num_classes(workdir: Path) -> None:
    write_params(workdir, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(PipelineError, match=r"class_weights has 3 values but .* has 2 classes"):
        train.main()
    assert not (workdir / "models").exists()


@pytest.mark.e2e
def test_nan_loss_stops_the_stage_with_one_line(workdir: Path) -> None:
    write_params(workdir, backbone="resnet18", optimizer="sgd", learning_rate=1e30, epochs=3, augment_flips=False)
    result = subprocess.run([sys.executable, "-m", "pipeline.train"], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training loss became nan in epoch 1"), last
    assert "lower train.learning_rate" in last
    assert not (workdir / "models").exists()

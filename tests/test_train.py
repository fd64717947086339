"""Train stage: params validation, the tf.data pipeline, and tiny real runs (in-process and as `python -m`)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import normalization, train
from pipeline.errors import PipelineError
from pipeline.io import file_sha256
from pipeline.params import load_section
from pipeline.processed import Spec
from pipeline.resume import BACKUP_ROOT, Backup, backup_key
from pipeline.scratch import TINY_PARAMS as SCRATCH_PARAMS
from pipeline.scratch import deep_merge, make_repo
from pipeline.tracking import TRACKING_SWITCH
from pipeline.train_data import Batching, check_mask_values, pixel_weight_table, training_batches
from support import read_split, two_class_spec, write_processed

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
    "train_foreground_iou",
    "val_foreground_iou",
    "epochs",
    "min_loss",
    "loss",
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
    splits = {split: squares(n, seed=n) for split, n in (("train", 8), ("val", 4), ("test", 2))}
    write_processed(tmp_path / "data" / "processed", two_class_spec(SIZE, IGNORE), splits, shard_bytes=4000)
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


@pytest.mark.e2e
@pytest.mark.parametrize(("precision", "scaled"), [("float16", True), ("bfloat16", False)])
def test_half_precision_computes_in_16_bits_with_float32_logits_and_restores_the_policy(
    precision: str, scaled: bool
) -> None:
    params = train.TrainParams(**{**TINY_PARAMS, "mixed_precision": precision})
    model = train.build_model(params, (SIZE, SIZE, 3), 2, IGNORE)
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert model.get_layer("classifier").compute_dtype == precision
    assert model.get_layer("classifier").variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    outputs = model.predict_on_batch(np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert outputs.dtype == np.float32 and outputs.shape == (1, SIZE, SIZE, 2)
    assert (
        train.build_model(train.TrainParams(**TINY_PARAMS), (SIZE, SIZE, 3), 2, IGNORE)
        .get_layer("classifier")
        .compute_dtype
        == "float32"
    )


def test_weight_table_zeroes_ignore_pixels() -> None:
    table = pixel_weight_table([1.0, 4.0], 2, IGNORE)
    assert table[0] == 1.0 and table[1] == 4.0 and table[IGNORE] == 0.0
    assert pixel_weight_table(None, 2, IGNORE)[:2].tolist() == [1.0, 1.0]


def test_check_mask_values_names_the_bad_value() -> None:
    def counts(*values: int) -> np.ndarray:
        return np.bincount(np.array(values), minlength=256)

    check_mask_values(counts(0, 1, IGNORE), 2, IGNORE, "x.tfrecord")
    with pytest.raises(PipelineError, match=r"x\.tfrecord: mask value 7"):
        check_mask_values(counts(0, 7), 2, IGNORE, "x.tfrecord")


def test_a_bad_label_in_a_shard_fails_before_training_naming_the_shard(workdir: Path) -> None:
    images, masks = squares(4, seed=0)
    masks[2, 3, 3] = 7
    splits = {"train": (images, masks), "val": squares(2, seed=1), "test": squares(2, seed=2)}
    write_processed(workdir / "data" / "processed", two_class_spec(SIZE, IGNORE), splits, shard_bytes=1)
    with pytest.raises(PipelineError, match=r"train-00002\.tfrecord: mask value 7"):
        train.main()
    assert not (workdir / "models").exists()


def flip_used(mask: np.ndarray, originals: np.ndarray) -> str | None:
    """Which flip turns some original mask into `mask` (None if none does)."""
    transforms = {"none": lambda m: m, "lr": np.fliplr, "ud": np.flipud, "both": lambda m: np.flipud(np.fliplr(m))}
    for name, fn in transforms.items():
        if any(np.array_equal(fn(o), mask) for o in originals):
            return name
    return None


def stream(folder: Path, table: np.ndarray, epochs: range, buffer: int = 64) -> list[tuple[np.ndarray, ...]]:
    spec = Spec.load(folder)
    ds = training_batches(spec, folder, Batching(4, buffer, flips=True, seed=3), epochs, table)
    return [tuple(np.asarray(t) for t in batch) for batch in ds]


def test_flips_move_image_and_mask_together_and_replay_with_the_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, (16, 8, 8), dtype=np.uint8)
    images = np.repeat(masks[..., None] * 200, 3, axis=-1).astype(np.uint8)
    fields = {**two_class_spec(8, IGNORE), "normalization": {"method": "none"}}
    write_processed(tmp_path, fields, {"train": (images, masks)}, shard_bytes=300)
    table = pixel_weight_table([1.0, 2.0], 2, IGNORE)

    batches = stream(tmp_path, table, range(0, 1))
    x, y, w = (np.concatenate(column) for column in zip(*batches, strict=True))
    assert len(batches) == 4 and len(y) == 16
    np.testing.assert_array_equal(x[..., 0] / 200, y)
    np.testing.assert_array_equal(w, table[y])
    flips = [flip_used(m, masks) for m in y]
    assert None not in flips, "every output must be a flipped copy of an input mask"
    assert len(set(flips)) > 1, "flips never applied"
    assert sorted(m.tobytes() for m in y) != sorted(m.tobytes() for m in masks), "no mask was flipped"
    np.testing.assert_array_equal(y, np.concatenate([b[1] for b in stream(tmp_path, table, range(0, 1))]))


def test_each_epoch_is_a_function_of_seed_and_epoch_so_a_resumed_stream_matches(tmp_path: Path) -> None:
    """Epoch 2 started fresh (as a resumed training starts it) equals epoch 2 of a stream from epoch 0, while
    epochs differ from one another; a buffer smaller than the split still shuffles across shards."""
    images, masks = squares(12, seed=5)
    write_processed(tmp_path, two_class_spec(SIZE, IGNORE), {"train": (images, masks)}, shard_bytes=4000)
    table = pixel_weight_table(None, 2, IGNORE)
    for buffer in (64, 3):
        whole = stream(tmp_path, table, range(0, 3), buffer)
        assert len(whole) == 9
        resumed = stream(tmp_path, table, range(2, 3), buffer)
        for a, b in zip(whole[6:], resumed, strict=True):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        epochs = [np.concatenate([b[1] for b in whole[i : i + 3]]).tobytes() for i in (0, 3, 6)]
        assert len(set(epochs)) == 3, "every epoch must be shuffled differently"


def test_train_seed_zero_builds_the_same_kind_of_stream(tmp_path: Path) -> None:
    """`train.seed: 0` sets TensorFlow's global seed to 0, under which a tensor shuffle seed cannot be traced."""
    images, masks = squares(12, seed=5)
    write_processed(tmp_path, two_class_spec(SIZE, IGNORE), {"train": (images, masks)}, shard_bytes=4000)
    keras.utils.set_random_seed(0)
    first = stream(tmp_path, pixel_weight_table(None, 2, IGNORE), range(0, 2))
    keras.utils.set_random_seed(0)
    again = stream(tmp_path, pixel_weight_table(None, 2, IGNORE), range(0, 2))
    assert len(first) == 6
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.e2e
def test_tiny_run_writes_the_contract_outputs(workdir: Path, tracking_uri: str) -> None:
    train.main()
    meta = json.loads((workdir / "models/train_meta.json").read_text())
    assert set(meta) == META_KEYS
    assert meta["from_logits"] is True and meta["num_classes"] == 2 and meta["ignore_index"] == IGNORE
    assert meta["normalization"] == {"method": "unit"} and len(meta["input_stats"]["mean"]) == 3
    assert meta["model_sha256"] == file_sha256(workdir / "models/model.keras")

    model = keras.models.load_model(workdir / "models/model.keras")
    assert tuple(model.output.shape) == (None, SIZE, SIZE, 2)
    assert_label_fields(meta, model, workdir / "data" / "processed")

    with open(workdir / "reports/train_history.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["epoch", "loss", "val_loss", "val_mean_iou"]
    assert [r["epoch"] for r in rows] == [str(i + 1) for i in range(meta["epochs_run"])]
    assert meta["loss"] == "crossentropy"
    assert meta["min_loss"] == pytest.approx(min(float(r["loss"]) for r in rows), rel=1e-5)
    for key in ("train_foreground_iou", "val_foreground_iou"):
        column = "foreground_iou" if key.startswith("train") else key
        assert meta[key] == pytest.approx([float(r[column]) for r in rows], rel=1e-5)
    assert meta["epochs"] == TINY_PARAMS["epochs"]
    metrics = json.loads((workdir / "reports/train_metrics.json").read_text())
    assert metrics["best_val_mean_iou"] == pytest.approx(meta["best_val_mean_iou"])
    assert 0.0 <= metrics["best_val_mean_iou"] <= 1.0 and metrics["images_per_second"] > 0

    run_id = json.loads((workdir / "models/train_run.json").read_text())["run_id"]
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.tags["stage"] == "train" and run.data.tags["model_sha256"] == meta["model_sha256"]
    assert run.data.params["train.learning_rate"] == "0.01"
    assert len(MlflowClient(tracking_uri).get_metric_history(run_id, "val_mean_iou")) == meta["epochs_run"]
    assert "train_history.csv" in {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id)}
    assert not list(workdir.glob(".models.*")), "temp dir left behind"


def assert_label_fields(meta: dict[str, Any], model: Any, processed: Path) -> None:
    """The label fields recomputed here: foreground shares of the splits, per-class IoU of the saved model on val."""
    for split in ("train", "val"):
        masks = read_split(processed, split)[1]
        valid = masks != IGNORE
        assert meta[f"{split}_foreground_share"] == pytest.approx((valid & (masks == 1)).sum() / valid.sum())
    images, masks, _ = read_split(processed, "val")
    x = normalization.apply(images, {"method": "unit"})
    pred = np.asarray(model.predict_on_batch(x)).argmax(axis=-1)
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
def test_label_shares_are_those_of_the_consumed_batches(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault in the input path after the files (every training label sent to background on its way to fit)
    shows in train_meta.json, though the shards still hold foreground: the diagnosis reasons from what the model
    saw."""
    intact = train.training_batches

    def erased(*args: Any, **kwargs: Any) -> Any:
        return intact(*args, **kwargs).map(lambda x, y, w: (x, y * 0, w))

    monkeypatch.setattr(train, "training_batches", erased)
    train.main()
    meta = json.loads((workdir / "models/train_meta.json").read_text())
    assert meta["train_foreground_share"] == 0.0
    assert read_split(workdir / "data" / "processed", "train")[1].max() >= 1, "the shards keep their foreground"
    masks = read_split(workdir / "data" / "processed", "val")[1]
    valid = masks != IGNORE
    assert meta["val_foreground_share"] == pytest.approx((valid & (masks == 1)).sum() / valid.sum())


@pytest.mark.e2e
def test_the_saved_model_loads_with_keras_alone(workdir: Path) -> None:
    """The label metrics feed fit's logs only: model.keras loads, compiled, in a process that imports Keras and
    nothing of this project (as MLflow's Keras flavor or a user would load it)."""
    train.main()
    load = "import sys, keras; print(keras.models.load_model(sys.argv[1]).count_params())"
    done = subprocess.run(
        [sys.executable, "-c", load, str(workdir / "models/model.keras")],
        cwd=workdir.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0


@pytest.mark.e2e
def test_nan_loss_stops_the_stage_with_one_line(workdir: Path) -> None:
    write_params(workdir, backbone="resnet18", optimizer="sgd", learning_rate=1e30, epochs=3, augment_flips=False)
    result = subprocess.run([sys.executable, "-m", "pipeline.train"], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training loss became nan in epoch 1"), last
    assert "lower train.learning_rate" in last
    assert not (workdir / "models").exists()
    assert not (workdir / BACKUP_ROOT).exists(), "a resume would only diverge again: the backup must go"


def test_backup_key_changes_with_every_input_and_stale_backups_go(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text("{}")
    params = dataclasses.asdict(train.TrainParams(**TINY_PARAMS))
    key = backup_key(params, spec_file)
    assert key == backup_key(dict(params), spec_file)
    assert key != backup_key({**params, "learning_rate": 0.02}, spec_file)
    spec_file.write_text('{"image_size": 32}')
    assert key != backup_key(params, spec_file)
    root = tmp_path / "backups"
    (root / "stale").mkdir(parents=True)
    (root / key).mkdir()
    Backup(key, root).clear_others()
    assert [p.name for p in root.iterdir()] == [key]


FORCE_TRAIN = ("--force", "--single-item", "train")


def _backup_progress(repo: Path) -> int:
    """Epochs the training in `repo` has backed up (0 while none is)."""
    for latest in (repo / BACKUP_ROOT).glob("*/latest.json"):
        try:
            return int(json.loads(latest.read_text())["progress"]["epochs_done"])
        except (ValueError, KeyError, OSError):
            return 0
    return 0


@pytest.mark.e2e
def test_a_killed_training_resumes_after_its_last_epoch_with_the_uninterrupted_history(tmp_path: Path) -> None:
    """SIGKILL the whole `dvc repro` once train has backed up epoch 2 of 4; the same command again resumes there
    and ends with the history and metrics of a training that was never interrupted, and removes its backup.

    The uninterrupted training runs first in the same repository, so the killed and the resumed command force the
    train stage, which DVC would otherwise restore from that run.
    """
    params = deep_merge(SCRATCH_PARAMS, {"train": {"epochs": 4, "early_stopping_patience": 10, "batch_size": 2}})
    repo = make_repo(tmp_path / "repo", params)
    env = {**os.environ, TRACKING_SWITCH: "off"}

    def repro(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dvc", "repro", *args], cwd=repo, env=env, capture_output=True, text=True
        )

    def outcome() -> tuple[str, dict[str, Any]]:
        metrics = json.loads((repo / "reports/train_metrics.json").read_text())
        timing = ("train_seconds", "images_per_second")
        return (repo / "reports/train_history.csv").read_text(), {k: v for k, v in metrics.items() if k not in timing}

    assert repro("train").returncode == 0
    uninterrupted = outcome()
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", *FORCE_TRAIN],
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while _backup_progress(repo) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = _backup_progress(repo)
    assert 2 <= done < 4, f"killed after {done} epochs"
    assert not (repo / "reports/train_history.csv").exists()

    resumed = repro(*FORCE_TRAIN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"train: resuming after epoch {done}" in resumed.stdout
    assert outcome() == uninterrupted
    assert len(uninterrupted[0].splitlines()) == 5
    assert not (repo / BACKUP_ROOT).exists()

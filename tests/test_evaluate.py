"""End-to-end evaluate stage on a tiny hand-built model and dataset, in a temporary workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import evaluate, normalization
from pipeline.errors import PipelineError
from pipeline.io import write_json
from pipeline.stats import ChannelStats
from support import read_split, two_class_spec, write_processed
from test_diagnostics import assert_evidence_from_fields

REPO = Path(__file__).resolve().parents[1]
SIZE = 8
IGNORE = 255
METRIC_KEYS = {
    "mean_iou",
    "mean_accuracy",
    "pixel_accuracy",
    "absent_classes",
    "absent_class_names",
    "foreground_fraction",
    "true_foreground_fraction",
    "per_class_iou",
    "predicted_class_histogram",
    "true_class_histogram",
    "output_min",
    "output_max",
    "output_mean",
    "outputs_are_probabilities",
    "confusion_matrix",
}


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Foreground is a pure-red square; background has no red, so a 1x1 conv on red separates them."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    images[..., 1:] = rng.integers(0, 256, (n, SIZE, SIZE, 2))
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        r, c = 1 + i % 4, 2 + i % 3
        images[i, r : r + 3, c : c + 3] = (255, 0, 0)
        masks[i, r : r + 3, c : c + 3] = 1
    masks[:, 0, :2] = IGNORE
    return images, masks, [f"s{i}" for i in range(n)]


def input_stats(images: np.ndarray, spec: dict) -> dict[str, list[float]]:
    stats = ChannelStats()
    stats.update(normalization.apply(images, spec))
    return stats.result()


def save_model(red_weight: float, size: int = SIZE, path: Path = Path("models/model.keras")) -> None:
    """Logits: background 0, foreground red_weight * red - 2 (red in [0, 1] after unit normalization)."""
    import keras

    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(2, 1)
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 1] = red_weight
    conv.set_weights([kernel, np.array([0.0, -2.0], np.float32)])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


def write_params(**evaluate_params) -> None:
    section = {"postprocess": "argmax", "threshold": 0.5, "batch_size": 3, "n_overlays": 2, **evaluate_params}
    Path("params.yaml").write_text(yaml.safe_dump({"evaluate": section}), encoding="utf-8")


SPLIT_SIZES = {"train": (6, 0), "val": (2, 1), "test": (5, 2)}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Processed data, train_meta.json and params.yaml as the upstream stages would leave them (no model yet)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    write_splits()
    write_meta()
    write_params()
    return tmp_path


def write_splits(test_foreground: int = 1) -> None:
    """data/processed from `make_split`; the test masks' foreground pixels hold `test_foreground`."""
    splits = {split: make_split(n, seed)[:2] for split, (n, seed) in SPLIT_SIZES.items()}
    images, masks = splits["test"]
    splits["test"] = images, np.where(masks == 1, test_foreground, masks).astype(np.uint8)
    write_processed(Path("data/processed"), two_class_spec(SIZE, IGNORE), splits, shard_bytes=400)


def write_meta(**fields) -> None:
    """train_meta.json as train writes it for the workspace's data: normalization, input stats, label shares."""
    spec = two_class_spec(SIZE, IGNORE)
    meta = {
        "from_logits": True,
        "num_classes": 2,
        "ignore_index": IGNORE,
        "normalization": spec["normalization"],
        "input_stats": input_stats(make_split(6, 0)[0], spec["normalization"]),
        "class_weights": None,
        "epochs_run": 1,
        "best_val_mean_iou": 0.45,
        "model_sha256": "0" * 64,
        "train_foreground_share": foreground_share(make_split(6, 0)[1]),
        "val_foreground_share": foreground_share(make_split(2, 1)[1]),
        "val_iou_per_class": [0.9, 0.0],
        **fields,
    }
    write_json("models/train_meta.json", meta)


def foreground_share(masks: np.ndarray) -> float:
    valid = masks != IGNORE
    return float((valid & (masks != 0)).sum() / valid.sum())


def predict(images: np.ndarray) -> np.ndarray:
    """The saved model's raw outputs on unit-normalized images, outside the stage."""
    import keras

    model = keras.models.load_model("models/model.keras", compile=False)
    x = np.asarray(normalization.apply(images, two_class_spec(SIZE, IGNORE)["normalization"]))
    return np.asarray(model.predict(x, verbose=0))


def iou_per_class(masks: np.ndarray, pred: np.ndarray) -> list[float]:
    valid = masks != IGNORE
    return [
        float((valid & (masks == c) & (pred == c)).sum() / (valid & ((masks == c) | (pred == c))).sum()) for c in (0, 1)
    ]


def run() -> tuple[dict, dict]:
    evaluate.main()
    return json.loads(Path("reports/metrics.json").read_text(encoding="utf-8")), json.loads(
        Path("reports/evaluate/diagnostics.json").read_text(encoding="utf-8")
    )


def test_healthy_model_end_to_end(workspace):
    save_model(red_weight=4.0)
    scores, record = run()
    assert set(scores) >= METRIC_KEYS
    assert scores["mean_iou"] == pytest.approx(1.0)
    assert scores["per_class_iou"] == {"background": pytest.approx(1.0), "foreground": pytest.approx(1.0)}
    assert (scores["absent_classes"], scores["absent_class_names"]) == (0, [])
    assert scores["pixel_accuracy"] == pytest.approx(1.0) and scores["mean_accuracy"] == pytest.approx(1.0)
    assert scores["foreground_fraction"] == pytest.approx(scores["true_foreground_fraction"])
    assert scores["foreground_fraction"] == pytest.approx(5 * 9 / (5 * 62))
    assert sum(map(sum, scores["confusion_matrix"])) == 5 * (SIZE * SIZE - 2)
    assert (scores["output_min"], scores["output_max"], scores["outputs_are_probabilities"]) == (-2.0, 2.0, 0)
    assert (record["symptom"], record["category"], scores["all_zero_symptom"]) == (False, "none", 0)
    figures = {p.relative_to("reports/figures").as_posix() for p in Path("reports/figures").rglob("*.png")}
    assert figures == {"confusion_matrix.png", "class_shares.png", "overlays/test000.png", "overlays/test001.png"}
    assert_mlflow_run(
        json.loads(Path("reports/evaluate/evaluate_run.json").read_text(encoding="utf-8"))["run_id"], "none"
    )


def assert_mlflow_run(run_id: str, diagnosis: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    logged = client.get_run(run_id)
    assert logged.data.tags["diagnosis"] == diagnosis
    assert logged.data.metrics["iou_foreground"] == pytest.approx(1.0)
    # Outside a DVC project the run holds the stage's own section, named as in params.yaml.
    section = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["evaluate"]
    assert logged.data.params == {f"evaluate.{key}": str(value) for key, value in section.items()} | {
        "evaluate.overlay_names": "[]"
    }
    folders = ("figures", "figures/overlays", "evaluate")
    artifacts = {a.path for folder in folders for a in client.list_artifacts(run_id, folder) if not a.is_dir}
    assert artifacts == {
        "figures/confusion_matrix.png",
        "figures/class_shares.png",
        "figures/overlays/test000.png",
        "figures/overlays/test001.png",
        "evaluate/diagnostics.json",
    }


def test_threshold_postprocessing(workspace):
    """Foreground probability is sigmoid(2) ~ 0.88: a 0.8 threshold keeps it, 0.95 drops all of it."""
    save_model(red_weight=4.0)
    write_params(postprocess="threshold", threshold=0.8)
    scores, _ = run()
    assert scores["mean_iou"] == pytest.approx(1.0)
    write_params(postprocess="threshold", threshold=0.95)
    scores, record = run()
    assert scores["foreground_fraction"] == 0.0
    assert scores["reference_foreground_fraction"] > 0.0
    assert (record["symptom"], record["category"], record["cause"]) == (True, "postprocessing", "threshold_too_high")


@pytest.mark.e2e
def test_test_labels_without_foreground_score_below_a_perfect_run(workspace):
    """The label map sent foreground to the ignore index: the test labels hold background alone, all predicted
    right. The run must not look perfect: foreground counts 0 in mean_iou, flagged absent, and pixel accuracy,
    blind to a class the labels lack, is undefined (null, not logged)."""
    write_splits(test_foreground=IGNORE)
    save_model(red_weight=0.0)
    scores, record = run()
    assert scores["true_foreground_fraction"] == 0.0 and scores["confusion_matrix"][1] == [0, 0]
    assert scores["per_class_iou"] == {"background": 1.0, "foreground": 0.0}
    assert scores["mean_iou"] == pytest.approx(0.5) and scores["mean_accuracy"] == pytest.approx(0.5)
    assert (scores["absent_classes"], scores["absent_class_names"]) == (1, ["foreground"])
    assert scores["pixel_accuracy"] is None
    assert (scores["all_zero_symptom"], record["cause"]) == (1, "no_foreground_labels")
    import mlflow

    run_id = json.loads(Path("reports/evaluate/evaluate_run.json").read_text(encoding="utf-8"))["run_id"]
    logged = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).data.metrics
    assert (logged["mean_iou"], logged["absent_classes"], logged["all_zero_symptom"]) == (0.5, 1.0, 1.0)
    assert "pixel_accuracy" not in logged and "absent_class_names" not in logged


def test_collapsed_model_is_diagnosed_as_training(workspace):
    save_model(red_weight=0.0)
    scores, record = run()
    assert (scores["foreground_fraction"], scores["all_zero_symptom"]) == (0.0, 1)
    assert scores["per_class_iou"]["foreground"] == 0.0
    assert (record["category"], record["cause"]) == ("training", "collapse_to_majority")


def test_diagnostics_fields_recomputed_from_the_data(workspace):
    """The collapsed model's diagnostics: every field recomputed from the processed data and the model's outputs,
    and every evidence sentence's numbers are those fields."""
    save_model(red_weight=0.0)
    _, val_masks, _ = read_split(Path("data/processed"), "val")
    val_iou = iou_per_class(val_masks, predict(read_split(Path("data/processed"), "val")[0]).argmax(axis=-1))
    write_meta(val_iou_per_class=val_iou, best_val_mean_iou=float(np.mean(val_iou)))
    _, record = run()
    fields = record["fields"]
    images, masks, _ = read_split(Path("data/processed"), "test")
    outputs = predict(images)
    valid = masks != IGNORE
    assert fields["test_foreground_share"] == pytest.approx(foreground_share(masks))
    assert fields["predicted_foreground_share"] == pytest.approx(
        (valid & (outputs.argmax(-1) != 0)).sum() / valid.sum()
    )
    assert fields["output_range"] == pytest.approx([outputs.min(), outputs.max()])
    assert fields["output_mean"] == pytest.approx(outputs.mean(), rel=1e-5)
    assert fields["label_values"] == np.unique(masks).tolist()
    assert fields["ignored_share"] == pytest.approx((masks == IGNORE).mean())
    for split, key in (("train", "train_foreground_share"), ("val", "val_foreground_share")):
        assert fields[key] == pytest.approx(foreground_share(read_split(Path("data/processed"), split)[1]))
    assert fields["val_iou_per_class"] == pytest.approx(val_iou) and val_iou[1] == 0.0
    assert fields["val_foreground_iou"] == 0.0
    assert (record["category"], record["cause"]) == ("training", "collapse_to_majority")
    assert any(
        f"validation batches {100 * fields['val_foreground_share']:.3g}% foreground" in e for e in record["evidence"]
    )
    assert_evidence_from_fields(record)


def test_training_labels_without_foreground_are_diagnosed_not_found_foreground(workspace):
    """Training and validation labels without foreground score val mIoU 1.0 on background: labels, never a claim
    that the model found foreground."""
    save_model(red_weight=0.0)
    write_meta(
        best_val_mean_iou=1.0, train_foreground_share=0.0, val_foreground_share=0.0, val_iou_per_class=[1.0, None]
    )
    _, record = run()
    assert (record["symptom"], record["category"], record["cause"]) == (True, "labels", "training_labels_no_foreground")
    assert not any("found foreground" in line for line in record["evidence"])
    assert_evidence_from_fields(record)


def test_train_meta_without_the_label_fields_still_diagnoses(workspace):
    """A train_meta.json from before the label fields: read as unknown, the collapse diagnosis still stands."""
    save_model(red_weight=0.0)
    meta = json.loads(Path("models/train_meta.json").read_text(encoding="utf-8"))
    for key in ("train_foreground_share", "val_foreground_share", "val_iou_per_class"):
        del meta[key]
    write_json("models/train_meta.json", meta)
    _, record = run()
    assert (record["category"], record["cause"]) == ("training", "collapse_to_majority")
    assert record["fields"]["val_foreground_share"] is None


def test_training_inputs_normalized_differently_is_preprocessing(workspace):
    save_model(red_weight=0.0)
    write_meta(
        input_stats={"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-3.0] * 3, "max": [3.0] * 3},
        normalization={"method": "unit"},
    )
    _, record = run()
    assert (record["category"], record["cause"]) == ("preprocessing", "normalization_mismatch")


def test_malformed_training_stats_make_a_collapse_unknown(workspace):
    save_model(red_weight=0.0)
    write_meta(input_stats={"mean": "oops"}, normalization={"method": "unit"})
    _, record = run()
    assert (record["symptom"], record["category"], record["cause"]) == (True, "unknown", "insufficient_evidence")


def test_model_for_another_image_size_is_rejected(workspace):
    save_model(red_weight=4.0, size=16)
    with pytest.raises(PipelineError, match=r"models/model.keras: model input .* does not fit the test images"):
        evaluate.main()
    assert not Path("reports").exists()


def test_invalid_params_are_rejected(workspace):
    write_params(threshold=1.5)
    with pytest.raises(PipelineError, match=r"params\.yaml: evaluate: threshold"):
        evaluate.main()
    write_params(postprocess="softmax")
    with pytest.raises(PipelineError, match=r"evaluate\.postprocess"):
        evaluate.main()


def test_overlays_are_drawn_for_the_named_test_images(workspace):
    """By name, so every configuration draws the same images; a name outside the test split is an error."""
    save_model(red_weight=4.0)
    write_params(overlay_names=["test003", "test001"])
    run()
    assert sorted(p.name for p in Path("reports/figures/overlays").iterdir()) == ["test001.png", "test003.png"]
    write_params(overlay_names=["test009"])
    with pytest.raises(PipelineError, match=r"params\.yaml: evaluate\.overlay_names: 'test009' is not a test image"):
        evaluate.main()


def run_module(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.evaluate"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_missing_model_exits_2_naming_the_file(workspace):
    done = run_module(workspace)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: models/model.keras: not found (run the train stage first)"]
    assert not Path("reports").exists()


def test_corrupted_spec_exits_2_naming_the_file(workspace):
    Path("data/processed/spec.json").write_text('{"num_classes": 2, ', encoding="utf-8")
    done = run_module(workspace)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data/processed/spec.json: not valid JSON")

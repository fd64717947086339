"""The file contracts between stages: one type per file, and docs/contracts.md saying what the type says."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.train_meta import TrainMeta, confusion_matrix, iou_per_class

CONTRACTS = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"
META = TrainMeta(
    from_logits=True,
    num_classes=2,
    ignore_index=255,
    normalization={"method": "unit"},
    input_stats={"mean": [0.5] * 3, "std": [0.2] * 3, "min": [0.0] * 3, "max": [1.0] * 3},
    class_weights=[1.0, 2.0],
    epochs_run=3,
    best_val_mean_iou=0.8,
    model_sha256="0" * 64,
    train_foreground_share=0.08,
    val_foreground_share=0.07,
    val_iou_per_class=[0.97, 0.71],
    train_foreground_iou=[0.3, 0.71],
    val_foreground_iou=[0.0, 0.74],
    epochs=3,
    min_loss=0.12,
    loss="crossentropy",
)


def documented_keys(name: str) -> list[str]:
    """The backticked keys of the "`name` keys:" paragraph, leaving out what parentheses say about each."""
    text = CONTRACTS.read_text()
    paragraph = text[text.index(f"`{name}` keys:") :].split("\n\n", 1)[0]
    return re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", paragraph.split(":", 1)[1]))


def test_docs_list_exactly_the_fields_of_the_type() -> None:
    assert documented_keys("train_meta.json") == [f.name for f in dataclasses.fields(TrainMeta)]


def test_what_train_writes_evaluate_reads_back(tmp_path: Path) -> None:
    META.write(tmp_path / "train_meta.json")
    assert TrainMeta.read(tmp_path / "train_meta.json") == META


def test_malformed_fields_become_unknown_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "train_meta.json"
    path.write_text(
        json.dumps(
            {
                **dataclasses.asdict(META),
                "from_logits": "yes",
                "input_stats": {"mean": "oops"},
                "best_val_mean_iou": True,
                "epochs_run": 2.5,
                "val_foreground_iou": [0.5, 1.5],
                "epochs": 2.0,
                "min_loss": float("nan"),
                "loss": 3,
            }
        )
    )
    read = TrainMeta.read(path)
    assert (read.from_logits, read.input_stats, read.best_val_mean_iou, read.epochs_run) == (None, None, None, None)
    assert (read.val_foreground_iou, read.epochs, read.min_loss, read.loss) == (None, None, None, None)
    assert read.class_weights == [1.0, 2.0] and read.num_classes == 2


def test_a_file_from_before_the_label_fields_is_read_with_them_unknown(tmp_path: Path) -> None:
    path = tmp_path / "train_meta.json"
    old = dataclasses.asdict(META)
    for key in ("train_foreground_share", "val_foreground_share", "val_iou_per_class"):
        del old[key]
    path.write_text(json.dumps(old))
    read = TrainMeta.read(path)
    assert (read.train_foreground_share, read.val_foreground_share, read.val_iou_per_class) == (None, None, None)
    assert read.best_val_mean_iou == 0.8


def test_malformed_label_fields_become_unknown(tmp_path: Path) -> None:
    path = tmp_path / "train_meta.json"
    bad = {"train_foreground_share": 1.5, "val_foreground_share": "0.1", "val_iou_per_class": [0.9, "x"]}
    path.write_text(json.dumps({**dataclasses.asdict(META), **bad}))
    read = TrainMeta.read(path)
    assert (read.train_foreground_share, read.val_foreground_share, read.val_iou_per_class) == (None, None, None)
    path.write_text(json.dumps({**dataclasses.asdict(META), "val_iou_per_class": [1, None]}))
    assert TrainMeta.read(path).val_iou_per_class == [1.0, None]


def test_label_measurements_leave_out_ignore_and_absent_classes() -> None:
    """Counts are of the valid pixels; a class absent from truth and prediction has no IoU (None), not 1 or 0."""
    masks = np.array([[0, 0, 1, 255], [0, 0, 0, 255]], np.uint8)
    pred = np.array([[0, 0, 1, 1], [0, 1, 0, 1]])
    cm = confusion_matrix(masks, pred, 3, 255)
    assert cm.tolist() == [[4, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert iou_per_class(cm) == [pytest.approx(4 / 5), pytest.approx(1 / 2), None]


def test_a_file_that_is_not_an_object_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "train_meta.json"
    path.write_text("[1, 2]")
    with pytest.raises(PipelineError, match=f"{re.escape(str(path))}: expected a JSON object"):
        TrainMeta.read(path)

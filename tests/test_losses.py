"""The train stage's losses on tiny real tensors: soft Dice's edge cases, ignore pixels, the sum, and the params."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.losses import SegmentationLoss, segmentation_loss
from pipeline.params import load_section
from pipeline.train import TrainParams

IGNORE = 255
SURE = 30.0  # a logit margin that makes the softmax 0 or 1 in float32


def labels() -> np.ndarray:
    """Two 4x4 images: the first with a 2x2 foreground square and one ignore pixel, the second background only."""
    y = np.zeros((2, 4, 4), np.int32)
    y[0, 1:3, 1:3] = 1
    y[0, 3, 3] = IGNORE
    return y


def confident(predicted: np.ndarray) -> np.ndarray:
    """Two-class logits that put (softmax) probability 1 on `predicted` (class ids) everywhere."""
    fg = np.where(predicted == 1, SURE, -SURE).astype(np.float32)
    return np.stack([-fg, fg], axis=-1)


def dice(y: np.ndarray, logits: np.ndarray, smooth: float, weights: np.ndarray | None = None) -> float:
    return float(segmentation_loss("dice", 2, IGNORE, smooth)(y, logits, weights))


def test_a_perfect_prediction_costs_nothing() -> None:
    y = labels()
    assert dice(y, confident(y), smooth=1.0) == pytest.approx(0.0, abs=1e-6)


def test_predicting_background_on_an_image_with_foreground_costs_everything() -> None:
    y = labels()[:1]
    assert dice(y, confident(np.zeros_like(y)), smooth=0.0) == pytest.approx(1.0, abs=1e-6)
    # the smoothing is what an all-background prediction earns: 1 - 1 / (4 foreground pixels + 1)
    assert dice(y, confident(np.zeros_like(y)), smooth=1.0) == pytest.approx(0.8, abs=1e-6)


def test_ignore_pixels_count_for_nothing() -> None:
    y = labels()
    logits = confident(np.where(y == IGNORE, 0, y))
    flipped = logits.copy()
    flipped[0, 3, 3] = -flipped[0, 3, 3]  # foreground predicted on the ignore pixel
    assert dice(y, flipped, smooth=0.0) == pytest.approx(dice(y, logits, smooth=0.0), abs=1e-6)
    # labelled foreground, the same pixel would make the prediction imperfect
    assert dice(np.where(y == IGNORE, 1, y), logits, smooth=0.0) > 0.1


def test_smoothing_decides_what_a_background_only_image_rewards() -> None:
    y = labels()[1:]
    empty, some = confident(np.zeros_like(y)), confident(np.eye(4, dtype=np.int32)[None])
    # without smoothing the term is 1 whatever is predicted, finite even where nothing is predicted at all
    assert dice(y, some, smooth=0.0) == pytest.approx(1.0, abs=1e-6)
    assert math.isfinite(dice(y, empty, smooth=0.0))
    # with it an empty prediction is rewarded: 4 false alarms cost 4 / (4 + 1)
    assert dice(y, empty, smooth=1.0) == pytest.approx(0.0, abs=1e-6)
    assert dice(y, some, smooth=1.0) == pytest.approx(0.8, abs=1e-6)


def test_dice_is_the_mean_over_images() -> None:
    y = labels()
    logits = confident(np.zeros_like(y))
    assert dice(y, logits, smooth=0.0) == pytest.approx(
        (dice(y[:1], logits[:1], 0.0) + dice(y[1:], logits[1:], 0.0)) / 2
    )


def test_class_weights_weigh_the_soft_counts() -> None:
    y = labels()[:1]
    half = confident(np.zeros_like(y))
    half[0, 1, 1:3] = confident(np.ones((1, 2), np.int32))  # 2 of the 4 foreground pixels found
    weights = np.where(y == 1, 3.0, 1.0).astype(np.float32)
    # found 2 of 4 foreground pixels weighing 3: 1 - 2 * 6 / (6 + 12)
    assert dice(y, half, smooth=0.0, weights=weights) == pytest.approx(1 - 12 / 18, abs=1e-6)
    assert dice(y, half, smooth=0.0) == pytest.approx(1 - 4 / 6, abs=1e-6)


def test_the_sum_is_crossentropy_plus_dice() -> None:
    y = labels()
    logits = np.random.default_rng(0).normal(0, 2, (2, 4, 4, 2)).astype(np.float32)
    weights = np.where(y == 1, 3.0, 1.0).astype(np.float32)
    parts = [float(segmentation_loss(name, 2, IGNORE, 1.0)(y, logits, weights)) for name in ("crossentropy", "dice")]
    total = float(segmentation_loss("crossentropy+dice", 2, IGNORE, 1.0)(y, logits, weights))
    assert parts[0] > 0.1 and parts[1] > 0.1
    assert total == pytest.approx(sum(parts), rel=1e-6)


def test_crossentropy_is_keras_own_loss_as_before() -> None:
    loss = segmentation_loss("crossentropy", 2, IGNORE, 1.0)
    assert type(loss) is keras.losses.SparseCategoricalCrossentropy
    assert (
        loss.get_config()
        == keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE).get_config()
    )


def test_half_precision_logits_give_a_float32_loss() -> None:
    y = labels()
    loss = segmentation_loss("crossentropy+dice", 2, IGNORE, 1.0)(y, confident(y).astype(np.float16) / 10)
    assert loss.dtype == "float32" and math.isfinite(float(loss))


def test_a_model_trains_and_saves_with_the_summed_loss(tmp_path: Path) -> None:
    """One weighted step through Keras' compile and fit, and a save that reloads the loss from its config."""
    y = labels()
    x = np.where(y[..., None] == 1, 1.0, 0.0).astype(np.float32)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 1)])
    model.compile(optimizer="adam", loss=segmentation_loss("crossentropy+dice", 2, IGNORE, 1.0))
    history = model.fit(x, y, sample_weight=np.where(y == IGNORE, 0.0, 1.0), epochs=2, verbose=0)
    assert all(math.isfinite(v) for v in history.history["loss"])
    model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(restored.loss, SegmentationLoss) and restored.loss.dice_smooth == 1.0


def params_file(tmp_path: Path, **train: Any) -> Path:
    base = dataclasses.asdict(TrainParams("mobilenetv2", 0.35, 16, 8, 8, 1, 2, "adam", 0.01, None, False, 1, 0))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {**base, **train}}))
    return path


def test_the_params_default_to_crossentropy(tmp_path: Path) -> None:
    path = params_file(tmp_path)
    text = yaml.safe_load(path.read_text())
    del text["train"]["loss"], text["train"]["dice_smooth"]
    path.write_text(yaml.safe_dump(text))
    params = load_section("train", TrainParams, path)
    assert (params.loss, params.dice_smooth) == ("crossentropy", 1.0)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"loss": "focal"}, "loss"),
        ({"dice_smooth": -1.0}, "dice_smooth must be a non-negative number, got -1.0"),
        ({"dice_smooth": float("nan")}, "dice_smooth must be a non-negative number, got nan"),
    ],
)
def test_bad_loss_params_are_refused_in_one_line(tmp_path: Path, train: dict[str, Any], message: str) -> None:
    path = params_file(tmp_path, **train)
    with pytest.raises(PipelineError, match=message) as err:
        load_section("train", TrainParams, path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_validate_names_a_loss_it_does_not_know() -> None:
    params = TrainParams("mobilenetv2", 0.35, 16, 8, 8, 1, 2, "adam", 0.01, None, False, 1, 0, loss="focal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss must be crossentropy, dice or crossentropy\\+dice, got 'focal'"):
        params.validate()

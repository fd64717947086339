"""Each diagnostics rule on small synthetic evidence, including the cases that must say "unknown"."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.diagnostics import SYMPTOM_FLOOR, Evidence, all_zero_threshold, diagnose
from pipeline.params import ClassesParams
from pipeline.prepare import SplitLabels, map_labels

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?")


def renderings(value: Any) -> set[str]:
    """Every way the evidence may write a number held in `value` (nested): 3 significant digits, a percentage."""
    if isinstance(value, dict):
        return set().union(*(renderings(k) | renderings(v) for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return set().union(*(renderings(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {value} if re.fullmatch(r"-?\d+", value) else set()
    if isinstance(value, bool) or value is None:
        return set()
    shown = {f"{value:.3g}", f"{100.0 * value:.3g}%"}
    return shown | ({str(value)} if isinstance(value, int) else set())


def assert_evidence_from_fields(record: dict[str, Any]) -> None:
    """Every number in every evidence sentence is one of the record's `fields`, as the evidence formats it."""
    allowed = renderings(record["fields"])
    for sentence in record["evidence"]:
        numbers = NUMBER.findall(sentence)
        assert set(numbers) <= allowed, (sentence, set(numbers) - allowed)


UNIT_STATS = {"mean": [0.5, 0.45, 0.4], "std": [0.2, 0.2, 0.25], "min": [0.0] * 3, "max": [1.0] * 3}
HEALTHY = Evidence(
    num_classes=2,
    model_classes=2,
    ignore_index=255,
    foreground_fraction=0.05,
    reference_foreground_fraction=0.05,
    true_foreground_fraction=0.06,
    label_counts={0: 940, 1: 60},
    output_min=-6.0,
    output_max=5.0,
    output_mean=-1.0,
    outputs_are_probabilities=False,
    outputs_bounded=False,
    saturated_fraction=0.0,
    postprocess="argmax",
    threshold=0.5,
    max_foreground_probability=0.99,
    from_logits=True,
    best_val_mean_iou=0.47,
    class_weights=None,
    train_normalization={"method": "unit"},
    eval_normalization={"method": "unit"},
    train_input_stats=UNIT_STATS,
    eval_input_stats=UNIT_STATS,
    train_foreground_share=0.06,
    val_foreground_share=0.07,
    val_iou_per_class=[0.9, 0.04],
)
# Training and validation labels that lost their foreground (e.g. 255 mapped to ignore): validation then scores a
# mean IoU of 1.0 on background alone, which is no sign that the model found foreground.
NO_TRAINING_FOREGROUND = {
    "best_val_mean_iou": 1.0,
    "train_foreground_share": 0.0,
    "val_foreground_share": 0.0,
    "val_iou_per_class": [1.0, None],
}
ALL_ZERO = {"foreground_fraction": 0.0, "reference_foreground_fraction": 0.0}
PROBABILITIES = {
    "outputs_are_probabilities": True,
    "outputs_bounded": True,
    "output_min": 0.0,
    "output_max": 1.0,
    "output_mean": 0.5,
    "saturated_fraction": 0.97,
}


def verdict(**changes) -> tuple[str, str]:
    record = diagnose(dataclasses.replace(HEALTHY, **changes))
    return record["category"], record["cause"]


def test_healthy_model_has_no_symptom():
    record = diagnose(HEALTHY)
    assert (record["symptom"], record["category"], record["cause"]) == (False, "none", "none")
    assert any("predicted foreground 5%" in line for line in record["evidence"])


def test_inconsistencies_without_the_symptom_are_warnings_not_a_diagnosis():
    standardized = {"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-2.5] * 3, "max": [2.5] * 3}
    record = diagnose(dataclasses.replace(HEALTHY, foreground_fraction=0.9, train_input_stats=standardized))
    assert (record["symptom"], record["category"], record["cause"]) == (False, "none", "none")
    assert record["candidates"] == [{"category": "preprocessing", "cause": "normalization_mismatch"}]


def test_record_is_json_and_keeps_the_numbers():
    record = json.loads(json.dumps(diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO))))
    assert record["symptom"] is True
    assert record["numbers"]["true_foreground_fraction"] == 0.06
    assert record["numbers"]["label_counts"] == {"0": 940, "1": 60}
    fields = record["fields"]
    assert (fields["test_foreground_share"], fields["predicted_foreground_share"]) == (0.06, 0.0)
    assert (fields["train_foreground_share"], fields["val_foreground_share"]) == (0.06, 0.07)
    assert (fields["val_iou_per_class"], fields["val_foreground_iou"]) == ([0.9, 0.04], 0.04)
    assert fields["output_range"] == [-6.0, 5.0]


VARIANTS = {
    "healthy": {},
    "collapse": ALL_ZERO,
    "no_labels": {**ALL_ZERO, "true_foreground_fraction": 0.0, "label_counts": {0: 940, 255: 60}},
    "no_labels_no_ignore": {**ALL_ZERO, "true_foreground_fraction": 0.0, "label_counts": {0: 1000}},
    "out_of_range": {**ALL_ZERO, "label_counts": {0: 900, 1: 50, 2: 50}},
    "interpolated": {**ALL_ZERO, "label_counts": {0: 900, 1: 40, 2: 5, 17: 2, 128: 6, 200: 7, 255: 51}},
    "stats": {**ALL_ZERO, "train_input_stats": {"mean": [0.0] * 3, "std": [1.0] * 3}},
    "config": {**ALL_ZERO, "train_normalization": {"method": "standardize", "mean": [0.5] * 3, "std": [0.2] * 3}},
    "probabilities": {**ALL_ZERO, **PROBABILITIES},
    "postprocessing": {"foreground_fraction": 0.0},
    "threshold": {"foreground_fraction": 0.0, "postprocess": "threshold", "threshold": 0.9},
    "scaling": {"foreground_fraction": 0.0, "postprocess": "threshold", "outputs_bounded": True, "output_min": 0.5},
    "classes": {**ALL_ZERO, "model_classes": 3},
    "missing": {**ALL_ZERO, "train_input_stats": None},
    "lost_in_preprocessing": {
        **ALL_ZERO,
        "true_foreground_fraction": 0.0,
        "label_counts": {0: 1000},
        "raw_foreground_fraction": 0.13,
        "prepared_foreground_fraction": 0.12,
    },
    "one_channel": {**ALL_ZERO, **PROBABILITIES, "model_classes": 1, "output_min": 1.0, "output_max": 1.0},
    "double_softmax": {
        **PROBABILITIES,
        "foreground_fraction": 0.0,
        "postprocess": "threshold",
        "threshold": 0.8,
        "max_foreground_probability": 0.72,
    },
    "misaligned": {
        **ALL_ZERO,
        "loss": "crossentropy",
        "min_loss": 0.3,
        "train_foreground_ious": [0.05, 0.11],
        "val_foreground_ious": [0.0, 0.02],
    },
    "batchnorm": {**ALL_ZERO, "train_foreground_ious": [0.16, 0.36, 0.69, 0.68], "val_foreground_ious": [0.0] * 4},
    "stopped": {
        **ALL_ZERO,
        "train_foreground_ious": [0.16, 0.36],
        "val_foreground_ious": [0.0, 0.0],
        "epochs_run": 2,
        "max_epochs": 2,
    },
    "clipped": {
        **ALL_ZERO,
        "output_min": 0.0,
        "output_max": 0.283,
        "output_mean": 0.139,
        "outputs_bounded": True,
        "zero_output_fraction": 0.5,
        "fractional_output_fraction": 0.5,
    },
}


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
def test_every_evidence_sentence_is_formatted_from_the_fields(changes):
    record = json.loads(json.dumps(diagnose(dataclasses.replace(HEALTHY, **changes))))
    assert_evidence_from_fields(record)


def test_a_few_stray_foreground_pixels_still_count_as_all_zero():
    """Up to 5% of the true foreground's share is the symptom; above it is a (poor) prediction."""
    stray = diagnose(dataclasses.replace(HEALTHY, foreground_fraction=0.003, reference_foreground_fraction=0.003))
    assert (stray["symptom"], stray["all_zero_threshold"]) == (True, pytest.approx(0.003))
    assert not diagnose(dataclasses.replace(HEALTHY, foreground_fraction=0.0031))["symptom"]


def test_without_true_foreground_the_floor_decides():
    """Masks without foreground make the relative tolerance zero; a collapsed model's stray pixels still count."""
    no_labels = {"true_foreground_fraction": 0.0, "label_counts": {0: 940, 255: 60}}
    stray = diagnose(
        dataclasses.replace(HEALTHY, **no_labels, foreground_fraction=0.0006, reference_foreground_fraction=0.0006)
    )
    assert (stray["symptom"], stray["all_zero_threshold"], stray["cause"]) == (True, 0.001, "no_foreground_labels")
    assert not diagnose(dataclasses.replace(HEALTHY, **no_labels, foreground_fraction=0.002))["symptom"]
    assert all_zero_threshold(0.0) == SYMPTOM_FLOOR


def test_collapse_to_majority_with_healthy_labels_and_inputs():
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO))
    assert (record["category"], record["cause"]) == ("training", "collapse_to_majority")
    assert any("no class weights" in line for line in record["evidence"])


def test_collapse_when_validation_had_learned_foreground_is_unknown():
    """Validation labels with foreground and a foreground IoU above zero: the model did find foreground."""
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, best_val_mean_iou=0.8, val_iou_per_class=[0.95, 0.65]))
    assert (record["category"], record["cause"]) == ("unknown", "collapse_only_at_evaluation")
    assert any("found foreground in training" in line and "7%" in line for line in record["evidence"])
    assert (record["fields"]["val_foreground_share"], record["fields"]["val_foreground_iou"]) == (0.07, 0.65)
    assert_evidence_from_fields(record)


def test_training_labels_without_foreground_are_labels_never_found_foreground():
    """A perfect val mIoU from a background-only validation split must not count as having found foreground."""
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **NO_TRAINING_FOREGROUND))
    assert (record["category"], record["cause"]) == ("labels", "training_labels_no_foreground")
    assert any("the batches training consumed held no foreground" in line for line in record["evidence"])
    assert not any("found foreground" in line for line in record["evidence"])
    assert_evidence_from_fields(record)


def test_validation_labels_without_foreground_are_labels():
    changes = {**NO_TRAINING_FOREGROUND, "train_foreground_share": 0.06}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **changes))
    assert (record["category"], record["cause"]) == ("labels", "validation_labels_no_foreground")
    assert not any("found foreground" in line for line in record["evidence"])


def test_validation_without_foreground_iou_is_not_found_foreground():
    """Foreground in the validation labels but an IoU of 0 there: the collapse started in training."""
    changes = {"num_classes": 3, "model_classes": 3, "best_val_mean_iou": 0.5, "val_iou_per_class": [0.95, 0.0, None]}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **changes))
    assert (record["category"], record["cause"]) == ("training", "collapse_to_majority")
    assert not any("found foreground" in line for line in record["evidence"])
    assert_evidence_from_fields(record)


def test_high_val_mean_iou_without_per_class_evidence_is_unknown():
    """A train_meta.json written before the validation fields existed: a high mIoU alone proves nothing."""
    unknown = {"best_val_mean_iou": 1.0, "val_foreground_share": None, "val_iou_per_class": None}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **unknown))
    assert (record["category"], record["cause"]) == ("unknown", "insufficient_evidence")
    assert not any("found foreground" in line for line in record["evidence"])
    assert_evidence_from_fields(record)


def test_ignore_255_labels_everywhere_name_the_labels_with_every_split():
    """The test masks hold only background and ignore, and so did training's: labels, with the split shares."""
    no_labels = {"true_foreground_fraction": 0.0, "label_counts": {0: 940, 255: 60}}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **no_labels, **NO_TRAINING_FOREGROUND))
    assert (record["category"], record["cause"]) == ("labels", "no_foreground_labels")
    assert any("training batches 0% foreground, validation batches 0% foreground" in e for e in record["evidence"])
    assert not any("found foreground" in line for line in record["evidence"])
    assert_evidence_from_fields(record)


def test_missing_training_stats_is_unknown_not_collapse():
    assert verdict(**ALL_ZERO, train_input_stats=None) == ("unknown", "insufficient_evidence")


def test_no_foreground_labels_points_at_labels_and_mentions_ignore():
    record = diagnose(
        dataclasses.replace(HEALTHY, **ALL_ZERO, true_foreground_fraction=0.0, label_counts={0: 940, 255: 60})
    )
    assert (record["category"], record["cause"]) == ("labels", "no_foreground_labels")
    assert any("ignore index 255" in line for line in record["evidence"])


def test_no_foreground_labels_without_ignore_pixels_is_unknown():
    """All-background masks could come from the label map or from mask resizing: the masks cannot tell."""
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, true_foreground_fraction=0.0, label_counts={0: 1000}))
    assert (record["category"], record["cause"]) == ("unknown", "no_foreground_labels")
    assert any("cannot" in line or "alone" in line for line in record["evidence"])


def test_label_values_beyond_the_classes_point_at_labels():
    assert verdict(**ALL_ZERO, label_counts={0: 900, 1: 50, 2: 50}) == ("labels", "labels_out_of_range")


def test_a_continuum_of_label_values_points_at_mask_interpolation():
    counts = {0: 900, 1: 40, 2: 5, 17: 2, 128: 6, 200: 7, 255: 51}
    assert verdict(**ALL_ZERO, label_counts=counts) == ("preprocessing", "mask_interpolation")


def test_eval_inputs_unlike_training_inputs_point_at_preprocessing():
    standardized = {"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-2.5] * 3, "max": [2.5] * 3}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, train_input_stats=standardized))
    assert (record["category"], record["cause"]) == ("preprocessing", "normalization_mismatch")
    assert any("training stds" in line for line in record["evidence"])


def test_normalization_config_mismatch_points_at_preprocessing():
    train = {"method": "standardize", "mean": [0.5] * 3, "std": [0.2] * 3}
    assert verdict(**ALL_ZERO, train_normalization=train) == ("preprocessing", "normalization_mismatch")


def test_small_split_drift_is_not_a_normalization_mismatch():
    drift = {"mean": [0.55, 0.5, 0.42], "std": [0.25, 0.18, 0.3], "min": [0.0] * 3, "max": [1.0] * 3}
    assert verdict(**ALL_ZERO, eval_input_stats=drift) == ("training", "collapse_to_majority")


def test_probabilities_trained_as_logits_point_at_training():
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **PROBABILITIES))
    assert (record["category"], record["cause"]) == ("training", "from_logits_mismatch")
    assert any("97%" in line for line in record["evidence"])


def test_probabilities_with_unknown_loss_setting_are_unknown():
    assert verdict(**ALL_ZERO, **PROBABILITIES, from_logits=None) == ("unknown", "insufficient_evidence")


def test_raw_argmax_with_foreground_points_at_postprocessing():
    assert verdict(foreground_fraction=0.0) == ("postprocessing", "postprocessing_drops_foreground")


def test_threshold_above_every_probability():
    changes = {
        "foreground_fraction": 0.0,
        "postprocess": "threshold",
        "threshold": 0.9,
        "max_foreground_probability": 0.7,
    }
    assert verdict(**changes) == ("postprocessing", "threshold_too_high")


def test_threshold_on_rescaled_outputs_is_output_scaling():
    changes = {
        "foreground_fraction": 0.0,
        "postprocess": "threshold",
        "outputs_bounded": True,
        "output_min": 0.5,
        "output_max": 1.0,
    }
    assert verdict(**changes) == ("postprocessing", "output_scaling")


def test_two_implicated_stages_are_ambiguous():
    standardized = {"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-2.5] * 3, "max": [2.5] * 3}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **PROBABILITIES, train_input_stats=standardized))
    assert (record["category"], record["cause"]) == ("unknown", "ambiguous")
    assert {c["cause"] for c in record["candidates"]} == {"normalization_mismatch", "from_logits_mismatch"}


def test_postprocessing_with_double_softmax_model_is_ambiguous():
    changes = {**PROBABILITIES, "foreground_fraction": 0.0, "postprocess": "threshold"}
    assert verdict(**changes) == ("unknown", "ambiguous")


def test_model_and_data_class_counts_differ_is_unknown():
    assert verdict(**ALL_ZERO, model_classes=3) == ("unknown", "class_count_mismatch")


@pytest.mark.parametrize("fraction", [0.0, 0.02])
def test_no_symptom_means_none_even_with_odd_evidence(fraction):
    category, _ = verdict(foreground_fraction=0.02, reference_foreground_fraction=fraction, model_classes=3)
    assert category == "none"


def test_the_symptom_is_measured_against_the_raw_masks_foreground_too():
    """Labels that lost their foreground leave the test masks none; the raw masks still say how much there is, so
    a collapsed model that paints half a percent shows the symptom (the floor alone would hide it)."""
    lost = {"true_foreground_fraction": 0.0, "label_counts": {0: 1000}, "reference_foreground_fraction": 0.005}
    record = diagnose(dataclasses.replace(HEALTHY, **lost, foreground_fraction=0.005, raw_foreground_fraction=0.11))
    assert (record["symptom"], record["all_zero_threshold"]) == (True, pytest.approx(0.0055))
    assert not diagnose(dataclasses.replace(HEALTHY, **lost, foreground_fraction=0.005))["symptom"]
    assert all_zero_threshold(0.0, 0.11) == pytest.approx(0.0055)
    assert all_zero_threshold(0.06, 0.02) == pytest.approx(0.003)


def prepared_shares(raw: np.ndarray, label_map: dict[int, int]) -> dict[str, float | None]:
    """prepare's record of one split, from a raw mask through its own label map and counting."""
    mapped = map_labels(raw, label_map, Path("mask.png"))
    labels = SplitLabels(np.bincount(mapped.ravel(), minlength=256), int(np.count_nonzero(raw)))
    return labels.shares(ClassesParams(num_classes=2, names=["background", "foreground"], ignore_index=255))


RAW_MASK = np.where(np.add.outer(np.arange(20), np.arange(20)) < 6, 255, 0).astype(np.uint8)


LOST = {**ALL_ZERO, "true_foreground_fraction": 0.0, "label_counts": {0: 1000}}


def diagnose_lost(shares: dict[str, float | None]) -> dict[str, Any]:
    """Test masks without foreground or ignore pixels, with prepare's record of the split."""
    return diagnose(
        dataclasses.replace(
            HEALTHY,
            **LOST,
            raw_foreground_fraction=shares["raw_foreground_share"],
            prepared_foreground_fraction=shares["foreground_share"],
        )
    )


def test_foreground_prepare_wrote_but_the_processed_masks_lack_points_at_preprocessing():
    record = diagnose_lost(prepared_shares(RAW_MASK, {0: 0, 255: 1}))
    assert (record["category"], record["cause"]) == ("preprocessing", "mask_foreground_lost")
    assert record["fields"]["prepared_foreground_share"] == pytest.approx(21 / 400)
    assert_evidence_from_fields(record)
    # Without prepare's record the masks alone cannot tell the label map from the preprocessing.
    assert verdict(**LOST) == ("unknown", "no_foreground_labels")


def test_a_label_map_that_made_nothing_of_the_raw_foreground_points_at_labels():
    shares = prepared_shares(RAW_MASK, {0: 0, 255: 0})
    assert shares == {"raw_foreground_share": pytest.approx(21 / 400), "foreground_share": 0.0}
    record = diagnose_lost(shares)
    assert (record["category"], record["cause"]) == ("labels", "no_foreground_labels")
    assert_evidence_from_fields(record)
    # Raw masks without foreground either: nothing says where it went, or that there was any.
    empty = diagnose_lost(prepared_shares(np.zeros((20, 20), np.uint8), {0: 0, 255: 1}))
    assert (empty["category"], empty["cause"]) == ("unknown", "no_foreground_labels")


@pytest.mark.parametrize("size", [7, 13, 31])
def test_the_interpolated_value_count_is_a_field_and_matches_the_masks(size):
    """Class-id masks (0/1, an ignore border of 255) resized bilinearly: the count the sentence gives is the
    number of distinct values the resized masks hold between the classes and the ignore index."""
    mask = np.full((40, 40), 255, np.uint8)
    mask[4:-4, 4:-4] = 0
    mask[12:30, 10:33] = 1
    resized = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.BILINEAR))
    counts = np.bincount(resized.ravel(), minlength=256)
    between = [v for v in np.flatnonzero(counts) if 2 <= v < 255]
    record = diagnose(
        dataclasses.replace(HEALTHY, **ALL_ZERO, label_counts={int(v): int(counts[v]) for v in np.flatnonzero(counts)})
    )
    assert (record["category"], record["cause"]) == ("preprocessing", "mask_interpolation")
    assert record["fields"]["out_of_range_value_count"] == len(between) >= 3
    assert record["fields"]["out_of_range_value_span"] == [min(between), max(between)]
    assert record["evidence"][0].startswith(f"{len(between)} distinct mask values")
    assert_evidence_from_fields(json.loads(json.dumps(record)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def double_softmax(threshold: float) -> dict[str, Any]:
    """A softmax head under a logits loss, post-processed by a threshold on the softmax of its outputs."""
    probabilities = softmax(np.random.default_rng(0).normal(0.0, 8.0, (4, 8, 8, 2)))
    return {
        **PROBABILITIES,
        "foreground_fraction": 0.0,
        "output_min": float(probabilities.min()),
        "output_max": float(probabilities.max()),
        "postprocess": "threshold",
        "threshold": threshold,
        "max_foreground_probability": float(softmax(probabilities)[..., 1].max()),
    }


def test_a_threshold_above_the_double_softmax_ceiling_points_at_the_model():
    record = diagnose(dataclasses.replace(HEALTHY, **double_softmax(0.75)))
    assert (record["category"], record["cause"]) == ("training", "from_logits_mismatch")
    assert record["fields"]["max_foreground_probability"] <= record["fields"]["double_softmax_ceiling"]
    assert any("squashed twice" in line for line in record["evidence"])
    assert_evidence_from_fields(record)
    # A threshold too high for probabilities above that ceiling could be either stage's fault.
    above = {**double_softmax(0.75), "max_foreground_probability": 0.74}
    assert verdict(**above) == ("unknown", "ambiguous")


def test_a_softmax_over_one_channel_points_at_the_model():
    outputs = softmax(np.random.default_rng(1).normal(0.0, 3.0, (4, 8, 8, 1)))
    one = {"model_classes": 1, "output_min": float(outputs.min()), "output_max": float(outputs.max())}
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **{**PROBABILITIES, **one}))
    assert (record["category"], record["cause"]) == ("training", "single_channel_softmax")
    assert_evidence_from_fields(record)
    # One sigmoid channel varies: which side has the class count wrong stays open.
    sigmoid = 1.0 / (1.0 + np.exp(-np.random.default_rng(1).normal(0.0, 3.0, (4, 8, 8, 1))))
    varies = {"model_classes": 1, "output_min": float(sigmoid.min()), "output_max": float(sigmoid.max())}
    assert verdict(**ALL_ZERO, **varies) == ("unknown", "class_count_mismatch")


def keras_loss_of_the_prior(share: float, weights: list[float]) -> float:
    """Keras' weighted cross-entropy of the best constant prediction on labels holding `share` foreground."""
    import keras

    labels = (np.arange(1000) < round(share * 1000)).astype(np.int32).reshape(1, 10, 100)
    a, b = weights[0] * (1 - share), weights[1] * share
    logits = np.broadcast_to(np.log([a / (a + b), b / (a + b)]), (1, 10, 100, 2)).astype(np.float32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return float(loss(labels, logits, sample_weight=np.asarray(weights, np.float32)[labels]))


CROSS_ENTROPY = {"loss": "crossentropy", "class_weights": [1.0, 2.0], "train_foreground_share": 0.11}


def test_the_prior_loss_is_the_loss_keras_gives_the_class_prior():
    expected = keras_loss_of_the_prior(0.11, [1.0, 2.0])
    assert diagnose(dataclasses.replace(HEALTHY, **CROSS_ENTROPY))["fields"]["prior_loss"] == pytest.approx(
        expected, rel=1e-4
    )


def test_training_that_never_beat_the_class_prior_points_at_misaligned_pairs():
    prior = keras_loss_of_the_prior(0.11, [1.0, 2.0])
    flat = {
        **ALL_ZERO,
        **CROSS_ENTROPY,
        "train_foreground_ious": [0.02, 0.08, 0.12],
        "val_foreground_ious": [0.0] * 3,
        "val_iou_per_class": [0.89, 0.0],
    }
    record = diagnose(dataclasses.replace(HEALTHY, **flat, min_loss=0.97 * prior))
    assert (record["category"], record["cause"]) == ("labels", "misaligned_pairs")
    assert_evidence_from_fields(record)
    # A loss well below the prior: the images did teach it something, it collapsed later.
    assert verdict(**flat, min_loss=0.5 * prior) == ("training", "collapse_to_majority")
    # Foreground found in one validation epoch: not misaligned either.
    assert verdict(**{**flat, "val_foreground_ious": [0.0, 0.3, 0.1]}, min_loss=0.97 * prior)[1] != "misaligned_pairs"
    # The training batches' foreground learned: the images did tell the model where it is.
    assert verdict(**{**flat, "train_foreground_ious": [0.2, 0.4]}, min_loss=0.97 * prior)[1] != "misaligned_pairs"
    # Another loss than cross-entropy has no prior to compare with.
    assert verdict(**{**flat, "loss": "dice"}, min_loss=0.97 * prior) == ("training", "collapse_to_majority")


# Per-epoch foreground IoU on the training batches (BatchNorm in training mode) and on validation (inference mode),
# as train_meta.json records them: a healthy training finds validation foreground once it learned the training's.
LEARNING = [0.16, 0.36, 0.42, 0.51, 0.57, 0.61, 0.63]
HEALTHY_VALIDATION = [0.0, 0.0, 0.0, 0.014, 0.27, 0.55, 0.62]


def test_foreground_learned_in_training_mode_but_never_seen_in_inference_points_at_batchnorm():
    never = {**ALL_ZERO, "train_foreground_ious": LEARNING, "val_foreground_ious": [0.0] * 7, "epochs_run": 7}
    record = diagnose(dataclasses.replace(HEALTHY, **never))
    assert (record["category"], record["cause"]) == ("training", "batchnorm_statistics")
    assert record["fields"]["max_train_foreground_iou"] == max(LEARNING)
    assert_evidence_from_fields(record)
    # Validation found foreground once: the stored statistics work, whatever made the test predictions empty.
    assert verdict(**{**never, "val_foreground_ious": HEALTHY_VALIDATION})[1] != "batchnorm_statistics"
    # A model that never learned the training batches' foreground either: nothing points at the statistics.
    assert verdict(**{**never, "train_foreground_ious": [0.1, 0.2, 0.3]}) == ("training", "collapse_to_majority")
    # No validation foreground to find: its IoU of 0 proves nothing.
    assert verdict(**{**never, "val_foreground_share": 0.0})[1] == "validation_labels_no_foreground"


def test_a_training_that_ended_while_still_learning_points_at_too_few_epochs():
    early = {**ALL_ZERO, "train_foreground_ious": LEARNING[:2], "val_foreground_ious": [0.0, 0.0]}
    record = diagnose(dataclasses.replace(HEALTHY, **early, epochs_run=2, max_epochs=2))
    assert (record["category"], record["cause"]) == ("training", "stopped_while_learning")
    assert_evidence_from_fields(record)
    # Early stopping ended it before its budget: not a budget too small.
    assert verdict(**early, epochs_run=2, max_epochs=50) == ("training", "collapse_to_majority")
    # Its training foreground IoU had already peaked: more epochs were not learning.
    assert verdict(**{**early, "train_foreground_ious": [0.3, 0.2]}, epochs_run=2, max_epochs=2) == (
        "training",
        "collapse_to_majority",
    )


def classifier_logits() -> np.ndarray:
    """A 1x1 classifier over features in which the foreground logit lost to the background's everywhere, as a class
    imbalance leaves it early in training."""
    rng = np.random.default_rng(3)
    features = rng.normal(0.0, 1.0, (4, 8, 8, 6))
    logits = features @ rng.normal(0.0, 1.0, (6, 2))
    logits[..., 1] = logits[..., 0] - np.abs(logits[..., 1]) - 0.1
    return logits


def recorded(outputs: np.ndarray) -> dict[str, Any]:
    """The evidence evaluation records for these raw outputs."""
    from pipeline.evaluate import OutputStats

    stats = OutputStats()
    stats.update(outputs.astype(np.float32))
    return {
        "output_min": stats.low,
        "output_max": stats.high,
        "output_mean": stats.total / stats.count,
        "zero_output_fraction": stats.zero_fraction,
        "fractional_output_fraction": stats.fractional_fraction,
        "outputs_are_probabilities": stats.probabilities,
        "outputs_bounded": stats.bounded,
    }


def test_logits_clipped_at_zero_point_at_the_classifier_activation():
    logits = classifier_logits()
    record = diagnose(dataclasses.replace(HEALTHY, **ALL_ZERO, **recorded(np.maximum(logits, 0.0))))
    assert (record["category"], record["cause"]) == ("training", "clipped_logits")
    assert record["fields"]["zero_output_share"] > 0.5
    assert "clipped" in record["fields"]["output_kind"]
    assert_evidence_from_fields(record)
    # The same classifier without the ReLU: logits of both signs, a plain collapse.
    assert verdict(**ALL_ZERO, **recorded(logits)) == ("training", "collapse_to_majority")
    # Probabilities may underflow to exactly 0: they are not clipped logits.
    probabilities = {**PROBABILITIES, "zero_output_fraction": 0.5, "fractional_output_fraction": 0.5}
    assert verdict(**ALL_ZERO, **probabilities)[1] != "clipped_logits"


@pytest.mark.parametrize(
    "outputs",
    [
        pytest.param(lambda logits: softmax(logits).astype(np.int32), id="probabilities-truncated"),
        pytest.param(lambda logits: np.round(np.maximum(logits, 0.0)), id="clipped-and-rounded"),
        pytest.param(lambda logits: np.where(logits < -1.0, logits, np.maximum(logits, 0.0)), id="zeros-and-negatives"),
        pytest.param(lambda logits: np.abs(logits) * (np.arange(logits.size) > 0).reshape(logits.shape), id="one-zero"),
    ],
)
def test_outputs_never_below_zero_for_other_reasons_are_not_clipped_logits(outputs):
    """Whole numbers (outputs cast or thresholded inside the model), a floor other than 0, or zeros too rare to be
    a clipped channel: none names the classifier's activation."""
    evidence = recorded(outputs(classifier_logits()))
    assert verdict(**ALL_ZERO, **evidence)[1] != "clipped_logits"

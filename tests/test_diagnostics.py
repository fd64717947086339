"""Each diagnostics rule on small synthetic evidence, including the cases that must say "unknown"."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from pipeline.diagnostics import SYMPTOM_FLOOR, Evidence, all_zero_threshold, diagnose

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
    "interpolated": {**ALL_ZERO, "label_counts": {0: 900, 1: 40, 2: 3, 17: 2, 128: 4, 255: 51}},
    "stats": {**ALL_ZERO, "train_input_stats": {"mean": [0.0] * 3, "std": [1.0] * 3}},
    "config": {**ALL_ZERO, "train_normalization": {"method": "standardize", "mean": [0.5] * 3, "std": [0.2] * 3}},
    "probabilities": {**ALL_ZERO, **PROBABILITIES},
    "postprocessing": {"foreground_fraction": 0.0},
    "threshold": {"foreground_fraction": 0.0, "postprocess": "threshold", "threshold": 0.9},
    "scaling": {"foreground_fraction": 0.0, "postprocess": "threshold", "outputs_bounded": True, "output_min": 0.5},
    "classes": {**ALL_ZERO, "model_classes": 3},
    "missing": {**ALL_ZERO, "train_input_stats": None},
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
    assert any("training labels hold no foreground" in line for line in record["evidence"])
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
    assert any("training labels 0% foreground, validation labels 0% foreground" in e for e in record["evidence"])
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
    counts = {0: 900, 1: 40, 2: 3, 17: 2, 128: 4, 255: 51}
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

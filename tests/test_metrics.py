"""Metrics against a confusion matrix computed by hand, plus the IoU edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline import metrics

IGNORE = 255
# true:  0 0 1 / 1 255 2      pred: 0 1 1 / 1 2 0
# pairs (true, pred) without the ignore pixel: (0,0) (0,1) (1,1) (1,1) (2,0)
TRUE = np.array([[0, 0, 1], [1, IGNORE, 2]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], np.int64)
HAND_CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
NAMES = ["background", "foreground"]


def test_confusion_matrix_matches_hand_count_and_skips_ignore():
    cm = metrics.confusion_matrix(TRUE, PRED, 3, IGNORE)
    np.testing.assert_array_equal(cm, HAND_CM)
    assert cm.sum() == 5


def test_ignore_pixel_counts_when_no_ignore_index_is_given_only_if_in_range():
    """255 is out of range for 3 classes, so it is excluded even without an ignore index."""
    np.testing.assert_array_equal(metrics.confusion_matrix(TRUE, PRED, 3, None), HAND_CM)


def test_scores_from_hand_matrix():
    # IoU: class 0 1/(2+2-1), class 1 2/(2+3-2), class 2 0/(1+0-0)
    assert metrics.iou_per_class(HAND_CM) == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert metrics.mean_iou(HAND_CM) == pytest.approx(1 / 3)
    assert metrics.pixel_accuracy(HAND_CM) == pytest.approx(3 / 5)
    # recall: class 0 1/2, class 1 2/2, class 2 0/1
    assert metrics.class_accuracy(HAND_CM) == pytest.approx([0.5, 1.0, 0.0])
    assert metrics.mean_accuracy(HAND_CM) == pytest.approx(0.5)
    assert metrics.foreground_fraction(HAND_CM) == pytest.approx(3 / 5)
    np.testing.assert_allclose(metrics.true_histogram(HAND_CM), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(metrics.predicted_histogram(HAND_CM), [0.4, 0.6, 0.0])


def test_class_absent_from_the_labels_counts_zero_in_the_mean_and_is_named():
    cm = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    ious = metrics.iou_per_class(cm)
    assert math.isnan(ious[2])
    assert metrics.mean_iou(cm) == pytest.approx((3 / 5 + 2 / 4 + 0) / 3)
    summary = metrics.summarize(cm, ["bg", "a", "b"])
    assert summary["per_class_iou"] == {"bg": pytest.approx(3 / 5), "a": pytest.approx(2 / 4), "b": 0.0}
    assert summary["mean_iou"] == pytest.approx(np.mean(list(summary["per_class_iou"].values())))
    assert (summary["absent_classes"], summary["absent_class_names"]) == (1, ["b"])
    assert summary["pixel_accuracy"] is None
    assert summary["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 0) / 3)


def test_labels_without_foreground_never_score_as_the_best_run():
    """Foreground mapped to the ignore index leaves background alone in the test labels, all predicted right: the
    mean over the classes present would be a perfect 1.0, above any genuinely good model."""
    true = np.array([[0, 0, IGNORE], [0, IGNORE, IGNORE]])
    broken = metrics.summarize(metrics.confusion_matrix(true, np.zeros((2, 3), np.int64), 2, IGNORE), NAMES)
    assert broken["per_class_iou"] == {"background": 1.0, "foreground": 0.0}
    assert broken["mean_iou"] == pytest.approx(0.5)
    assert (broken["absent_classes"], broken["absent_class_names"]) == (1, ["foreground"])
    assert broken["pixel_accuracy"] is None and broken["mean_accuracy"] == pytest.approx(0.5)
    good = metrics.summarize(np.array([[900, 20], [10, 70]]), NAMES)
    assert good["absent_classes"] == 0 and good["absent_class_names"] == []
    for key in ("mean_iou", "mean_accuracy"):
        assert good[key] > broken[key], key
    assert good["pixel_accuracy"] == pytest.approx(970 / 1000)


def test_every_class_labelled_gives_the_mean_over_classes_present():
    """Where the test labels hold every class, which good configurations' do, mean_iou is the usual mean over the
    classes present: their figures do not move."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        cm = rng.integers(0, 50, (3, 3))
        cm[np.arange(3), rng.integers(0, 3, 3)] += 1  # no empty row
        assert metrics.absent_classes(cm).size == 0
        assert metrics.mean_iou(cm) == pytest.approx(np.nanmean(metrics.iou_per_class(cm)))
        assert metrics.pixel_accuracy(cm) == pytest.approx(np.trace(cm) / cm.sum())


def test_all_background_prediction_has_zero_foreground_fraction():
    true = np.array([0, 1, 1, 0, IGNORE])
    cm = metrics.confusion_matrix(true, np.zeros(5, np.int64), 2, IGNORE)
    assert metrics.foreground_fraction(cm) == 0.0
    summary = metrics.summarize(cm, ["background", "foreground"])
    assert summary["true_foreground_fraction"] == pytest.approx(0.5)
    assert summary["per_class_iou"] == {"background": pytest.approx(0.5), "foreground": 0.0}
    assert summary["confusion_matrix"] == [[2, 0], [2, 0]]


def test_no_valid_pixels_score_zero_and_metrics_json_stays_valid_json():
    cm = metrics.confusion_matrix(np.full(4, IGNORE), np.zeros(4, np.int64), 2, IGNORE)
    assert cm.sum() == 0
    assert metrics.mean_iou(cm) == 0.0
    assert metrics.mean_accuracy(cm) == 0.0
    assert math.isnan(metrics.pixel_accuracy(cm))
    assert metrics.foreground_fraction(cm) == 0.0
    summary = metrics.summarize(cm, ["background", "foreground"])
    assert summary["pixel_accuracy"] is None and summary["absent_classes"] == 2
    json.loads(json.dumps(summary, allow_nan=False))


def test_prediction_out_of_range_raises():
    with pytest.raises(ValueError, match="predicted class ids"):
        metrics.confusion_matrix(np.zeros(3), np.array([0, 1, 2]), 2, IGNORE)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.confusion_matrix(np.zeros(3), np.zeros(4), 2)

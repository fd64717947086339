"""Metrics against a confusion matrix computed by hand, plus the IoU edge cases."""

from __future__ import annotations

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
    assert metrics.foreground_fraction(HAND_CM) == pytest.approx(3 / 5)
    np.testing.assert_allclose(metrics.true_histogram(HAND_CM), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(metrics.predicted_histogram(HAND_CM), [0.4, 0.6, 0.0])


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean():
    cm = np.array([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    ious = metrics.iou_per_class(cm)
    assert math.isnan(ious[2])
    assert metrics.mean_iou(cm) == pytest.approx((3 / 5 + 2 / 4) / 2)
    summary = metrics.summarize(cm, ["bg", "a", "b"])
    assert set(summary["per_class_iou"]) == {"bg", "a"}


def test_class_only_predicted_counts_as_zero():
    cm = np.array([[4, 1], [0, 0]])
    assert metrics.iou_per_class(cm) == pytest.approx([0.8, 0.0])
    assert metrics.mean_iou(cm) == pytest.approx(0.4)


def test_all_background_prediction_has_zero_foreground_fraction():
    true = np.array([0, 1, 1, 0, IGNORE])
    cm = metrics.confusion_matrix(true, np.zeros(5, np.int64), 2, IGNORE)
    assert metrics.foreground_fraction(cm) == 0.0
    summary = metrics.summarize(cm, ["background", "foreground"])
    assert summary["true_foreground_fraction"] == pytest.approx(0.5)
    assert summary["per_class_iou"] == {"background": pytest.approx(0.5), "foreground": 0.0}
    assert summary["confusion_matrix"] == [[2, 0], [2, 0]]


def test_no_valid_pixels_gives_nan_not_a_crash():
    cm = metrics.confusion_matrix(np.full(4, IGNORE), np.zeros(4, np.int64), 2, IGNORE)
    assert cm.sum() == 0
    assert math.isnan(metrics.mean_iou(cm))
    assert math.isnan(metrics.pixel_accuracy(cm))
    assert metrics.foreground_fraction(cm) == 0.0


def test_prediction_out_of_range_raises():
    with pytest.raises(ValueError, match="predicted class ids"):
        metrics.confusion_matrix(np.zeros(3), np.array([0, 1, 2]), 2, IGNORE)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.confusion_matrix(np.zeros(3), np.zeros(4), 2)

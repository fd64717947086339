"""Name the likely cause of all-zero predictions from the evaluation's evidence (pure python/numpy).

Each rule reads only numbers that evaluation already has, and every evidence sentence is formatted from the
structured `fields` that diagnostics.json also holds, so a verdict can be checked by hand (or by a test) from it.
Rules that point at different stages never get resolved by precedence: when the evidence is contradictory or
missing, the category is "unknown" rather than a confident wrong answer.

Order of reasoning, given the all-zero symptom:
  1. The raw outputs' own argmax has foreground -> postprocessing (threshold_too_high, output_scaling,
     postprocessing_drops_foreground); earlier stages demonstrably produced foreground.
  2. Otherwise the consistency rules: labels (no_foreground_labels when ignore pixels stand where classes should,
     else unknown; labels_out_of_range; training_labels_no_foreground / validation_labels_no_foreground when the
     test masks hold foreground but the labels given to training hold none), preprocessing
     (mask_interpolation, normalization_mismatch), training (from_logits_mismatch), unknown
     (class_count_mismatch). Findings in more than one category -> unknown/ambiguous.
  3. Nothing inconsistent -> what the model's outputs and training history say: logits clipped at 0
     (training/clipped_logits), foreground learned in training mode only (training/batchnorm_statistics), a training
     cut off while learning (training/stopped_while_learning), a loss that never left the class prior's
     (labels/misaligned_pairs); else training/collapse_to_majority, unless evidence is missing
     (unknown/insufficient_evidence) or validation shows the model had learned foreground
     (unknown/collapse_only_at_evaluation: only from validation labels with foreground and a foreground IoU above
     zero, since training's validation mean IoU (Keras' MeanIoU) averages only the classes present and is perfect
     on a background-only split).
Without the symptom the category is none; consistency findings are still listed as candidates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# The all-zero symptom: predicted foreground at most SYMPTOM_RELATIVE of the foreground the data holds, and never
# less than SYMPTOM_FLOOR of the valid pixels. The data's foreground is the larger of the test masks' share and the
# raw masks' share before the label map (prepare's record): when the labels themselves lost their foreground, the
# test masks hold none, yet a collapsed model that still paints a fraction of a percent (how much depends on the
# CPU's kernels) must show the symptom.
SYMPTOM_RELATIVE = 0.05
SYMPTOM_FLOOR = 0.001
# Eval inputs whose channel mean moved by more than this many training stds, or whose std changed by
# more than this factor, were not normalized like the training inputs (split-to-split drift is far smaller).
MAX_MEAN_SHIFT_STDS = 1.0
MAX_STD_RATIO = 2.0
# Out-of-range label values this many or more, distinct, form a continuum: interpolated masks, not a label map.
MIN_INTERPOLATED_VALUES = 3
# A best validation mIoU this far above the background-only level means the model once found foreground.
LEARNED_MARGIN = 0.1
SATURATED = 0.99
# A lowest training loss at least this share of the class prior's loss, and foreground IoUs below CHANCE_IOU on the
# training batches and on validation: training learned nothing from the images (a healthy training ends near 0.2
# of the prior's loss with IoUs near 0.8; pairs misaligned against each other stay above 0.75 with IoUs near 0.1).
PRIOR_LOSS_SHARE = 0.7
CHANCE_IOU = 0.25
# A foreground IoU this high on the training batches (BatchNorm in training mode, the batch's own statistics) means
# the model learned the foreground; validation (inference mode, the moving statistics) finding none in any epoch
# then means the statistics stored for inference are wrong. A healthy training finds validation foreground by the
# epoch its training IoU passes about 0.5.
LEARNED_TRAIN_IOU = 0.6
# Raw outputs never below 0, at least this share of them exactly 0 and the others not all whole numbers are logits
# clipped by an activation: a linear classifier's logits take both signs and are exactly 0 almost nowhere, and
# outputs cast or thresholded to whole numbers (post-processing folded into the model) are no logits at all.
CLIPPED_SHARE = 0.05


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What evaluation measured; fields that the training side may not provide are optional."""

    num_classes: int
    model_classes: int
    ignore_index: int | None
    foreground_fraction: float
    reference_foreground_fraction: float
    true_foreground_fraction: float
    label_counts: dict[int, int]
    output_min: float
    output_max: float
    output_mean: float
    outputs_are_probabilities: bool
    outputs_bounded: bool
    saturated_fraction: float
    zero_output_fraction: float | None = None
    fractional_output_fraction: float | None = None
    postprocess: str = "argmax"
    threshold: float | None = None
    max_foreground_probability: float | None = None
    from_logits: bool | None = None
    best_val_mean_iou: float | None = None
    class_weights: list[float] | None = None
    train_normalization: dict[str, Any] | None = None
    eval_normalization: dict[str, Any] | None = None
    train_input_stats: dict[str, list[float]] | None = None
    eval_input_stats: dict[str, list[float]] | None = None
    train_foreground_share: float | None = None
    val_foreground_share: float | None = None
    val_iou_per_class: list[float | None] | None = None
    raw_foreground_fraction: float | None = None
    prepared_foreground_fraction: float | None = None
    train_foreground_ious: list[float] | None = None
    val_foreground_ious: list[float] | None = None
    epochs_run: int | None = None
    max_epochs: int | None = None
    min_loss: float | None = None
    loss: str | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    category: str
    cause: str
    evidence: list[str]


Fields = dict[str, Any]


def diagnose(ev: Evidence) -> dict[str, Any]:
    """The diagnostics record: symptom, category, cause, evidence strings, candidate findings, fields, raw numbers."""
    f = fields(ev)
    notes = observations(ev, f)
    if ev.foreground_fraction > f["all_zero_threshold"]:
        warnings = _consistency_findings(ev, f)
        none = Finding("none", "none", [e for w in warnings for e in w.evidence])
        return _record(ev, f, False, none, notes, warnings)
    findings = _findings(ev, f)
    return _record(ev, f, True, _verdict(ev, f, findings), notes, findings)


def all_zero_threshold(true_foreground_fraction: float, raw_foreground_fraction: float | None = None) -> float:
    """The largest predicted foreground share that still counts as the all-zero symptom, measured against the
    foreground the data holds: the test masks' share, or the raw masks' before the label map where larger."""
    held = max(true_foreground_fraction, raw_foreground_fraction or 0.0)
    return max(SYMPTOM_RELATIVE * held, SYMPTOM_FLOOR)


def fields(ev: Evidence) -> Fields:
    """The structured numbers every evidence sentence is formatted from (diagnostics.json's `fields`).

    Shares are of the valid pixels (neither ignore nor out of range); `val_foreground_iou` is the best validation
    IoU of any foreground class, None where unknown.
    """
    total = sum(ev.label_counts.values())
    ignored = ev.label_counts.get(ev.ignore_index, 0) if ev.ignore_index is not None else 0
    out_of_range = {v: c for v, c in sorted(ev.label_counts.items()) if v >= ev.num_classes and v != ev.ignore_index}
    foreground_ious = [v for v in (ev.val_iou_per_class or [])[1:] if v is not None]
    shift, ratio = _stats_comparison(ev.train_input_stats, ev.eval_input_stats)
    return {
        "num_classes": ev.num_classes,
        "model_classes": ev.model_classes,
        "ignore_index": ev.ignore_index,
        "predicted_foreground_share": ev.foreground_fraction,
        "reference_foreground_share": ev.reference_foreground_fraction,
        "test_foreground_share": ev.true_foreground_fraction,
        "raw_foreground_share": ev.raw_foreground_fraction,
        "prepared_foreground_share": ev.prepared_foreground_fraction,
        "all_zero_threshold": all_zero_threshold(ev.true_foreground_fraction, ev.raw_foreground_fraction),
        "label_values": sorted(ev.label_counts),
        "ignored_share": ignored / total if total else 0.0,
        "out_of_range_labels": {str(v): c for v, c in out_of_range.items()},
        "out_of_range_value_count": len(out_of_range),
        "out_of_range_value_span": [min(out_of_range), max(out_of_range)] if out_of_range else None,
        "output_range": [ev.output_min, ev.output_max],
        "output_mean": ev.output_mean,
        "output_kind": output_kind(ev),
        "double_softmax_ceiling": math.e / (math.e + max(ev.model_classes, 2) - 1),
        "saturated_share": ev.saturated_fraction,
        "saturated_level": SATURATED,
        "zero_output_share": ev.zero_output_fraction,
        "fractional_output_share": ev.fractional_output_fraction,
        "postprocess": ev.postprocess,
        "threshold": ev.threshold,
        "max_foreground_probability": ev.max_foreground_probability,
        "from_logits": ev.from_logits,
        "train_foreground_share": ev.train_foreground_share,
        "val_foreground_share": ev.val_foreground_share,
        "val_iou_per_class": ev.val_iou_per_class,
        "val_foreground_iou": max(foreground_ious) if foreground_ious else None,
        "max_train_foreground_iou": max(ev.train_foreground_ious) if ev.train_foreground_ious else None,
        "last_train_foreground_iou": ev.train_foreground_ious[-1] if ev.train_foreground_ious else None,
        "max_val_foreground_iou": max(ev.val_foreground_ious) if ev.val_foreground_ious else None,
        "epochs_run": ev.epochs_run,
        "max_epochs": ev.max_epochs,
        "loss": ev.loss,
        "min_loss": ev.min_loss,
        "prior_loss": prior_loss(ev),
        "best_val_mean_iou": ev.best_val_mean_iou,
        "background_only_iou": 1.0 / ev.num_classes,
        "class_weights": ev.class_weights,
        "train_normalization": ev.train_normalization,
        "eval_normalization": ev.eval_normalization,
        "train_input_mean": (ev.train_input_stats or {}).get("mean"),
        "train_input_std": (ev.train_input_stats or {}).get("std"),
        "eval_input_mean": (ev.eval_input_stats or {}).get("mean"),
        "eval_input_std": (ev.eval_input_stats or {}).get("std"),
        "input_mean_shift_stds": shift,
        "input_std_ratio": ratio,
    }


def _consistency_findings(ev: Evidence, f: Fields) -> list[Finding]:
    """Rules that do not need the symptom; reported as warnings on a healthy-looking prediction."""
    rules = (class_count_rule, labels_rule, normalization_rule, from_logits_rule)
    return [finding for finding in (rule(ev, f) for rule in rules) if finding is not None]


def _findings(ev: Evidence, f: Fields) -> list[Finding]:
    """Post-processing is decisive: if the raw outputs' argmax has foreground, earlier stages produced it."""
    post = postprocessing_rule(ev, f)
    if post is not None:
        logits = from_logits_rule(ev, f)
        if logits is not None and post.cause == "threshold_too_high" and _capped_by_double_softmax(f):
            return [_double_softmax_caps_threshold(logits, f)]
        return [post] + ([logits] if logits is not None else [])
    return _consistency_findings(ev, f)


def _capped_by_double_softmax(f: Fields) -> bool:
    """No probability above the ceiling a softmax of probabilities has: the outputs were squashed twice."""
    return f["max_foreground_probability"] <= f["double_softmax_ceiling"] * (1 + 1e-6)


def _double_softmax_caps_threshold(logits: Finding, f: Fields) -> Finding:
    """A threshold out of reach only because the model's probabilities went through a second softmax: the model,
    not the post-processing, is what a fix changes."""
    ceiling = (
        f"the largest foreground probability {_num(f['max_foreground_probability'])} stays under "
        f"{_num(f['double_softmax_ceiling'])}, the most a softmax of probabilities over {f['model_classes']} classes "
        f"can give (e / (e + classes - 1)): the threshold {_num(f['threshold'])} is out of reach because the "
        "outputs were squashed twice, and would not be for a model trained on logits"
    )
    return Finding(logits.category, logits.cause, [*logits.evidence, ceiling])


def _verdict(ev: Evidence, f: Fields, findings: list[Finding]) -> Finding:
    categories = {finding.category for finding in findings}
    if len(categories) > 1:
        names = ", ".join(f"{finding.category}/{finding.cause}" for finding in findings)
        return Finding("unknown", "ambiguous", [f"several stages are implicated, evidence cannot choose: {names}"])
    if findings:
        return Finding(findings[0].category, findings[0].cause, [e for x in findings for e in x.evidence])
    return collapse_rule(ev, f)


def postprocessing_rule(ev: Evidence, f: Fields) -> Finding | None:
    """The argmax over the class axis of the raw outputs has foreground, the post-processed prediction none."""
    if ev.reference_foreground_fraction <= f["all_zero_threshold"]:
        return None
    lines = [
        f"argmax over the class axis (the last) of the raw outputs predicts "
        f"{_pct(f['reference_foreground_share'])} foreground, the post-processed prediction "
        f"{_pct(f['predicted_foreground_share'])}"
    ]
    low, high = f["output_range"]
    if ev.postprocess == "threshold" and ev.outputs_bounded and not ev.outputs_are_probabilities:
        lines.append(
            f"raw outputs lie in [{_num(low)}, {_num(high)}] but do not sum to one over classes: "
            "rescaled outputs, so the threshold compares the wrong scale"
        )
        return Finding("postprocessing", "output_scaling", lines)
    if (
        ev.postprocess == "threshold"
        and f["max_foreground_probability"] is not None
        and f["threshold"] is not None
        and f["max_foreground_probability"] < f["threshold"]
    ):
        lines.append(
            f"threshold {_num(f['threshold'])} exceeds the largest foreground probability "
            f"{_num(f['max_foreground_probability'])} of any pixel"
        )
        return Finding("postprocessing", "threshold_too_high", lines)
    return Finding("postprocessing", "postprocessing_drops_foreground", lines)


def class_count_rule(ev: Evidence, f: Fields) -> Finding | None:
    """A model with a different number of output classes than the data: which side is wrong is unknowable, unless
    the model has one channel that outputs 1 everywhere, a softmax over a single channel that nothing can train."""
    if f["model_classes"] == f["num_classes"]:
        return None
    if f["model_classes"] == 1 and f["output_range"] == [1.0, 1.0]:
        return Finding(
            "training",
            "single_channel_softmax",
            [
                f"the model outputs {f['model_classes']} class where the data declares {f['num_classes']}, and every "
                f"raw output is {_num(ev.output_max)}: a softmax over a single channel is 1 whatever its input, so "
                "training has no gradient to follow and the argmax is class 0 everywhere"
            ],
        )
    return Finding(
        "unknown",
        "class_count_mismatch",
        [f"the model outputs {f['model_classes']} classes, the processed data declares {f['num_classes']}"],
    )


def labels_rule(ev: Evidence, f: Fields) -> Finding | None:
    """Test masks without foreground or with class ids the model cannot output; training labels without foreground."""
    out_of_range = f["out_of_range_labels"]
    if f["out_of_range_value_count"] >= MIN_INTERPOLATED_VALUES:
        low, high = f["out_of_range_value_span"]
        return Finding(
            "preprocessing",
            "mask_interpolation",
            [
                f"{f['out_of_range_value_count']} distinct mask values between the class ids and the ignore index "
                f"(from {low} to {high}): masks were interpolated, not resized with nearest"
            ],
        )
    if out_of_range:
        listed = ", ".join(f"{v} ({c} px)" for v, c in out_of_range.items())
        return Finding(
            "labels",
            "labels_out_of_range",
            [
                f"mask values {listed} are >= num_classes {f['num_classes']} "
                f"and not the ignore index {f['ignore_index']}"
            ],
        )
    if f["test_foreground_share"] <= 0.0:
        return _no_foreground_labels(f)
    return _no_foreground_training_labels(f)


def _no_foreground_labels(f: Fields) -> Finding:
    """Masks without foreground: ignore pixels where it should be point at the label map, and so does a label map
    that made nothing of the raw masks' foreground; foreground that prepare wrote but the processed masks lack was
    lost in mask preprocessing. Without prepare's record the test masks alone cannot tell which.
    """
    lines = ["the test masks contain no foreground class id at all"]
    split_shares = _split_shares(f)
    if split_shares:
        shares = [f[key] for key in ("train_foreground_share", "val_foreground_share") if f[key] is not None]
        lines.append(split_shares + (": no split holds any foreground" if not any(shares) else ""))
    if not f["ignored_share"]:
        return _where_the_foreground_went(f, lines)
    lines.append(
        f"{_pct(f['ignored_share'])} of mask pixels hold the ignore index {f['ignore_index']}: "
        "the label map sends real classes to ignore "
        "(e.g. foreground stored as the ignore value and mapped to ignore, or ids shifted by one)"
    )
    return Finding("labels", "no_foreground_labels", lines)


def _where_the_foreground_went(f: Fields, lines: list[str]) -> Finding:
    """No foreground and no ignore pixel in the test masks: prepare's record of the same split says which stage
    lost it (the raw masks' non-zero share before the label map, the prepared masks' foreground after it)."""
    raw, prepared = f["raw_foreground_share"], f["prepared_foreground_share"]
    if prepared is not None and prepared > 0.0:
        lines.append(
            f"prepare wrote the test masks with {_pct(prepared)} foreground, the processed test masks hold none: "
            "the foreground was lost after prepare, in mask preprocessing (reading, resizing or scaling the masks)"
        )
        return Finding("preprocessing", "mask_foreground_lost", lines)
    if prepared is not None and raw is not None and raw > 0.0:
        lines.append(
            f"{_pct(raw)} of the raw test mask pixels are not 0, yet the label map made none of them foreground"
        )
        return Finding("labels", "no_foreground_labels", lines)
    lines.append(
        "no pixel holds the ignore index either: the foreground was lost in labelling or in mask "
        "preprocessing (or the test split has none), which the masks alone cannot tell apart"
    )
    return Finding("unknown", "no_foreground_labels", lines)


def _no_foreground_training_labels(f: Fields) -> Finding | None:
    """The test masks hold foreground, but the training or validation labels hold none.

    A model trained without foreground cannot predict any; a validation split without foreground scores a mean
    IoU of 1.0 on background alone (only the classes present are averaged), which proves nothing.
    """
    train, val = f["train_foreground_share"], f["val_foreground_share"]
    if train is not None and train <= 0.0:
        cause, what = "training_labels_no_foreground", "the batches training consumed held no foreground"
    elif val is not None and val <= 0.0:
        cause, what = "validation_labels_no_foreground", "the validation batches held no foreground"
    else:
        return None
    return Finding(
        "labels",
        cause,
        [
            f"{what}: {_split_shares(f)}, while {_pct(f['test_foreground_share'])} of the valid test pixels are "
            "foreground; the labels given to training lost their foreground (label map or split)"
        ],
    )


def _split_shares(f: Fields) -> str:
    """The labels as the model consumed them, batch by batch (train_meta.json), not as the files hold them."""
    parts = [
        f"{name} batches {_pct(f[key])} foreground"
        for name, key in (("training", "train_foreground_share"), ("validation", "val_foreground_share"))
        if f[key] is not None
    ]
    return ", ".join(parts)


def normalization_rule(ev: Evidence, f: Fields) -> Finding | None:
    """Evaluation inputs normalized unlike the training inputs (config or measured statistics differ)."""
    lines = []
    train, evaluation = f["train_normalization"], f["eval_normalization"]
    if train is not None and evaluation is not None and not _same_normalization(train, evaluation):
        lines.append(f"training normalization {_norm(train)} differs from evaluation's {_norm(evaluation)}")
    shift, ratio = f["input_mean_shift_stds"], f["input_std_ratio"]
    if shift is not None and ratio is not None and _stats_differ(shift, ratio):
        lines.append(
            f"evaluation inputs have per-channel mean {_vec(f['eval_input_mean'])} "
            f"and std {_vec(f['eval_input_std'])}, "
            f"training inputs mean {_vec(f['train_input_mean'])} and std {_vec(f['train_input_std'])} "
            f"(largest shift {_num(shift)} training stds, std ratio from {_num(ratio[0])} to {_num(ratio[1])})"
        )
    return Finding("preprocessing", "normalization_mismatch", lines) if lines else None


def from_logits_rule(ev: Evidence, f: Fields) -> Finding | None:
    """Outputs are already probabilities although training treated them as logits (softmax twice)."""
    if not (ev.outputs_are_probabilities and f["from_logits"]):
        return None
    low, high = f["output_range"]
    return Finding(
        "training",
        "from_logits_mismatch",
        [
            f"raw outputs are probabilities (in [{_num(low)}, {_num(high)}], summing to one over classes) "
            "but training used from_logits=true",
            f"{_pct(f['saturated_share'])} of pixels have a class probability >= {_num(f['saturated_level'])}",
        ],
    )


def collapse_rule(ev: Evidence, f: Fields) -> Finding:
    """All-background from the raw outputs with healthy labels and inputs: the model learned only the majority.

    It claims the model found foreground in training only from the validation split's own foreground: labels
    with foreground and a foreground IoU above zero; a high val mIoU alone may be background scoring 1.0.
    """
    missing = [
        name
        for name, value in (
            ("training input stats", ev.train_input_stats),
            ("evaluation input stats", ev.eval_input_stats),
        )
        if value is None
    ]
    if ev.outputs_are_probabilities and f["from_logits"] is None:
        missing.append("whether training treated outputs as logits")
    if missing:
        return Finding(
            "unknown", "insufficient_evidence", [f"cannot rule out other causes without: {', '.join(missing)}"]
        )
    learned = clipped_logits_rule(ev, f) or batchnorm_rule(f) or stopped_rule(f) or prior_rule(f)
    if learned is not None:
        return learned
    best, background_only = f["best_val_mean_iou"], f["background_only_iou"]
    val_share, val_iou = f["val_foreground_share"], f["val_foreground_iou"]
    if best is not None and best > background_only + LEARNED_MARGIN:
        if val_share is None or val_iou is None:
            return Finding(
                "unknown",
                "insufficient_evidence",
                [
                    f"best validation mIoU {_num(best)} is above the background-only level {_num(background_only)}, "
                    "but without the validation labels' foreground share and per-class IoU it cannot show that the "
                    "model learned a foreground class (a split without foreground scores a perfect mIoU on background)"
                ],
            )
        if val_share > 0.0 and val_iou > 0.0:
            return Finding(
                "unknown",
                "collapse_only_at_evaluation",
                [
                    f"best validation mIoU {_num(best)} is well above the background-only level "
                    f"{_num(background_only)}, with {_pct(val_share)} foreground in the validation labels and a "
                    f"foreground IoU of {_num(val_iou)}: the model found foreground in training, yet predicts none here"
                ],
            )
    lines = [
        f"argmax of the raw outputs is background everywhere although {_pct(f['test_foreground_share'])} of "
        "valid pixels are foreground, with labels and input normalization consistent with training"
    ]
    if best is not None:
        lines.append(f"best validation mIoU {_num(best)} (background-only level {_num(background_only)})")
    if val_share is not None and val_iou is not None:
        lines.append(f"validation batches {_pct(val_share)} foreground, foreground IoU {_num(val_iou)}")
    if f["class_weights"] is None:
        lines.append("training used no class weights")
    return Finding("training", "collapse_to_majority", lines)


def clipped_logits_rule(ev: Evidence, f: Fields) -> Finding | None:
    """Logits never below 0 and often exactly 0 went through an activation that clips them (a ReLU on the
    classifier): a foreground logit that the majority of background pixels push below 0 stops there with no gradient
    to bring it back, and argmax breaks a tie between two zeros toward class 0, background."""
    if not clipped_logits(ev):
        return None
    return Finding(
        "training",
        "clipped_logits",
        [
            f"{_pct(f['zero_output_share'])} of the raw outputs on the test images are exactly 0, none is below 0 "
            f"and others take fractional values (raw outputs in [{_num(ev.output_min)}, {_num(ev.output_max)}]): an "
            "activation clips the logits at 0 (a ReLU on the classifier; a linear classifier's logits take both "
            "signs), so a foreground logit pushed below 0 stays at 0 with no gradient to raise it, and argmax gives "
            "a tie between zeros to class 0 (background)"
        ],
    )


def _never_found_validation_foreground(f: Fields) -> bool:
    """Validation labels with foreground, and no validation epoch (inference mode) found any of it."""
    share, iou = f["val_foreground_share"], f["max_val_foreground_iou"]
    return share is not None and share > 0.0 and iou is not None and iou <= 0.0


def batchnorm_rule(f: Fields) -> Finding | None:
    """The model found the foreground on its training batches (BatchNorm normalizing by each batch's own
    statistics), never on validation (the moving statistics stored for inference): those statistics are wrong."""
    learned = f["max_train_foreground_iou"]
    if learned is None or learned < LEARNED_TRAIN_IOU or not _never_found_validation_foreground(f):
        return None
    return Finding(
        "training",
        "batchnorm_statistics",
        [
            f"on its training batches (BatchNorm in training mode, each batch's own statistics) the model reached a "
            f"foreground IoU of {_num(learned)}, yet in {f['epochs_run']} epochs no validation pass (inference mode, "
            f"the moving statistics) found any of the validation labels' {_pct(f['val_foreground_share'])} "
            "foreground: the statistics BatchNorm stores for inference do not match the activations (a momentum too "
            "slow for the training's length, statistics frozen or never updated)"
        ],
    )


def stopped_rule(f: Fields) -> Finding | None:
    """Training used every epoch it was given while its training foreground IoU was still at its best, and no
    validation epoch had found foreground yet: it stopped while learning, before the model predicted any."""
    run, budget = f["epochs_run"], f["max_epochs"]
    last, best = f["last_train_foreground_iou"], f["max_train_foreground_iou"]
    if run is None or budget is None or last is None or run < budget:
        return None
    if not (last > 0.0 and last >= best) or not _never_found_validation_foreground(f):
        return None
    return Finding(
        "training",
        "stopped_while_learning",
        [
            f"training ran all {f['max_epochs']} epochs it was given and ended at its best training foreground IoU "
            f"({_num(last)}), still rising, before any validation epoch found foreground: it stopped while the model "
            "was learning (too few epochs)"
        ],
    )


def prior_loss(ev: Evidence) -> float | None:
    """The weighted cross-entropy of the best constant prediction, the class prior of the batches training
    consumed: the loss a model reaches that learned nothing from its images. Known for two classes under the
    cross-entropy loss only."""
    share, weights = ev.train_foreground_share, ev.class_weights or [1.0, 1.0]
    if ev.loss != "crossentropy" or share is None or ev.num_classes != 2 or len(weights) != 2:
        return None
    background, foreground = weights[0] * (1.0 - share), weights[1] * share
    if background <= 0.0 or foreground <= 0.0:
        return None
    p = foreground / (background + foreground)
    return -(background * math.log(1.0 - p) + foreground * math.log(p))


def prior_rule(f: Fields) -> Finding | None:
    """Training never got far below the class prior's loss, and neither its batches' foreground nor validation's
    was found beyond chance overlaps: the images told the model nothing about their masks, as when images and masks
    do not belong together. (A training cut short learns its batches' foreground first: see `stopped_rule`.)"""
    prior, lowest = f["prior_loss"], f["min_loss"]
    train_iou, val_iou = f["max_train_foreground_iou"], f["max_val_foreground_iou"]
    if prior is None or lowest is None or train_iou is None or val_iou is None:
        return None
    if lowest < PRIOR_LOSS_SHARE * prior or max(train_iou, val_iou) >= CHANCE_IOU:
        return None
    return Finding(
        "labels",
        "misaligned_pairs",
        [
            f"training's lowest loss {_num(lowest)} never fell far below {_num(prior)}, the loss of predicting the "
            f"class prior of its batches ({_pct(f['train_foreground_share'])} foreground) everywhere, and its best "
            f"foreground IoU was {_num(train_iou)} on the training batches and {_num(val_iou)} on validation: the "
            "images told the model nothing about their masks, as when images and masks are misaligned (pairs "
            "shuffled against each other, or augmented with separate random draws)"
        ],
    )


def observations(ev: Evidence, f: Fields) -> list[str]:
    """Facts worth reading whatever the verdict."""
    low, high = f["output_range"]
    post = f"post-processing: {f['postprocess']}"
    if f["postprocess"] == "threshold" and f["threshold"] is not None:
        post += f" at {_num(f['threshold'])}"
    return [
        f"predicted foreground {_pct(f['predicted_foreground_share'])} of valid pixels, "
        f"true foreground {_pct(f['test_foreground_share'])} "
        f"(all-zero symptom at or below {_pct(f['all_zero_threshold'])})",
        f"raw outputs in [{_num(low)}, {_num(high)}], mean {_num(f['output_mean'])}: {f['output_kind']}",
        post,
        f"mask values present: {_ints(f['label_values'])} (num_classes {f['num_classes']}, ignore {f['ignore_index']})",
    ]


def clipped_logits(ev: Evidence) -> bool:
    """Outputs never below 0, often exactly 0 and otherwise not whole numbers (see CLIPPED_SHARE)."""
    zeros, fractional = ev.zero_output_fraction, ev.fractional_output_fraction
    if ev.outputs_are_probabilities or zeros is None or fractional is None:
        return False
    return ev.output_min == 0.0 and zeros >= CLIPPED_SHARE and fractional > 0.0


def output_kind(ev: Evidence) -> str:
    if ev.outputs_are_probabilities:
        return "probabilities"
    if clipped_logits(ev):
        return "logits clipped at 0"
    if ev.outputs_bounded:
        return "bounded in the unit interval but not summing to one (rescaled)"
    return "logits"


def _same_normalization(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("method") != b.get("method"):
        return False
    return all(np.allclose(a.get(k, []), b.get(k, []), rtol=1e-4, atol=1e-6) for k in ("mean", "std"))


def _stats_comparison(
    train: dict[str, list[float]] | None, evaluation: dict[str, list[float]] | None
) -> tuple[float | None, list[float] | None]:
    """Largest per-channel mean shift in training stds, and the range of eval/train std ratios."""
    if train is None or evaluation is None:
        return None, None
    t_mean, t_std = np.asarray(train["mean"], float), np.asarray(train["std"], float)
    e_mean, e_std = np.asarray(evaluation["mean"], float), np.asarray(evaluation["std"], float)
    scale = np.maximum(t_std, 1e-6)
    ratio = np.maximum(e_std, 1e-6) / scale
    return float((np.abs(e_mean - t_mean) / scale).max()), [float(ratio.min()), float(ratio.max())]


def _stats_differ(shift: float, ratio: list[float]) -> bool:
    return not (shift <= MAX_MEAN_SHIFT_STDS and ratio[0] >= (1 / MAX_STD_RATIO) and ratio[1] <= MAX_STD_RATIO)


def _record(
    ev: Evidence, f: Fields, symptom: bool, verdict: Finding, notes: list[str], findings: list[Finding]
) -> dict[str, Any]:
    return {
        "symptom": symptom,
        "all_zero_threshold": f["all_zero_threshold"],
        "category": verdict.category,
        "cause": verdict.cause,
        "evidence": verdict.evidence + notes,
        "candidates": [{"category": x.category, "cause": x.cause} for x in findings],
        "fields": f,
        "numbers": dataclasses.asdict(ev),
    }


def _pct(share: float) -> str:
    """A share as the evidence writes it (also used by tests to match sentences against fields)."""
    return f"{100.0 * share:.3g}%"


def _num(value: float) -> str:
    """A number as the evidence writes it."""
    return f"{value:.3g}"


def _vec(values: list[float] | None) -> str:
    return "[" + ", ".join(_num(v) for v in values or []) + "]"


def _ints(values: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _norm(spec: dict[str, Any]) -> str:
    """A normalization config from its fields: the method, and mean/std per channel where it has them."""
    extra = [f"{key} {_vec(spec[key])}" for key in ("mean", "std") if isinstance(spec.get(key), list)]
    return str(spec.get("method")) + (f" ({', '.join(extra)})" if extra else "")

"""Name the likely cause of all-zero predictions from the evaluation's evidence (pure python/numpy).

Each rule reads only numbers that evaluation already has, so a verdict can be checked by hand from
diagnostics.json. Rules that point at different stages never get resolved by precedence: when the
evidence is contradictory or missing, the category is "unknown" rather than a confident wrong answer.

Order of reasoning, given the all-zero symptom:
  1. The raw outputs' own argmax has foreground -> postprocessing (threshold_too_high, output_scaling,
     postprocessing_drops_foreground); earlier stages demonstrably produced foreground.
  2. Otherwise the consistency rules: labels (no_foreground_labels when ignore pixels stand where classes should,
     else unknown; labels_out_of_range), preprocessing
     (mask_interpolation, normalization_mismatch), training (from_logits_mismatch), unknown
     (class_count_mismatch). Findings in more than one category -> unknown/ambiguous.
  3. Nothing inconsistent -> training/collapse_to_majority, unless evidence is missing
     (unknown/insufficient_evidence) or validation shows the model had learned foreground
     (unknown/collapse_only_at_evaluation).
Without the symptom the category is none; consistency findings are still listed as candidates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# The all-zero symptom: predicted foreground at most SYMPTOM_RELATIVE of the true foreground share, and never
# less than SYMPTOM_FLOOR of the valid pixels. A collapsed model still paints a fraction of a percent here and
# there (how much depends on the CPU's kernels), which must not hide the symptom, also when the masks themselves
# hold no foreground (then the relative part is zero and only the floor counts).
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


@dataclasses.dataclass(frozen=True)
class Finding:
    category: str
    cause: str
    evidence: list[str]


def diagnose(ev: Evidence) -> dict[str, Any]:
    """The diagnostics record: symptom, category, cause, evidence strings, candidate findings, raw numbers."""
    notes = observations(ev)
    if not is_all_zero(ev.foreground_fraction, ev.true_foreground_fraction):
        warnings = _consistency_findings(ev)
        return _record(ev, False, Finding("none", "none", [e for f in warnings for e in f.evidence]), notes, warnings)
    findings = _findings(ev)
    return _record(ev, True, _verdict(ev, findings), notes, findings)


def all_zero_threshold(true_foreground_fraction: float) -> float:
    """The largest predicted foreground share that still counts as the all-zero symptom."""
    return max(SYMPTOM_RELATIVE * true_foreground_fraction, SYMPTOM_FLOOR)


def is_all_zero(foreground_fraction: float, true_foreground_fraction: float) -> bool:
    """The symptom: (almost) no pixel predicted as foreground, measured against how much foreground there is."""
    return foreground_fraction <= all_zero_threshold(true_foreground_fraction)


def _consistency_findings(ev: Evidence) -> list[Finding]:
    """Rules that do not need the symptom; reported as warnings on a healthy-looking prediction."""
    rules = (class_count_rule, labels_rule, normalization_rule, from_logits_rule)
    return [f for f in (rule(ev) for rule in rules) if f is not None]


def _findings(ev: Evidence) -> list[Finding]:
    """Post-processing is decisive: if the raw outputs' argmax has foreground, earlier stages produced it."""
    post = postprocessing_rule(ev)
    if post is not None:
        logits = from_logits_rule(ev)
        return [post] + ([logits] if logits is not None else [])
    return _consistency_findings(ev)


def _verdict(ev: Evidence, findings: list[Finding]) -> Finding:
    categories = {f.category for f in findings}
    if len(categories) > 1:
        names = ", ".join(f"{f.category}/{f.cause}" for f in findings)
        return Finding("unknown", "ambiguous", [f"several stages are implicated, evidence cannot choose: {names}"])
    if findings:
        return Finding(findings[0].category, findings[0].cause, [e for f in findings for e in f.evidence])
    return collapse_rule(ev)


def postprocessing_rule(ev: Evidence) -> Finding | None:
    """The argmax over the class axis of the raw outputs has foreground, the post-processed prediction none."""
    if is_all_zero(ev.reference_foreground_fraction, ev.true_foreground_fraction):
        return None
    lines = [
        f"argmax over the class axis (-1) of the raw outputs predicts {_pct(ev.reference_foreground_fraction)} "
        f"foreground, the post-processed prediction {_pct(ev.foreground_fraction)}"
    ]
    if ev.postprocess == "threshold" and ev.outputs_bounded and not ev.outputs_are_probabilities:
        lines.append(
            f"raw outputs lie in [{ev.output_min:.3g}, {ev.output_max:.3g}] but do not sum to 1 over classes: "
            "rescaled outputs, so the threshold compares the wrong scale"
        )
        return Finding("postprocessing", "output_scaling", lines)
    if (
        ev.postprocess == "threshold"
        and ev.max_foreground_probability is not None
        and ev.threshold is not None
        and ev.max_foreground_probability < ev.threshold
    ):
        lines.append(
            f"threshold {ev.threshold:.6g} exceeds the largest foreground probability "
            f"{ev.max_foreground_probability:.3g} of any pixel"
        )
        return Finding("postprocessing", "threshold_too_high", lines)
    return Finding("postprocessing", "postprocessing_drops_foreground", lines)


def class_count_rule(ev: Evidence) -> Finding | None:
    """A model with a different number of output classes than the data: which side is wrong is unknowable."""
    if ev.model_classes == ev.num_classes:
        return None
    return Finding(
        "unknown",
        "class_count_mismatch",
        [f"the model outputs {ev.model_classes} classes, the processed data declares {ev.num_classes}"],
    )


def labels_rule(ev: Evidence) -> Finding | None:
    """Test masks without foreground, or with class ids the model cannot output."""
    out_of_range = {v: c for v, c in ev.label_counts.items() if v >= ev.num_classes and v != ev.ignore_index}
    if len(out_of_range) >= MIN_INTERPOLATED_VALUES:
        return Finding(
            "preprocessing",
            "mask_interpolation",
            [
                f"{len(out_of_range)} distinct mask values between the class ids and the ignore index "
                f"({min(out_of_range)}..{max(out_of_range)}): masks were interpolated, not resized with nearest"
            ],
        )
    if out_of_range:
        values = ", ".join(f"{v} ({c} px)" for v, c in sorted(out_of_range.items()))
        return Finding(
            "labels",
            "labels_out_of_range",
            [f"mask values {values} are >= num_classes {ev.num_classes} and not the ignore index {ev.ignore_index}"],
        )
    if ev.true_foreground_fraction <= 0.0:
        return _no_foreground_labels(ev)
    return None


def _no_foreground_labels(ev: Evidence) -> Finding:
    """Masks without foreground: ignore pixels where it should be point at the label map; none leaves it open.

    Without ignore pixels the foreground may have been lost when labelling or when resizing the masks (or the
    test split has none), and the test masks alone cannot tell which.
    """
    total = sum(ev.label_counts.values())
    ignored = ev.label_counts.get(ev.ignore_index, 0) if ev.ignore_index is not None else 0
    lines = ["the test masks contain no foreground class id at all"]
    if not ignored:
        lines.append(
            "no pixel holds the ignore index either: the foreground was lost in labelling or in mask "
            "preprocessing (or the test split has none), which the masks alone cannot tell apart"
        )
        return Finding("unknown", "no_foreground_labels", lines)
    lines.append(
        f"{_pct(ignored / total)} of mask pixels hold the ignore index {ev.ignore_index}: "
        "the label map sends real classes to ignore "
        "(e.g. foreground stored as 255 mapped to ignore, or ids shifted by one)"
    )
    return Finding("labels", "no_foreground_labels", lines)


def normalization_rule(ev: Evidence) -> Finding | None:
    """Evaluation inputs normalized unlike the training inputs (config or measured statistics differ)."""
    lines = []
    if (
        ev.train_normalization is not None
        and ev.eval_normalization is not None
        and not _same_normalization(ev.train_normalization, ev.eval_normalization)
    ):
        lines.append(
            f"training normalization {ev.train_normalization} differs from evaluation's {ev.eval_normalization}"
        )
    if ev.train_input_stats is not None and ev.eval_input_stats is not None:
        lines.extend(_stats_mismatch(ev.train_input_stats, ev.eval_input_stats))
    return Finding("preprocessing", "normalization_mismatch", lines) if lines else None


def from_logits_rule(ev: Evidence) -> Finding | None:
    """Outputs are already probabilities although training treated them as logits (softmax twice)."""
    if not (ev.outputs_are_probabilities and ev.from_logits):
        return None
    return Finding(
        "training",
        "from_logits_mismatch",
        [
            f"raw outputs are probabilities (in [{ev.output_min:.3g}, {ev.output_max:.3g}], summing to 1 over classes) "
            "but training used from_logits=true",
            f"{_pct(ev.saturated_fraction)} of pixels have a class probability >= {SATURATED}",
        ],
    )


def collapse_rule(ev: Evidence) -> Finding:
    """All-background from the raw outputs with healthy labels and inputs: the model learned only the majority."""
    missing = [
        name
        for name, value in (
            ("training input stats", ev.train_input_stats),
            ("evaluation input stats", ev.eval_input_stats),
        )
        if value is None
    ]
    if ev.outputs_are_probabilities and ev.from_logits is None:
        missing.append("whether training treated outputs as logits")
    if missing:
        return Finding(
            "unknown", "insufficient_evidence", [f"cannot rule out other causes without: {', '.join(missing)}"]
        )
    background_only = 1.0 / ev.num_classes
    if ev.best_val_mean_iou is not None and ev.best_val_mean_iou > background_only + LEARNED_MARGIN:
        return Finding(
            "unknown",
            "collapse_only_at_evaluation",
            [
                f"best validation mIoU {ev.best_val_mean_iou:.3f} is well above the background-only level "
                f"{background_only:.3f}: the model found foreground in training, yet predicts none here"
            ],
        )
    lines = [
        f"argmax of the raw outputs is background everywhere although {_pct(ev.true_foreground_fraction)} of "
        "valid pixels are foreground, with labels and input normalization consistent with training"
    ]
    if ev.best_val_mean_iou is not None:
        lines.append(f"best validation mIoU {ev.best_val_mean_iou:.3f} (background-only level {background_only:.3f})")
    if ev.class_weights is None:
        lines.append("training used no class weights")
    return Finding("training", "collapse_to_majority", lines)


def observations(ev: Evidence) -> list[str]:
    """Facts worth reading whatever the verdict."""
    return [
        f"predicted foreground {_pct(ev.foreground_fraction)} of valid pixels, "
        f"true foreground {_pct(ev.true_foreground_fraction)} "
        f"(all-zero symptom at or below {_pct(all_zero_threshold(ev.true_foreground_fraction))})",
        f"raw outputs in [{ev.output_min:.4g}, {ev.output_max:.4g}], mean {ev.output_mean:.4g}: {output_kind(ev)}",
        f"post-processing: {ev.postprocess}" + (f" at {ev.threshold:.6g}" if ev.postprocess == "threshold" else ""),
        f"mask values present: {sorted(ev.label_counts)} (num_classes {ev.num_classes}, ignore {ev.ignore_index})",
    ]


def output_kind(ev: Evidence) -> str:
    if ev.outputs_are_probabilities:
        return "probabilities"
    if ev.outputs_bounded:
        return "bounded in [0, 1] but not summing to 1 (rescaled)"
    return "logits"


def _same_normalization(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("method") != b.get("method"):
        return False
    return all(np.allclose(a.get(k, []), b.get(k, []), rtol=1e-4, atol=1e-6) for k in ("mean", "std"))


def _stats_mismatch(train: dict[str, list[float]], evaluation: dict[str, list[float]]) -> list[str]:
    t_mean, t_std = np.asarray(train["mean"], float), np.asarray(train["std"], float)
    e_mean, e_std = np.asarray(evaluation["mean"], float), np.asarray(evaluation["std"], float)
    scale = np.maximum(t_std, 1e-6)
    shift = np.abs(e_mean - t_mean) / scale
    ratio = np.maximum(e_std, 1e-6) / scale
    if shift.max() <= MAX_MEAN_SHIFT_STDS and ratio.min() >= (1 / MAX_STD_RATIO) and ratio.max() <= MAX_STD_RATIO:
        return []
    return [
        f"evaluation inputs have per-channel mean {_vec(e_mean)} and std {_vec(e_std)}, training inputs mean "
        f"{_vec(t_mean)} and std {_vec(t_std)} (largest shift {shift.max():.2f} training stds, std ratio "
        f"{ratio.min():.2f}..{ratio.max():.2f})"
    ]


def _record(ev: Evidence, symptom: bool, verdict: Finding, notes: list[str], findings: list[Finding]) -> dict[str, Any]:
    return {
        "symptom": symptom,
        "all_zero_threshold": all_zero_threshold(ev.true_foreground_fraction),
        "category": verdict.category,
        "cause": verdict.cause,
        "evidence": verdict.evidence + notes,
        "candidates": [{"category": f.category, "cause": f.cause} for f in findings],
        "numbers": dataclasses.asdict(ev),
    }


def _pct(share: float) -> str:
    return f"{100.0 * share:.3g}%"


def _vec(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"

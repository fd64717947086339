"""The report of a bisection: the verdict, the culprit with its evidence, and every hybrid (report.json, --json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segbisect.core.hybrid import Hybrid
from segbisect.core.terms import CULPRIT, Terms
from segbisect.core.units import Inventory
from segbisect.core.verdict import Outcome, Verdict, VerdictKind
from segbisect.project.refs import Reference

SCHEMA = 2


@dataclass(frozen=True, kw_only=True)
class Culprit:
    """The change the verdict names, with the failing hybrid's diagnostics as evidence."""

    stage: str | None
    stages: tuple[str, ...]
    units: tuple[dict[str, Any], ...]
    sufficient: bool | None
    necessary: bool | None
    minimal: bool
    also_sufficient: tuple[str, ...]
    diagnostics: Any


@dataclass(frozen=True, kw_only=True)
class Report:
    """Everything a person (or a script, through `--json`) needs to act on a bisection. `stage_executions`: the
    stages this session's runs executed, `stage_executions_earlier` of them in runs before this one (an interrupted
    session run again); `stage_executions_total` also counts the hybrids reused from other sessions.
    """

    schema: int = SCHEMA
    verdict: VerdictKind
    message: str
    culprit: Culprit | None
    candidates: tuple[str, ...]
    good: dict[str, Any]
    bad: dict[str, Any]
    units: tuple[dict[str, Any], ...]
    hybrids: tuple[dict[str, Any], ...]
    stage_executions: int
    stage_executions_total: int
    stage_executions_earlier: int = 0
    results_dir: str
    key_metrics: tuple[str, ...]
    tracking: str = ""
    terms: dict[str, str] = field(default_factory=lambda: {"old": "GOOD", "new": "BAD"})
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Findings:
    """What a session found, whatever its verdict: the references, the units and the hybrids it ran; `earlier`:
    the fingerprints of the hybrids earlier runs of this session executed (see `Journal.executed_here`).
    """

    good: Reference
    bad: Reference
    inventory: Inventory
    hybrids: list[Hybrid]
    metrics_file: str | None
    key_metrics: list[str]
    folder: Path
    tracking: str
    terms: Terms = CULPRIT
    earlier: frozenset[str] = frozenset()


def build(findings: Findings, kind: VerdictKind, message: str, verdict: Verdict | None = None) -> Report:
    hybrids = findings.hybrids
    return Report(
        verdict=kind,
        message=message,
        culprit=_culprit(findings, verdict) if verdict and verdict.units else None,
        candidates=verdict.candidates if verdict else (),
        good=_reference(findings.good),
        bad=_reference(findings.bad),
        units=tuple(u.as_dict() for u in findings.inventory.units),
        hybrids=tuple(h.row(findings.metrics_file, findings.terms) for h in hybrids),
        stage_executions=sum(len(h.executed) for h in hybrids if not h.reused) + _earlier(findings),
        stage_executions_total=sum(len(h.executed) for h in hybrids),
        stage_executions_earlier=_earlier(findings),
        results_dir=str(findings.folder),
        key_metrics=tuple(findings.key_metrics),
        tracking=findings.tracking,
        terms={"old": findings.terms.old, "new": findings.terms.new},
        figures=_figures(findings, verdict),
    )


def _earlier(findings: Findings) -> int:
    """The stage executions of the hybrids this run reused from earlier runs of the same session."""
    return sum(len(h.executed) for h in findings.hybrids if h.reused and h.fingerprint in findings.earlier)


def earlier_runs(report: Report) -> str:
    """What the reports add to the stage executions when earlier runs of the session did some of them."""
    earlier = report.stage_executions_earlier
    return f" ({earlier} in earlier runs of this session)" if earlier else ""


def reuse(report: Report, row: dict[str, Any]) -> str:
    """What the reports add to a hybrid's id when its result was reused: which session's run computed it (an
    earlier run of this one: the same GOOD and BAD resumed)."""
    if not row["reused"]:
        return ""
    origin = row.get("reused_from")
    if not origin:
        return " (reused)"
    return " (reused from an earlier run)" if origin == Path(report.results_dir).name else f" (reused from {origin})"


def time_spent(row: dict[str, Any]) -> str:
    """A hybrid row's seconds, and how many of them its stages took (the rest went to restoring and bookkeeping)."""
    stages = row.get("stage_seconds") or {}
    return f"{row['seconds']} (stages {round(sum(stages.values()), 2):g})" if stages else str(row["seconds"])


def _culprit(findings: Findings, verdict: Verdict) -> Culprit:
    by_id = {u.id: u for u in findings.inventory.units}
    failing = _symptom_side(findings, verdict)
    return Culprit(
        stage=verdict.stage,
        stages=verdict.stages,
        units=tuple({**by_id[i].as_dict(), "diff": by_id[i].detail} for i in verdict.units),
        sufficient=verdict.sufficient,
        necessary=verdict.necessary,
        minimal=verdict.minimal,
        also_sufficient=verdict.also_sufficient,
        diagnostics=failing.attempts[-1].diagnostics if failing and failing.attempts else None,
    )


def _symptom_side(findings: Findings, verdict: Verdict) -> Hybrid | None:
    """The hybrid whose diagnostics show the symptom: the failing one with just the culprit's units, else BAD;
    asking for the fix, the broken configuration itself.
    """
    terms = findings.terms
    if terms.find_fix:
        return next((h for h in findings.hybrids if h.label == terms.old), None)
    exact = (h for h in findings.hybrids if set(h.from_bad) == set(verdict.units) and h.outcome == Outcome.BAD)
    return next(exact, None) or next((h for h in findings.hybrids if h.label == terms.new), None)


def _figures(findings: Findings, verdict: Verdict | None) -> dict[str, Any]:
    """The declared plot images of the two configurations and of the hybrid that shows the culprit, side by side.

    The images are those the first configuration drew (by path in the pipeline), so every column shows the same
    test images; `kept` holds one file per side, None where that side drew no such image.
    """
    terms = findings.terms
    by_label = {h.label: h for h in findings.hybrids}
    sides = [h for h in (by_label.get(terms.old), by_label.get(terms.new)) if h is not None]
    culprit = _symptom_side(findings, verdict) if verdict and verdict.units else None
    if culprit is not None and culprit not in sides:
        sides.append(culprit)
    names = next((sorted(h.figures) for h in sides if h.figures), [])
    return {
        "sides": [
            {"label": h.label if h.label in (terms.old, terms.new) else "culprit", "hybrid": h.id} for h in sides
        ],
        "images": [{"path": name, "kept": [h.figures.get(name) for h in sides]} for name in names],
    }


def _reference(ref: Reference) -> dict[str, Any]:
    return {"text": ref.text, "kind": ref.kind, "commit": ref.commit, "detail": ref.detail}

"""The report of a bisection: the verdict, the culprit with its evidence, and every hybrid (report.json, --json).

The report is typed records all the way to its edges: `Report.to_dict` writes the JSON object that report.json,
`--json` and every script reading them see (its fields and their order are the report's schema), and
`HybridRow.to_dict` the view of one hybrid that report.json lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbisect.core.hybrid import Hybrid
from segbisect.core.terms import CULPRIT, Terms
from segbisect.core.tipping import TippingPoint
from segbisect.core.units import Inventory, Unit
from segbisect.core.verdict import Outcome, Verdict, VerdictKind
from segbisect.executors.placement import Placement
from segbisect.project.provenance import Provenance
from segbisect.project.refs import Reference

SCHEMA = 2


@dataclass(frozen=True, kw_only=True)
class HybridRow:
    """One hybrid as the reports and its MLflow run show it: its outcome in the bisection's terms, the stage
    executions and seconds of all its attempts, the last attempt's metrics (from the judged file), machine,
    kept images and placement (None: it ran on this machine). `reused_from`: the session whose run computed a
    reused hybrid.
    """

    id: str
    label: str
    from_bad: tuple[str, ...]
    sides: dict[str, str]
    outcome: str
    note: str
    metrics: dict[str, Any]
    executed: tuple[str, ...]
    restored: tuple[str, ...]
    seconds: float
    stage_seconds: dict[str, float]
    reused: bool
    reused_from: str | None
    fingerprint: str
    attempts: int
    figures: dict[str, str]
    placement: Placement | None
    machine: dict[str, Any] | None

    @classmethod
    def of(cls, hybrid: Hybrid, metrics_file: str | None, terms: Terms = CULPRIT) -> HybridRow:
        last = hybrid.attempts[-1] if hybrid.attempts else None
        return cls(
            id=hybrid.id,
            label=hybrid.label,
            from_bad=hybrid.from_bad,
            sides=hybrid.sides,
            outcome=terms.outcome(hybrid.outcome),
            note=hybrid.note,
            metrics=hybrid.metrics(metrics_file),
            executed=tuple(hybrid.executed),
            restored=tuple(hybrid.restored),
            seconds=hybrid.seconds,
            stage_seconds=hybrid.stage_seconds,
            reused=hybrid.reused,
            reused_from=hybrid.origin,
            fingerprint=hybrid.fingerprint,
            attempts=len(hybrid.attempts),
            figures=hybrid.figures,
            placement=Placement.of(last.placement) if last else None,
            machine=last.machine if last else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "from_bad": list(self.from_bad),
            "sides": self.sides,
            "outcome": self.outcome,
            "note": self.note,
            "metrics": self.metrics,
            "executed": list(self.executed),
            "restored": list(self.restored),
            "seconds": self.seconds,
            "stage_seconds": self.stage_seconds,
            "reused": self.reused,
            "reused_from": self.reused_from,
            "fingerprint": self.fingerprint,
            "attempts": self.attempts,
            "figures": self.figures,
            "placement": self.placement.to_record() if self.placement else {},
            "machine": self.machine,
        }


@dataclass(frozen=True, kw_only=True)
class Diagnosis:
    """What diagnostics conclude when they say it the way the pipeline's diagnostics do (a mapping with a `cause`
    and a list of `evidence`); any other diagnostics are shown as they are.
    """

    cause: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Culprit:
    """The change the verdict names (its units, whose `detail` is each one's diff), with the failing hybrid's
    diagnostics as evidence and, by unit id, the commits that brought each unit's BAD value (`provenance`).
    """

    stage: str | None
    stages: tuple[str, ...]
    units: tuple[Unit, ...]
    sufficient: bool | None
    necessary: bool | None
    minimal: bool
    also_sufficient: tuple[str, ...]
    diagnostics: Any
    provenance: dict[str, Provenance] = field(default_factory=dict)

    @property
    def diagnosis(self) -> Diagnosis | None:
        found = self.diagnostics
        if not (isinstance(found, dict) and "cause" in found):
            return None
        return Diagnosis(cause=str(found["cause"]), evidence=tuple(map(str, found.get("evidence") or [])))

    def traced(self, unit: Unit) -> Provenance:
        """Where `unit`'s BAD value came from (nothing, where it was not traced)."""
        return self.provenance.get(unit.id, Provenance())

    def origins(self) -> list[tuple[Unit, Provenance]]:
        """The units whose origin has something to tell, with it, as the reports list them."""
        return [(unit, found) for unit in self.units if (found := self.traced(unit)).lines()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "stages": list(self.stages),
            "units": [{**u.as_dict(), "diff": u.detail, **_traced(self.traced(u))} for u in self.units],
            "sufficient": self.sufficient,
            "necessary": self.necessary,
            "minimal": self.minimal,
            "also_sufficient": list(self.also_sufficient),
            "diagnostics": self.diagnostics,
        }


@dataclass(frozen=True, kw_only=True)
class FigureSide:
    """A column of the side-by-side images: GOOD's, BAD's (in the bisection's terms) or the culprit hybrid's."""

    label: str
    hybrid: str


@dataclass(frozen=True, kw_only=True)
class FigureRow:
    """One declared plot image, as each side kept it (None: that side drew no such image)."""

    path: str
    kept: tuple[str | None, ...]


@dataclass(frozen=True, kw_only=True)
class Figures:
    """The declared plot images side by side: one column per side, one row per image (see `_figures`)."""

    sides: tuple[FigureSide, ...] = ()
    images: tuple[FigureRow, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sides": [{"label": s.label, "hybrid": s.hybrid} for s in self.sides],
            "images": [{"path": i.path, "kept": list(i.kept)} for i in self.images],
        }


@dataclass(frozen=True, kw_only=True)
class Report:
    """Everything a person (or a script, through `--json`) needs to act on a bisection. `stage_executions`: the
    stages this session's runs executed, `stage_executions_earlier` of them in runs before this one (an interrupted
    session run again); `stage_executions_total` also counts the hybrids reused from other sessions.
    `tipping_point`: where the culprit param tips, when that was searched (`--tipping-point`).
    """

    schema: int = SCHEMA
    verdict: VerdictKind
    message: str
    culprit: Culprit | None
    candidates: tuple[str, ...]
    good: Reference
    bad: Reference
    units: tuple[Unit, ...]
    hybrids: tuple[HybridRow, ...]
    stage_executions: int
    stage_executions_total: int
    stage_executions_earlier: int = 0
    results_dir: str
    key_metrics: tuple[str, ...]
    tracking: str = ""
    terms: Terms = CULPRIT
    figures: Figures = Figures()
    tipping_point: TippingPoint | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "verdict": self.verdict,
            "message": self.message,
            "culprit": self.culprit.to_dict() if self.culprit else None,
            "candidates": list(self.candidates),
            "good": _reference(self.good),
            "bad": _reference(self.bad),
            "units": [u.as_dict() for u in self.units],
            "hybrids": [h.to_dict() for h in self.hybrids],
            "stage_executions": self.stage_executions,
            "stage_executions_total": self.stage_executions_total,
            "stage_executions_earlier": self.stage_executions_earlier,
            "results_dir": self.results_dir,
            "key_metrics": list(self.key_metrics),
            "tracking": self.tracking,
            "terms": {"old": self.terms.old, "new": self.terms.new},
            "figures": self.figures.to_dict(),
            "tipping_point": self.tipping_point.to_dict(self.terms) if self.tipping_point else None,
        }


@dataclass(frozen=True, kw_only=True)
class Findings:
    """What a session found, whatever its verdict: the references, the units and the hybrids it ran; `earlier`:
    the fingerprints of the hybrids earlier runs of this session executed (see `Journal.executed_here`);
    `provenance`: where the culprit's units came from, by unit id (traced once the verdict names them).
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
    provenance: dict[str, Provenance] = field(default_factory=dict)
    tipping_point: TippingPoint | None = None


def build(findings: Findings, kind: VerdictKind, message: str, verdict: Verdict | None = None) -> Report:
    hybrids = findings.hybrids
    return Report(
        verdict=kind,
        message=message,
        culprit=_culprit(findings, verdict) if verdict and verdict.units else None,
        candidates=verdict.candidates if verdict else (),
        good=findings.good,
        bad=findings.bad,
        units=tuple(findings.inventory.units),
        hybrids=tuple(HybridRow.of(h, findings.metrics_file, findings.terms) for h in hybrids),
        stage_executions=sum(len(h.executed) for h in hybrids if not h.reused) + _earlier(findings),
        stage_executions_total=sum(len(h.executed) for h in hybrids),
        stage_executions_earlier=_earlier(findings),
        results_dir=str(findings.folder),
        key_metrics=tuple(findings.key_metrics),
        tracking=findings.tracking,
        terms=findings.terms,
        figures=_figures(findings, verdict),
        tipping_point=findings.tipping_point,
    )


def _earlier(findings: Findings) -> int:
    """The stage executions of the hybrids this run reused from earlier runs of the same session."""
    return sum(len(h.executed) for h in findings.hybrids if h.reused and h.fingerprint in findings.earlier)


def earlier_runs(report: Report) -> str:
    """What the reports add to the stage executions when earlier runs of the session did some of them."""
    earlier = report.stage_executions_earlier
    return f" ({earlier} in earlier runs of this session)" if earlier else ""


def reuse(report: Report, row: HybridRow) -> str:
    """What the reports add to a hybrid's id when its result was reused: which session's run computed it (an
    earlier run of this one: the same GOOD and BAD resumed)."""
    if not row.reused:
        return ""
    origin = row.reused_from
    if not origin:
        return " (reused)"
    return " (reused from an earlier run)" if origin == Path(report.results_dir).name else f" (reused from {origin})"


def time_spent(row: HybridRow) -> str:
    """A hybrid row's seconds, and how many of them its stages took (the rest went to restoring and bookkeeping)."""
    stages = row.stage_seconds
    return f"{row.seconds} (stages {round(sum(stages.values()), 2):g})" if stages else str(row.seconds)


def _culprit(findings: Findings, verdict: Verdict) -> Culprit:
    by_id = {u.id: u for u in findings.inventory.units}
    failing = _symptom_side(findings, verdict)
    return Culprit(
        stage=verdict.stage,
        stages=verdict.stages,
        units=tuple(by_id[i] for i in verdict.units),
        sufficient=verdict.sufficient,
        necessary=verdict.necessary,
        minimal=verdict.minimal,
        also_sufficient=verdict.also_sufficient,
        diagnostics=failing.attempts[-1].diagnostics if failing and failing.attempts else None,
        provenance={i: findings.provenance[i] for i in verdict.units if i in findings.provenance},
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


def _figures(findings: Findings, verdict: Verdict | None) -> Figures:
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
    return Figures(
        sides=tuple(
            FigureSide(label=h.label if h.label in (terms.old, terms.new) else "culprit", hybrid=h.id) for h in sides
        ),
        images=tuple(FigureRow(path=name, kept=tuple(h.figures.get(name) for h in sides)) for name in names),
    )


def _traced(found: Provenance) -> dict[str, Any]:
    """A culprit unit's provenance in report.json: the commits, oldest first, and the note where none tells."""
    return {"provenance": [c.to_dict() for c in found.commits], "provenance_note": found.note}


def _reference(ref: Reference) -> dict[str, str]:
    return {"text": ref.text, "kind": ref.kind, "commit": ref.commit, "detail": ref.detail}

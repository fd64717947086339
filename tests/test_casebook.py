"""The zero-predictions casebook on the real pipeline: every case's BAD fails, GOOD passes, segbisect finds it.

GOOD is reproduced once per pytest run, by whichever xdist worker needs it first; each worker runs its cases in its
own copy of that repository (git history and DVC cache included), so GOOD's stages are restored, never re-run.
The cases mix the two kinds of BAD reference: params files overlaid on HEAD and git commits changing code.
Every outcome must hold with a wide margin, so that other CPUs' kernels (other last bits) cannot flip it:
CI runs GOOD's check and the cases with the narrowest recorded margins again under another oneDNN ISA
(examples/zero-predictions/margins.py), and the GOOD check also with oneDNN off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support import CASEBOOK_RUNNER, load_script

pytestmark = pytest.mark.e2e
# GOOD must be a real model, not one on the edge of predicting nothing.
MIN_GOOD_MEAN_IOU = 0.80
MAX_FOREGROUND_SHARE_ERROR = 0.30
# GOOD predicts at least this many times the all-zero threshold; every BAD at most its inverse.
MARGIN = 3.0


casebook = load_script(CASEBOOK_RUNNER)
CASES = casebook.load_cases()


@pytest.fixture(scope="session")
def casebook_base(casebook_good: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """A private copy of the GOOD base repository (see conftest's casebook_good), and this worker's results
    folder."""
    out = tmp_path_factory.mktemp("casebook")
    repo = Path(shutil.copytree(casebook_good / "repo", out / "repo", symlinks=True))
    return repo, casebook.stage_env(f"sqlite:///{out / 'mlflow.db'}"), out / "segbisect"


def test_cases_use_both_kinds_of_reference_and_patches_apply(tmp_path: Path) -> None:
    """Params files and code commits are both exercised, and every patch still applies to the pipeline."""
    assert {c.bad_params is not None for c in CASES} == {True, False}
    assert {c.stage for c in CASES} == {"prepare", "preprocess", "train", "evaluate"}
    for case in CASES:
        if case.bad_patch is not None:
            subprocess.run(["git", "apply", "--check", str(case.bad_patch)], cwd=casebook.ROOT, check=True)
        assert case.stage and case.units and case.diagnosis


def test_good_is_a_genuinely_good_model(casebook_base: tuple[Path, dict[str, str], Path]) -> None:
    repo, _, _ = casebook_base
    scores = json.loads((repo / "reports" / "metrics.json").read_text())
    assert scores["mean_iou"] >= MIN_GOOD_MEAN_IOU
    true, predicted = scores["true_foreground_fraction"], scores["foreground_fraction"]
    assert abs(predicted - true) <= MAX_FOREGROUND_SHARE_ERROR * true, (predicted, true)
    assert predicted >= MARGIN * scores["all_zero_threshold"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_found_by_segbisect_and_diagnosed(case, casebook_base: tuple[Path, dict[str, str], Path]) -> None:
    repo, env, results = casebook_base
    outcome = casebook.run_case(repo, case, results, env, jobs=2)
    assert outcome.exit_code == 0, outcome.report.get("message")
    assert outcome.report["verdict"] == "culprit"
    good, bad = outcome.metrics("GOOD"), outcome.metrics("BAD")
    assert good["foreground_fraction"] >= MARGIN * good["all_zero_threshold"], "GOOD must clearly predict foreground"
    assert bad["foreground_fraction"] <= bad["all_zero_threshold"] / MARGIN, (
        "BAD must clearly show the all-zero symptom"
    )
    assert outcome.stage == case.stage
    assert outcome.units == case.units
    assert outcome.diagnosis == case.diagnosis
    assert outcome.bad_ref.startswith("params file" if case.bad_params is not None else "commit")

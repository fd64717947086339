"""The casebook's margins and the cases CI's second-ISA pass picks from them. Fast: no training; the recorded
tables are the committed ones in examples/zero-predictions/measured/."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.scratch import ROOT, git
from support import load_script

margins = load_script(ROOT / "examples" / "zero-predictions" / "margins.py")
CASES = [p.name for p in margins.case_folders()]


@pytest.fixture(scope="module")
def record() -> Any:
    return margins.Record.load()


def test_margin_is_the_factor_to_the_threshold_on_either_side() -> None:
    assert margins.margin(0.12, 0.004) == pytest.approx(30.0)
    assert margins.margin(0.001, 0.004) == pytest.approx(4.0)
    assert margins.margin(0.004, 0.004) == 1.0
    assert margins.margin(0.0, 0.004) == math.inf


def test_the_second_isa_is_avx2_beside_avx512_else_sse41() -> None:
    assert margins.second_isa({"sse4_1", "avx", "avx2", "avx512f"}) == "AVX2"
    assert margins.second_isa({"sse4_1", "avx", "avx2"}) == "SSE41"


def test_a_bisections_narrowest_hybrid_ignores_hybrids_without_metrics() -> None:
    hybrids = [
        {"label": "GOOD", "metrics": {"foreground_fraction": 0.12, "all_zero_threshold": 0.005}},
        {"label": "BAD", "metrics": {"foreground_fraction": 0.0, "all_zero_threshold": 0.001}},
        {"label": "h03", "metrics": {"foreground_fraction": 0.0015, "all_zero_threshold": 0.005}},
        {"label": "h04", "metrics": {}},
    ]
    assert margins.narrowest_hybrid(hybrids) == (pytest.approx(0.005 / 0.0015), "h03")
    assert math.isnan(margins.narrowest_hybrid([{"label": "h04", "metrics": {}}])[0])


def test_narrowest_cases_rank_each_case_by_its_smallest_margin_under_any_isa() -> None:
    first = pd.DataFrame(
        {"case": list("abcd"), "margin": [50.0, 4.0, 9.0, 30.0], "margin at": "GOOD", "seconds": [10, 20, 30, 40]}
    )
    second = pd.DataFrame(
        {"case": list("abcd"), "margin": [3.5, 20.0, 8.0, math.inf], "margin at": "BAD", "seconds": [10, 20, 30, 40]}
    )
    chosen = margins.narrowest_cases({"X": first, "Y": second}, count=3)
    assert list(chosen) == ["a", "b", "c"]
    assert chosen["a"] == "3.5x at BAD under Y; 50x at GOOD under X"


def test_cases_whose_narrowest_is_one_shared_good_count_once_through_the_quickest() -> None:
    table = pd.DataFrame(
        {"case": list("abcd"), "margin": [18.0, 18.0, 18.0, 40.0], "margin at": "GOOD", "seconds": [190, 20, 15, 9]}
    )
    chosen = margins.narrowest_cases({"X": table}, count=2)
    assert list(chosen) == ["c", "d"]
    assert chosen["c"] == "18x at GOOD under X (the same GOOD as in b, a)"
    bad = table.assign(**{"margin at": "BAD"})  # each case's own BAD: equal margins are no shared measurement
    assert list(margins.narrowest_cases({"X": bad}, count=2)) == ["c", "b"]


def test_the_record_lists_the_narrowest_cases_of_its_own_tables(record: Any) -> None:
    """record.yaml is written from the tables beside it: an edited table or list would disagree here."""
    tables = record.read_tables()
    assert len(tables) == 2
    for table in tables.values():
        assert sorted(table["case"]) == CASES
    assert record.narrowest == margins.narrowest_cases(tables)


def test_the_selection_adds_changed_and_unmeasured_cases_with_their_reason(record: Any) -> None:
    narrowest = list(record.narrowest)
    assert list(margins.second_isa_selection(CASES, record, set())) == narrowest
    other = next(case for case in CASES if case not in narrowest)
    chosen = margins.second_isa_selection(CASES, record, {other})
    assert list(chosen) == [*narrowest, other]
    assert chosen[other] == f"its files changed since {record.commit[:12]}"
    assert margins.second_isa_selection([*CASES, "99-new"], record, set())["99-new"] == "not in the record"
    assert set(margins.second_isa_selection(CASES, record, None)) == set(CASES)


def test_changed_cases_follow_git_since_the_recorded_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cases = repo / margins.CASES_DIR.relative_to(ROOT)
    good = repo / margins.GOOD_PARAMS.relative_to(ROOT)
    for name in ("01-a", "02-b", "03-c"):
        (cases / name).mkdir(parents=True)
        (cases / name / "case.yaml").write_text(f"cause: {name}\n")
    good.write_text("train: {epochs: 50}\n")
    git(tmp_path, "init", "-q", str(repo))
    for args in (("config", "user.email", "t@example.com"), ("config", "user.name", "t"), ("add", "-A")):
        git(repo, *args)
    git(repo, "commit", "-qm", "recorded")
    recorded = git(repo, "rev-parse", "HEAD").strip()
    assert margins.changed_cases(recorded, repo) == set()
    assert margins.changed_cases("0" * 40, repo) is None
    (cases / "02-b" / "case.yaml").write_text("cause: edited, not committed\n")
    assert margins.changed_cases(recorded, repo) == {"02-b"}
    (cases / "03-c" / "bad.yaml").write_text("train: {epochs: 1}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a case changed")
    assert margins.changed_cases(recorded, repo) == {"02-b", "03-c"}
    (cases / "01-a" / "bad.patch").write_text("new, not yet added\n")
    assert margins.changed_cases(recorded, repo) == {"01-a", "02-b", "03-c"}
    good.write_text("train: {epochs: 40}\n")
    assert margins.changed_cases(recorded, repo) is None


def test_a_second_isa_the_record_never_measured_is_said(record: Any) -> None:
    assert any("not SSE41 as this CPU's second ISA" in line for line in margins.caveats(record, "SSE41")) == (
        "SSE41" not in record.tables
    )
    assert any("not NOPE as this CPU's second ISA" in line for line in margins.caveats(record, "NOPE"))


def test_the_command_prints_the_second_isa_pass_node_ids(record: Any) -> None:
    done = subprocess.run(
        [sys.executable, str(margins.HERE / "margins.py")], cwd=ROOT, capture_output=True, text=True, check=True
    )
    ids = done.stdout.split()
    assert ids[:2] == [margins.NUMERICS_TEST, margins.GOOD_CHECK]
    assert {f"{margins.CASE_TEST}[{case}]" for case in record.narrowest} <= set(ids[2:])
    assert all(line.startswith("second ISA: ") for line in done.stderr.splitlines())

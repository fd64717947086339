"""How far each casebook outcome sits from the all-zero threshold, and which cases CI checks under a second oneDNN
instruction set on every commit.

Another CPU's kernels move a model's numbers in the last bits; an outcome can only flip where it sits close to the
threshold. `run_casebook.py --record` runs the whole casebook under this CPU's kernels and under the second ISA
(AVX2 where the CPU has AVX-512, else SSE4.1) and writes measured/: one casebook table per ISA, and record.yaml,
which names the commit it measured and the cases whose margin is narrowest under either ISA, each with its reason.
CI's second-ISA pass runs GOOD's check and tests/test_numerics.py, those cases, and every case whose files changed
since that commit (all of them when GOOD's params changed, or when the commit is not in the clone's history):

    python examples/zero-predictions/margins.py          # the pytest node ids, one a line; the reasons on stderr
    python examples/zero-predictions/margins.py isa      # the second ISA for this CPU
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.numerics import cpu_model_and_flags
from pipeline.scratch import PROJECT_FILES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CASES_DIR = HERE / "cases"
GOOD_PARAMS = HERE / "good.yaml"
MEASURED = HERE / "measured"
RECORD = MEASURED / "record.yaml"
# The project's files that the casebook's outcomes depend on: a user's `dvc repro` adds its outputs to .gitignore,
# and ignore rules change no result.
MARGIN_INPUTS = tuple(name for name in PROJECT_FILES if name != ".gitignore")
# Three cases are the canaries: the narrowest margins measured, whichever ISA gave them.
NARROWEST = 3
TEST_FILE = "tests/test_casebook.py"
GOOD_CHECK = f"{TEST_FILE}::test_good_is_a_genuinely_good_model"
CASE_TEST = f"{TEST_FILE}::test_case_is_found_by_segbisect_and_diagnosed"
NUMERICS_TEST = "tests/test_numerics.py"


def case_folders() -> list[Path]:
    """Every case's folder, in order."""
    return sorted(p for p in CASES_DIR.iterdir() if (p / "case.yaml").is_file())


def margin(foreground: float, threshold: float) -> float:
    """The factor by which a hybrid's predicted foreground share clears the all-zero threshold, on whichever side
    it falls: 3 means three times the threshold, or a third of it; infinite for exactly no foreground."""
    low, high = sorted((foreground, threshold))
    return math.inf if low <= 0 else high / low


def narrowest_hybrid(hybrids: Iterable[Mapping[str, Any]]) -> tuple[float, str]:
    """The smallest margin among a bisection's hybrids (report.json's rows) and the label of the hybrid it is."""
    margins = [
        (margin(h["metrics"]["foreground_fraction"], h["metrics"]["all_zero_threshold"]), h["label"])
        for h in hybrids
        if {"foreground_fraction", "all_zero_threshold"} <= h.get("metrics", {}).keys()
    ]
    return min(margins, default=(math.nan, ""))


def second_isa(flags: set[str]) -> str:
    """The other kernel set CI checks: AVX2 beside AVX-512, SSE4.1 beside AVX2."""
    return "AVX2" if "avx512f" in flags else "SSE41"


@dataclass(frozen=True)
class Record:
    """What measured/record.yaml holds: the commit and CPU the casebook was measured on, its table per ISA (a file
    in measured/), and the narrowest cases with the reason each was chosen."""

    commit: str
    cpu: str
    tables: dict[str, str]
    narrowest: dict[str, str]

    @classmethod
    def load(cls, path: Path = RECORD) -> Record:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing: this checkout has no casebook record; on a clean tree, run "
                "`.venv/bin/python examples/zero-predictions/run_casebook.py --record --out results/record` "
                "(the whole casebook twice, about 40 minutes on 2 cores) and commit measured/"
            )
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(data["commit"], data["cpu"], data["tables"], data["second_isa_cases"])

    def write(self, path: Path = RECORD) -> None:
        header = "# Written by `run_casebook.py --record`; .ci/run's second-ISA pass reads it (see margins.py).\n"
        body = {"commit": self.commit, "cpu": self.cpu, "tables": self.tables, "second_isa_cases": self.narrowest}
        path.write_text(header + yaml.safe_dump(body, sort_keys=False, width=200), encoding="utf-8")

    def read_tables(self) -> dict[str, pd.DataFrame]:
        return {isa: pd.read_csv(MEASURED / name) for isa, name in self.tables.items()}


def narrowest_cases(tables: Mapping[str, pd.DataFrame], count: int = NARROWEST) -> dict[str, str]:
    """The `count` narrowest margins under any ISA, narrowest first, each as the case it was measured in, with the
    case's margins. Cases whose narrowest margin is their GOOD's, one GOOD that several cases start from (the same
    margin under the same ISA), are one measurement: the quickest of them represents it, and its reason names the
    others."""
    found: dict[str, list[tuple[float, str]]] = {}
    seconds: dict[str, float] = {}
    for isa, table in tables.items():
        for row in table.to_dict("records"):
            text = f"{row['margin']:.3g}x at {row['margin at']} under {isa}"
            found.setdefault(row["case"], []).append((float(row["margin"]), text))
            seconds[row["case"]] = seconds.get(row["case"], 0.0) + float(row["seconds"])
    measurements: dict[tuple[float, str, str], list[str]] = {}
    for case in sorted(found, key=lambda case: (min(found[case]), seconds[case])):
        narrow, text = min(found[case])
        measurements.setdefault((narrow, text, "" if " at GOOD " in text else case), []).append(case)
    chosen = {}
    for case, *others in list(measurements.values())[:count]:
        also = f" (the same GOOD as in {', '.join(others)})" if others else ""
        chosen[case] = "; ".join(text for _, text in sorted(found[case])) + also
    return chosen


def changed_since(commit: str, paths: list[str], root: Path = ROOT) -> list[str] | None:
    """The files under `paths` that differ from `commit`: changed since, committed or not, or new and untracked.
    None when `commit` is not in this clone's history."""
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    if known.returncode != 0:
        return None

    def git_lines(*args: str) -> list[str]:
        return subprocess.run(
            ["git", *args, "--", *paths], cwd=root, check=True, capture_output=True, text=True
        ).stdout.split()

    return sorted({*git_lines("diff", "--name-only", commit), *git_lines("ls-files", "--others", "--exclude-standard")})


def changed_cases(commit: str, root: Path = ROOT) -> set[str] | None:
    """The case folders with files changed since `commit`; None (all of them) when GOOD's params changed too, or
    when `commit` is not in this clone's history."""
    cases, good = (path.relative_to(ROOT).as_posix() for path in (CASES_DIR, GOOD_PARAMS))
    changed = changed_since(commit, [cases, good], root)
    return None if changed is None or good in changed else {Path(p).relative_to(cases).parts[0] for p in changed}


def second_isa_selection(cases: list[str], record: Record, changed: set[str] | None) -> dict[str, str]:
    """Every case the second-ISA pass runs, with the reason: the record's narrowest, and those whose margins it
    cannot vouch for (`changed` since its commit, as changed_cases says, or never measured)."""
    since = f"since {record.commit[:12]}"
    measured = set().union(*(table["case"] for table in record.read_tables().values()))
    why = {case: f"narrowest margin: {text}" for case, text in record.narrowest.items() if case in cases}
    for case in cases:
        if changed is None:
            why.setdefault(case, f"the record's commit is unknown here, or {GOOD_PARAMS.name} changed {since}")
        elif case in changed:
            why.setdefault(case, f"its files changed {since}")
        elif case not in measured:
            why.setdefault(case, "not in the record")
    return why


def caveats(record: Record, isa: str) -> list[str]:
    """What the record cannot vouch for on this checkout and CPU, beside the cases the selection adds."""
    found = []
    if isa not in record.tables:
        found.append(f"the record measured {' and '.join(record.tables)}, not {isa} as this CPU's second ISA")
    changed = changed_since(record.commit, list(MARGIN_INPUTS))
    if changed:
        found.append(
            f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} changed since {record.commit[:12]}: "
            "its margins predate them (run_casebook.py --record before any casebook figure changes)"
        )
    return found


def main(argv: list[str]) -> int:
    isa = second_isa(cpu_model_and_flags()[1])
    if argv == ["isa"]:
        print(isa)
        return 0
    if argv:
        print(f"usage: {Path(__file__).name} [isa]", file=sys.stderr)
        return 2
    cases = [p.name for p in case_folders()]
    try:
        record = Record.load()
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    selection = second_isa_selection(cases, record, changed_cases(record.commit))
    for case, why in selection.items():
        print(f"second ISA: {case}: {why}", file=sys.stderr)
    for warning in caveats(record, isa):
        print(f"second ISA: warning: {warning}", file=sys.stderr)
    print("\n".join([NUMERICS_TEST, GOOD_CHECK, *(f"{CASE_TEST}[{case}]" for case in selection)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

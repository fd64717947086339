"""Run the zero-predictions casebook: every known cause of all-zero predictions, found by segbisect.

One base repository holds the project with the GOOD params (good.yaml over params.yaml), reproduced once;
every case's BAD is a params file overlaid on it or a commit on a branch (a patch applied in a temporary
worktree), so all cases share one DVC cache and GOOD's stages are restored, never re-run.

    python examples/zero-predictions/run_casebook.py [--cases 01-ignore-255 ...] [--out DIR] [--jobs 2]
    python examples/zero-predictions/run_casebook.py --record [--out DIR]

writes DIR/casebook.md and DIR/casebook.csv (plus the base repo and segbisect's reports). DIR records what GOOD was
built from (casebook.json); a later run into DIR reuses GOOD when those inputs match, runs only the cases it names,
and writes tables with every case run there against that GOOD. `--record` runs every case under this CPU's oneDNN
kernels and again under the second ISA (see margins.py), each in DIR/<ISA>, and writes both tables and record.yaml
into measured/, which CI's second-ISA pass reads (see margins.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import segbisect
from margins import (
    CASES_DIR,
    GOOD_PARAMS,
    HERE,
    MARGIN_INPUTS,
    MEASURED,
    Record,
    case_folders,
    narrowest_cases,
    narrowest_hybrid,
    second_isa,
)
from pipeline.numerics import cpu_model_and_flags, numeric_environment, onednn_isa
from pipeline.scratch import ROOT, deep_merge, git, make_repo

GOOD_BRANCH = "main"
SEGBISECT = Path(segbisect.__file__).resolve().parent
# What GOOD in a casebook folder was built from, and whether its build finished: a folder holding it is one this
# script wrote.
MARKER = "casebook.json"
# Each case's latest outcome, one JSON file per case: the rows of the casebook's tables.
OUTCOMES = "outcomes"
# Everything else this script writes into a casebook folder (MLflow puts its artifacts beside its database; the
# temporary worktrees are left only by a run killed outright): all of it belongs to one GOOD.
WRITTEN = ("repo", "mlflow.db", "mlruns", "segbisect", OUTCOMES, "casebook.md", "casebook.csv")
WORKTREES = ".casebook-*"
COLUMNS = (
    "case",
    "cause",
    "BAD ref",
    "expected stage",
    "stage named",
    "minimal units",
    "diagnosis",
    "GOOD fg",
    "BAD fg",
    "BAD all-zero at",
    "hybrids",
    "stage executions",
    "seconds",
    "margin",
    "margin at",
    "finished",
)


@dataclass(frozen=True)
class Case:
    """One cause: GOOD (the base, optionally with a params overlay) and BAD (a params overlay or a patch)."""

    name: str
    cause: str
    description: str
    stage: str
    units: list[str]
    diagnosis: str  # the exact `category/cause` evaluate's diagnostics must give BAD
    good: dict[str, Any] = field(default_factory=dict)
    bad_params: Path | None = None
    bad_patch: Path | None = None


@dataclass
class Outcome:
    """What segbisect said about one case, with the numbers the table and the tests check."""

    case: Case
    report: dict[str, Any]
    seconds: float
    exit_code: int
    bad_ref: str
    jobs: int
    finished: str

    def hybrid(self, label: str) -> dict[str, Any]:
        return next((h for h in self.report.get("hybrids", []) if h["label"] == label), {})

    def metrics(self, label: str) -> dict[str, Any]:
        """The evaluate metrics of the hybrid labelled GOOD or BAD (empty when it did not run)."""
        return self.hybrid(label).get("metrics", {})

    @property
    def good_fg(self) -> float | None:
        return self.metrics("GOOD").get("foreground_fraction")

    @property
    def bad_fg(self) -> float | None:
        return self.metrics("BAD").get("foreground_fraction")

    @property
    def culprit(self) -> dict[str, Any]:
        return self.report.get("culprit") or {}

    @property
    def stage(self) -> str | None:
        return self.culprit.get("stage")

    @property
    def units(self) -> list[str]:
        return [u["name"] for u in self.culprit.get("units", [])]

    @property
    def diagnosis(self) -> str:
        """Category/cause from the failing hybrid's diagnostics.json (segbisect carries it in the verdict)."""
        diag = self.culprit.get("diagnostics") or {}
        return f"{diag.get('category', 'missing')}/{diag.get('cause', 'missing')}"

    @property
    def margin(self) -> tuple[float, str]:
        """The narrowest margin of any hybrid to the all-zero threshold, and which hybrid (see margins.py)."""
        return narrowest_hybrid(self.report.get("hybrids", []))

    def row(self) -> dict[str, Any]:
        margin, margin_at = self.margin
        return dict(
            zip(
                COLUMNS,
                (
                    self.case.name,
                    self.case.cause,
                    self.bad_ref,
                    self.case.stage,
                    self.stage or self.report.get("verdict"),
                    ", ".join(self.units),
                    self.diagnosis,
                    _round(self.good_fg),
                    _round(self.bad_fg),
                    _round(self.metrics("BAD").get("all_zero_threshold")),
                    len(self.report.get("hybrids", [])),
                    self.report.get("stage_executions"),
                    round(self.seconds, 1),
                    round(margin, 2),
                    margin_at,
                    self.finished,
                ),
            )
        )

    def save(self, out: Path) -> None:
        """outcomes/<case>.json in the casebook folder `out`, with what the row depends on besides GOOD (see
        case_inputs); written whole or not at all, so a killed run leaves the earlier row."""
        folder = out / OUTCOMES
        folder.mkdir(exist_ok=True)
        fields = {k: v for k, v in asdict(self).items() if k != "case"}
        partial = folder / f".{self.case.name}.json.tmp"
        partial.write_text(json.dumps({"inputs": case_inputs(self.case), **fields}))
        partial.replace(folder / f"{self.case.name}.json")

    @classmethod
    def load(cls, case: Case, fields: dict[str, Any]) -> Outcome:
        return cls(case, **{k: v for k, v in fields.items() if k != "inputs"})


def load_cases(names: list[str] | None = None) -> list[Case]:
    """The case folders (all, or those named), in order."""
    folders = case_folders()
    if names:
        unknown = set(names) - {p.name for p in folders}
        if unknown:
            raise SystemExit(
                f"unknown case(s): {', '.join(sorted(unknown))} (known: {', '.join(p.name for p in folders)})"
            )
        folders = [p for p in folders if p.name in names]
    return [load_case(p) for p in folders]


def load_case(folder: Path) -> Case:
    spec = yaml.safe_load((folder / "case.yaml").read_text())
    diagnosis = spec.get("diagnosis")
    if not re.fullmatch(r"\w+/\w+", str(diagnosis)):
        raise SystemExit(f"{folder / 'case.yaml'}: diagnosis must be one `category/cause`, got {diagnosis!r}")
    params, patch = folder / "bad.yaml", folder / "bad.patch"
    return Case(
        folder.name,
        spec["cause"],
        " ".join(spec["description"].split()),
        spec["stage"],
        spec["units"],
        diagnosis,
        spec.get("good") or {},
        params if params.is_file() else None,
        patch if patch.is_file() else None,
    )


def stage_env(tracking_uri: str) -> dict[str, str]:
    """This interpreter's tools first on PATH (dvc.yaml runs `python -m ...`) and one MLflow store for everything."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def tree_digest(root: Path, names: Iterable[str]) -> str:
    """Every file under `names` (relative to `root`), by path and content; bytecode caches left out."""
    digest = hashlib.sha256()
    for name in names:
        path = root / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def good_inputs(overlay: dict[str, Any]) -> dict[str, str]:
    """What GOOD's outcome depends on, each part hashed on its own so that a changed one can be named: the
    project's files (not .gitignore, which a user's `dvc repro` edits and which changes no result), GOOD's params,
    and the numeric environment that this process hands its stages (CPU, oneDNN on or off and its ISA, library
    versions; not the host, nor the GPUs, which a process only lists once it has imported TensorFlow). GOOD built
    from the same inputs is the same GOOD; another ISA trains another model and needs its own."""
    numeric = {k: v for k, v in numeric_environment().items() if k not in ("host", "gpus")}
    return {
        "project files": tree_digest(ROOT, MARGIN_INPUTS),
        "GOOD params": json_digest(overlay),
        "numeric environment": json_digest(numeric),
    }


def good_key(overlay: dict[str, Any]) -> str:
    """GOOD's inputs (see good_inputs) as one name."""
    return json_digest(good_inputs(overlay))


def case_inputs(case: Case) -> str:
    """What a case's row depends on besides GOOD: its folder's files and segbisect's code."""
    return json_digest([tree_digest(CASES_DIR, [case.name]), tree_digest(SEGBISECT.parent, [SEGBISECT.name])])


@dataclass(frozen=True)
class GoodMarker:
    """casebook.json: the inputs GOOD in a casebook folder was built from (good_inputs), and whether it finished."""

    inputs: dict[str, str]
    built: bool

    def write(self, out: Path) -> None:
        (out / MARKER).write_text(json.dumps(asdict(self), indent=2) + "\n")


def read_marker(out: Path) -> GoodMarker | None:
    """The marker of the casebook folder `out`; None for a new or empty folder. Any other folder is refused, so
    that nothing this script did not write is ever removed."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"{out}: not a folder; pass a new or empty folder as --out")
    if not out.exists() or not any(out.iterdir()):
        return None
    path = out / MARKER
    if not path.is_file():
        raise SystemExit(f"{out}: not a casebook folder (not empty, and no {MARKER}); pass a new or empty --out")
    try:
        fields = json.loads(path.read_text())
        return GoodMarker(dict(fields["inputs"]), bool(fields["built"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: unreadable ({exc!r}), so {out} is no casebook folder; pass another --out") from None


@dataclass(frozen=True)
class GoodPlan:
    """Whether GOOD in a casebook folder must be built, and the one line that says why, or that it is reused."""

    build: bool
    why: str


def plan_good(out: Path, inputs: dict[str, str]) -> GoodPlan:
    """Reuse GOOD in `out` when its build finished there from the same inputs; else build it."""
    marker = read_marker(out)
    if marker is None:
        return GoodPlan(True, f"{out}: new casebook folder: building GOOD")
    if not marker.built or not (out / "repo" / "dvc.lock").is_file():
        return GoodPlan(True, f"{out}: GOOD there is incomplete (its build was interrupted or failed): rebuilding it")
    changed = [name for name, value in inputs.items() if marker.inputs.get(name) != value]
    if changed:
        return GoodPlan(
            True, f"{out}: GOOD there was built from other {' and '.join(changed)}: rebuilding it, dropping its rows"
        )
    return GoodPlan(False, f"{out}: reusing GOOD, built there from the same {', '.join(inputs)}")


def prepare_good(out: Path, overlay: dict[str, Any], env: dict[str, str]) -> Path:
    """GOOD's repository in the casebook folder `out`, reused or (re)built as plan_good says. A rebuild first
    removes everything made from the GOOD before, so that no table mixes the rows of two GOODs."""
    inputs = good_inputs(overlay)
    plan = plan_good(out, inputs)
    print(plan.why, flush=True)
    if plan.build:
        clear(out)
        GoodMarker(inputs, built=False).write(out)
        build_base(out / "repo", overlay, env)
        GoodMarker(inputs, built=True).write(out)
    return out / "repo"


def clear(out: Path) -> None:
    """Create the casebook folder `out`, or remove what this script wrote there, and nothing else."""
    out.mkdir(parents=True, exist_ok=True)
    for path in [*(out / name for name in WRITTEN), *out.glob(WORKTREES)]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def earlier_outcomes(out: Path, cases: list[Case]) -> list[Outcome]:
    """The rows run earlier in the casebook folder `out` (against the GOOD there) that still describe `cases`
    as they are now. A row whose case files or segbisect changed since, or whose case is gone, is dropped, with
    a line saying so."""
    by_name = {case.name: case for case in cases}
    kept = []
    for path in sorted((out / OUTCOMES).glob("*.json")):
        case = by_name.get(path.stem)
        try:
            fields = json.loads(path.read_text())
            if case is not None and fields["inputs"] == case_inputs(case):
                kept.append(Outcome.load(case, fields))
                continue
            why = "its case is gone" if case is None else "its case files or segbisect changed since it ran"
        except (ValueError, KeyError, TypeError) as exc:
            why = f"unreadable ({exc!r})"
        print(f"{out}: earlier row of {path.stem} dropped: {why}", flush=True)
        path.unlink()
    return kept


def build_base(repo: Path, overlay: dict[str, Any], env: dict[str, str]) -> Path:
    """A git + DVC copy of the project with the GOOD params committed on `main`, reproduced into its cache."""
    make_repo(repo, overlay, branch=GOOD_BRANCH, message="GOOD: casebook base configuration")
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the GOOD pipeline failed to reproduce:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return repo


def commit_on_branch(
    repo: Path, branch: str, start: str, message: str, params: dict[str, Any] | None = None, patch: Path | None = None
) -> str:
    """(Re)create `branch` at `start` plus one commit (params overlay and/or patch), in a temporary worktree."""
    work = repo.parent / f".casebook-{branch.replace('/', '-')}"
    if work.exists():  # left by a run killed outright
        shutil.rmtree(work)
        git(repo, "worktree", "prune")
    git(repo, "worktree", "add", "-q", "-B", branch, str(work), start)
    try:
        if params:
            path = work / "params.yaml"
            path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(path.read_text()), params), sort_keys=False))
        if patch is not None:
            git(work, "apply", str(patch))
        git(work, "commit", "-q", "-am", message)
    finally:
        git(repo, "worktree", "remove", "--force", str(work))
    return branch


def make_refs(repo: Path, case: Case) -> tuple[str, str]:
    """(GOOD, BAD) references: `main` or a branch with the case's GOOD params; a params file or a patch branch."""
    good = GOOD_BRANCH
    if case.good:
        good = commit_on_branch(repo, f"{case.name}-good", GOOD_BRANCH, f"{case.name}: GOOD params", case.good)
    if case.bad_patch is not None:
        bad = commit_on_branch(repo, f"{case.name}-bad", good, f"{case.name}: {case.cause}", patch=case.bad_patch)
        return good, bad
    if case.good:
        overlay = yaml.safe_load(case.bad_params.read_text())
        return good, commit_on_branch(repo, f"{case.name}-bad", good, f"{case.name}: {case.cause}", overlay)
    return good, str(case.bad_params)


def run_segbisect(
    repo: Path, good: str, bad: str, results: Path, env: dict[str, str], jobs: int
) -> tuple[dict[str, Any], int, float]:
    """The user's one command, `segbisect GOOD BAD --json`; returns the verdict, exit code and wall seconds.
    `--fresh`: a row is its case's own whole bisection, never one resumed from the hybrids that an earlier,
    interrupted or other case's run into the same results folder finished."""
    command = Path(sys.executable).parent / "segbisect"
    args = [str(command), good, bad, "--repo", str(repo), "--results", str(results), "--jobs", str(jobs)]
    args += ["--json", "--fresh"]
    start = time.monotonic()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"verdict": f"error (exit {done.returncode})", "message": done.stderr[-2000:]}
    return report, done.returncode, seconds


def run_case(repo: Path, case: Case, results: Path, env: dict[str, str], jobs: int = 2) -> Outcome:
    good, bad = make_refs(repo, case)
    report, code, seconds = run_segbisect(repo, good, bad, results, env, jobs)
    finished = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Outcome(case, report, seconds, code, _ref_label(bad), jobs, finished)


def write_table(outcomes: list[Outcome], out: Path, good_params: Path, earlier: set[str]) -> pd.DataFrame:
    """casebook.csv and casebook.md (how GOOD was configured, which rows an earlier run made, the table, then each
    case's description)."""
    table = pd.DataFrame([o.row() for o in outcomes], columns=list(COLUMNS))
    table.to_csv(out / "casebook.csv", index=False)
    jobs = " or ".join(str(n) for n in sorted({o.jobs for o in outcomes}))
    lines = [
        "# Zero-predictions casebook",
        "",
        f"GOOD: `{good_params.name}` over `params.yaml`; "
        + "".join(f"{o.case.name} overlays `{json.dumps(o.case.good)}` on it; " for o in outcomes if o.case.good)
        + "fg = foreground_fraction; seconds = wall time of "
        + f"`segbisect GOOD BAD --json --jobs {jobs} --fresh`, finished = when it ended (UTC).",
        "",
    ]
    if earlier:
        lines += [
            f"Rows from earlier runs into this folder: {', '.join(sorted(earlier))}; against this same GOOD, with "
            "the same case files and segbisect (see `finished`).",
            "",
        ]
    lines += [markdown_table(table), ""]
    for o in outcomes:
        lines += [
            f"## {o.case.name}: {o.case.cause}",
            "",
            o.case.description,
            "",
            f"segbisect: {o.report.get('message', '')}",
            "",
        ]
    (out / "casebook.md").write_text("\n".join(lines))
    return table


def markdown_table(table: pd.DataFrame) -> str:
    cells = [[str(c) for c in table.columns]] + [
        ["" if pd.isna(v) else str(v) for v in row] for row in table.itertuples(index=False)
    ]
    rows = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join([rows[0], "|" + " --- |" * len(table.columns), *rows[1:]])


def _ref_label(ref: str) -> str:
    return f"params file {Path(ref).relative_to(HERE)}" if ref.endswith(".yaml") else f"commit on {ref}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def run_casebook(cases: list[Case], out: Path, good_params: Path, jobs: int) -> list[Outcome]:
    """Run `cases` against GOOD in the casebook folder `out` (built there, or reused: see prepare_good), and write
    casebook.csv and casebook.md there with every case run against that GOOD, in case order. Returns this run's
    outcomes."""
    env = stage_env(f"sqlite:///{out / 'mlflow.db'}")
    start = time.monotonic()
    repo = prepare_good(out, yaml.safe_load(good_params.read_text(encoding="utf-8")), env)
    print(f"GOOD ready in {time.monotonic() - start:.0f} s: {repo}", flush=True)
    rows = {o.case.name: o for o in earlier_outcomes(out, load_cases())}
    outcomes = []
    for case in cases:
        outcomes.append(run_case(repo, case, out / "segbisect", env, jobs))
        outcomes[-1].save(out)
        rows[case.name] = outcomes[-1]
        print(json.dumps(outcomes[-1].row()), flush=True)
    earlier = set(rows) - {case.name for case in cases}
    table = write_table([rows[name] for name in sorted(rows)], out, good_params, earlier)
    print(markdown_table(table))
    print(f"casebook: {out / 'casebook.md'}, {out / 'casebook.csv'}; {time.monotonic() - start:.0f} s in all")
    return outcomes


def check_record_out(out: Path, isas: tuple[str, str]) -> None:
    """--record writes one casebook folder per ISA into `out`: anything else there is refused before the first
    minute is spent."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"{out}: not a folder; pass a new or empty folder as --out")
    others = sorted(p.name for p in out.iterdir() if p.name not in isas) if out.exists() else []
    if others:
        raise SystemExit(f"{out}: holds {', '.join(others)}, which --record does not write; pass a new or empty --out")
    for isa in isas:
        read_marker(out / isa)


def record(out: Path, good_params: Path, jobs: int) -> None:
    """The whole casebook under this CPU's kernels, then under the second ISA, one after the other (the seconds
    are each run's own); measured/ is replaced only when both have finished. Each ISA's GOOD is reused where an
    earlier record into `out` built it from the same inputs (the tree is committed, so they are the commit's), but
    every case runs again: the tables hold this run's rows only."""
    changed = git(ROOT, "status", "--porcelain", "--", *MARGIN_INPUTS, HERE.relative_to(ROOT).as_posix())
    if changed.strip():
        raise SystemExit(f"{ROOT}: commit first, the record names the commit it measured:\n{changed.rstrip()}")
    commit = git(ROOT, "rev-parse", "HEAD").strip()
    model, flags = cpu_model_and_flags()
    default = onednn_isa(flags, os.environ.get("ONEDNN_MAX_CPU_ISA"))
    second = second_isa(flags)
    if default is None or default == second:
        raise SystemExit(f"{model}: oneDNN has no second instruction set to compare with {default} on this CPU")
    check_record_out(out, (default, second))
    cases = load_cases()
    outcomes = run_casebook(cases, out / default, good_params, jobs)
    os.environ["ONEDNN_MAX_CPU_ISA"] = second  # the stages inherit it (stage_env copies this environment)
    outcomes += run_casebook(cases, out / second, good_params, jobs)
    wrong = [o.case.name for o in outcomes if (o.stage, o.units) != (o.case.stage, o.case.units)]
    if wrong:
        raise SystemExit(f"not recorded: segbisect did not find the expected change in {', '.join(wrong)} ({out})")
    shutil.rmtree(MEASURED, ignore_errors=True)
    MEASURED.mkdir()
    for isa in (default, second):
        for suffix in (".csv", ".md"):
            shutil.copyfile(out / isa / f"casebook{suffix}", MEASURED / f"{isa}{suffix}")
    tables = {isa: f"{isa}.csv" for isa in (default, second)}
    measured = Record(commit, model, tables, {})
    replace(measured, narrowest=narrowest_cases(measured.read_tables())).write()
    print(f"recorded: {MEASURED}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", help="case folder names (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "results" / "casebook",
        help="casebook folder: new, empty, or one this script wrote, whose GOOD is reused when built from the same "
        "inputs (default: results/casebook)",
    )
    parser.add_argument("--good-params", type=Path, default=GOOD_PARAMS, help="GOOD params overlay on params.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="segbisect --jobs for every case")
    parser.add_argument(
        "--record",
        action="store_true",
        help="every case under this CPU's kernels and the second ISA, written into measured/ (commit first)",
    )
    opts = parser.parse_args(argv)
    if opts.record and (opts.cases or opts.good_params != GOOD_PARAMS):
        parser.error("--record measures the whole casebook with good.yaml: leave out --cases and --good-params")
    if not opts.good_params.is_file():
        parser.error(f"--good-params {opts.good_params}: no such file")
    out = opts.out.resolve()
    if opts.record:
        record(out, opts.good_params, opts.jobs)
    else:
        run_casebook(load_cases(opts.cases), out, opts.good_params, opts.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

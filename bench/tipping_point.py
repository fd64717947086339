"""segbisect's tipping-point search on the real pipeline: where `evaluate.threshold` turns GOOD's predictions all-zero.

GOOD is the zero-predictions casebook's GOOD (examples/zero-predictions/good.yaml over params.yaml) with case 08's
GOOD params laid over it (threshold post-processing at 0.75), committed and reproduced in a scratch repository
(`run_casebook.prepare_good`, which leaves dvc.lock uncommitted; reused when an earlier run built it there from the
same inputs). BAD is a params file
that only raises `evaluate.threshold`, so the minimal change is that one numeric param and every probe re-runs the
evaluate stage alone. Each `--tolerances` value runs

    segbisect main BAD.yaml --tipping-point [--tipping-tolerance T] --jobs N --json --fresh

in a copy of GOOD's repository of its own (the same starting DVC cache: no run restores what another computed),
MLflow on in GOOD's SQLite store in the scratch folder.

    .venv/bin/python bench/tipping_point.py [--out bench/results] [--work DIR] [--bad-threshold 1.0]

Never asserts timings; writes <out>/tipping_point.md (the reports and journals stay in the scratch folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.scratch import deep_merge

HERE = Path(__file__).resolve().parent
CASEBOOK = HERE.parent / "examples" / "zero-predictions"
sys.path[:0] = [str(HERE), str(CASEBOOK)]
from _common import RESULTS, loadavg, machine, md_table, now, stage_env  # noqa: E402
from run_casebook import GOOD_BRANCH, GOOD_PARAMS, load_case, prepare_good  # noqa: E402

CASE = CASEBOOK / "cases" / "08-threshold-badly-scaled"
DEFAULT = "default"
SEGBISECT = Path(sys.executable).parent / "segbisect"


@dataclass(frozen=True)
class Run:
    """One segbisect command and what it gave: the --json report, its exit code, when it began (Unix time) and
    its wall seconds, the 1/5/15-minute load before and after, and the journal's attempt start times by hybrid id
    (the report has each hybrid's seconds, not when it ran)."""

    tolerance: str
    command: list[str]
    exit_code: int
    began: float
    seconds: float
    load: str
    report: dict[str, Any]
    started: dict[str, float]

    @property
    def tipping(self) -> dict[str, Any]:
        return self.report.get("tipping_point") or {}

    def hybrid(self, hybrid_id: str) -> dict[str, Any]:
        return next((h for h in self.report.get("hybrids", []) if h["id"] == hybrid_id), {})

    def probe_ids(self) -> list[str]:
        """The hybrids the search itself ran (GOOD's and BAD's own values, wave 0, came from the bisection)."""
        return [p["hybrid"] for p in self.tipping.get("probes", []) if p["wave"] > 0]


@dataclass(frozen=True)
class Phases:
    """A run's wall seconds split at the tipping search: before its first probe started (start-up, GOOD, BAD,
    the bisection), from then to its last probe's end (the search), and after (reports)."""

    before: float
    search: float
    after: float


def good_overlay() -> dict[str, Any]:
    """The casebook's GOOD params with case 08's GOOD (threshold post-processing) laid over them."""
    return deep_merge(yaml.safe_load(GOOD_PARAMS.read_text()), load_case(CASE).good)


def write_bad(work: Path, threshold: float) -> Path:
    """BAD: a params file overlaid on GOOD's params.yaml that changes the threshold alone."""
    path = work / "bad.yaml"
    path.write_text(yaml.safe_dump({"evaluate": {"threshold": threshold}}))
    return path


def copy_good(good: Path, folder: Path) -> Path:
    """A copy of GOOD's repository (with its DVC cache) for one run, so that no run restores another's stages."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return Path(shutil.copytree(good, folder / "repo", symlinks=True))


def segbisect_command(repo: Path, bad: Path, jobs: int, tolerance: str) -> list[str]:
    command = [str(SEGBISECT), GOOD_BRANCH, str(bad), "--repo", str(repo), "--results", str(repo.parent / "results")]
    command += ["--jobs", str(jobs), "--tipping-point", "--json", "--fresh"]
    return command + ([] if tolerance == DEFAULT else ["--tipping-tolerance", tolerance])


def run_segbisect(command: list[str], results: Path, env: dict[str, str], tolerance: str) -> Run:
    """Run one bisection and read its report (stdout) and journal (`results` is this run's own folder)."""
    load, began = loadavg(), time.time()
    start = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"verdict": f"error (exit {done.returncode})", "message": done.stderr[-2000:]}
    (results.parent / "stderr.log").write_text(done.stderr)
    load = f"{load} -> {loadavg()}"
    return Run(tolerance, command, done.returncode, began, seconds, load, report, attempt_starts(results))


def attempt_starts(results: Path) -> dict[str, float]:
    """Each journaled hybrid's first attempt start (Unix time), by hybrid id."""
    starts: dict[str, float] = {}
    for journal in results.glob("*/journal.jsonl"):
        for line in journal.read_text().splitlines():
            record = json.loads(line)
            attempts = record.get("attempts") or [{}]
            if record.get("type") == "hybrid" and attempts[0].get("started") is not None:
                starts[record["id"]] = attempts[0]["started"]
    return starts


def phases(run: Run) -> Phases | None:
    """The run's wall time split at its first probe's start and its last probe's end (None: no probe ran)."""
    ids = [i for i in run.probe_ids() if i in run.started]
    if not ids:
        return None
    first = min(run.started[i] for i in ids) - run.began
    last = max(run.started[i] + run.hybrid(i).get("seconds", 0.0) for i in ids) - run.began
    return Phases(before=first, search=last - first, after=run.seconds - last)


def probe_rows(run: Run) -> list[dict[str, Any]]:
    """The probes along the axis, GOOD's and BAD's own values included, with the metrics the predicate reads."""
    rows = []
    for probe in run.tipping.get("probes", []):
        hybrid = run.hybrid(probe["hybrid"])
        metrics = hybrid.get("metrics", {})
        rows.append(
            {
                "threshold": str(probe["value"]),
                "outcome": probe["outcome"],
                "foreground_fraction": metrics.get("foreground_fraction"),
                "all_zero_threshold": metrics.get("all_zero_threshold"),
                "hybrid": probe["hybrid"],
                "wave": probe["wave"],
                "executed": ", ".join(hybrid.get("executed", [])) or "-",
                "hybrid s": hybrid.get("seconds"),
            }
        )
    return rows


def summary_row(run: Run) -> dict[str, Any]:
    tipping, probes, split = run.tipping, run.probe_ids(), phases(run)
    return {
        "tolerance": run.tolerance,
        "exit": run.exit_code,
        "verdict": run.report.get("verdict"),
        "passes up to": str(tipping.get("passes_up_to")),
        "fails from": str(tipping.get("fails_from")),
        "hybrids": len(run.report.get("hybrids", [])),
        "stage executions": run.report.get("stage_executions"),
        "probes": len(probes),
        "waves": max((p["wave"] for p in tipping.get("probes", [])), default=0),
        "wall s": round(run.seconds, 1),
        "before the search s": round(split.before, 1) if split else "-",
        "search s": round(split.search, 1) if split else "-",
        "after s": round(split.after, 1) if split else "-",
        "probe hybrids s (sum)": round(sum(run.hybrid(i).get("seconds", 0.0) for i in probes), 1),
        "load before -> after": run.load,
    }


def render(meta: dict[str, Any], runs: list[Run]) -> str:
    cpu = meta["machine"]
    lines = [
        "# Tipping point of `evaluate.threshold` (`tipping_point.py`)",
        "",
        f"Command: `{meta['command']}`, {meta['started']} to {meta['finished']}; {cpu['cores']} cores "
        f"`{cpu['cpu_model']}`, Python {cpu['python']}.",
        "",
        f"GOOD: `{json.dumps(meta['good'])}` over `params.yaml`, committed as `{GOOD_BRANCH}` and reproduced "
        f"({meta['good_build']}). BAD: the params file `{json.dumps(meta['bad'])}` over it. fail-if: the "
        "project's (`foreground_fraction <= all_zero_threshold`). MLflow on, a SQLite store in the scratch folder. "
        "Each run starts from its own copy of GOOD's reproduced repository.",
        "",
        "Seconds: wall = the segbisect command; before the search = from its start to the first probe's start "
        "(start-up, GOOD's and BAD's hybrids, the bisection); search = first probe's start to last probe's end "
        "(journal `started` plus the report's hybrid seconds); after = the rest (reports). Load: 1/5/15-minute "
        "load averages (2 saturates the machine).",
        "",
        md_table([summary_row(run) for run in runs]),
    ]
    for run in runs:
        lines += [
            f"## Tolerance {run.tolerance}",
            "",
            "`" + " ".join(Path(part).name if part.startswith("/") else part for part in run.command) + "`",
            "",
            f"segbisect: {run.report.get('message', '')}",
            "",
            md_table(probe_rows(run)) if run.tipping else "(no tipping_point in the report)\n",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for tipping_point.md (default bench/results)")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/segbisect-bench-tipping"),
        help="scratch folder: GOOD (reused when built there from the same inputs), one copy of it per run",
    )
    ap.add_argument("--bad-threshold", type=float, default=1.0, help="BAD's evaluate.threshold (default 1.0)")
    ap.add_argument("--jobs", type=int, default=2, help="segbisect --jobs (default 2)")
    ap.add_argument(
        "--tolerances",
        default=f"{DEFAULT},1.02",
        help=f"comma-separated --tipping-tolerance values, one bisection each ({DEFAULT}: the option left out)",
    )
    opts = ap.parse_args(argv)
    problem = bad_option(opts)
    if problem:
        ap.error(problem)
    return opts


def bad_option(opts: argparse.Namespace) -> str:
    """What is wrong with the options, before GOOD's minutes are spent (empty: nothing)."""
    if not 0.0 < opts.bad_threshold <= 1.0:
        return f"--bad-threshold {opts.bad_threshold}: evaluate.threshold must lie in (0, 1]"
    if opts.jobs < 1:
        return f"--jobs {opts.jobs}: at least 1"
    for tolerance in opts.tolerances.split(","):
        try:
            ok = tolerance == DEFAULT or float(tolerance) > 1.0
        except ValueError:
            ok = False
        if not ok:
            return f"--tolerances: {tolerance!r} is neither {DEFAULT} nor a number above 1"
    return ""


def build_good(good: Path, env: dict[str, str]) -> tuple[dict[str, Any], Path, str]:
    """GOOD's params, its reproduced repository, and a line saying what building (or reusing) it took."""
    overlay, start = good_overlay(), time.monotonic()
    repo = prepare_good(good, overlay, env)
    return overlay, repo, f"{time.monotonic() - start:.0f} s to build or reuse it, load {loadavg()} after"


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    work = opts.work.resolve()
    env = stage_env(f"sqlite:///{work / 'good' / 'mlflow.db'}")
    started = now()
    overlay, good, good_build = build_good(work / "good", env)
    print(f"GOOD ready: {good_build}", flush=True)
    bad = write_bad(work, opts.bad_threshold)
    runs = []
    for tolerance in opts.tolerances.split(","):
        repo = copy_good(good, work / "runs" / f"tolerance-{tolerance}")
        command = segbisect_command(repo, bad, opts.jobs, tolerance)
        runs.append(run_segbisect(command, repo.parent / "results", env, tolerance))
        print(json.dumps(summary_row(runs[-1])), flush=True)
    meta = {
        "command": " ".join([".venv/bin/python bench/tipping_point.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": started,
        "finished": now(),
        "machine": machine(),
        "good": overlay,
        "good_build": good_build,
        "bad": {"evaluate": {"threshold": opts.bad_threshold}},
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "tipping_point.md").write_text(render(meta, runs))
    print(f"wrote {opts.out / 'tipping_point.md'}; scratch: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Params scale: how long segbisect takes to start its first hybrid when a stage reads a params section of many keys.

On the tests' toy pipeline (bisect/tests/segbisect_toy.py: four stdlib-only stages, each `dvc repro` about a
second), the train stage's params section gets N extra keys (`train.k00000`...: the stage reads the whole section,
uses none of them); GOOD is that configuration reproduced, BAD = GOOD with one changed key, `train.lr: 2.0` (the
toy's collapse), so the verdict is the same at every N. For each N and repetition, in its own copy of the reproduced
repository and results folder:

- `first hybrid s`: from starting `segbisect good bad --no-mlflow --json` to the first hybrid's log file appearing
  (the hybrid has its worktree and starts `dvc repro`): everything before any stage runs, interpreter start,
  snapshot reading and unit diffing included;
- `verdict s`: the whole run, and its verdict and culprit;
- `diff s`: `units.diff` alone, in this process, on the two snapshots' params as segbisect reads them (median of
  `--diff-reps`), also for `--diff-sizes` too large to bisect in a benchmark's time.

Never asserts timings; writes bench/results/params_scale.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from segbisect.project.changes import diff
from segbisect.project.refs import Reference
from segbisect.project.snapshot import Snapshot, StageSnap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bisect" / "tests"))
from _common import RESULTS, VENV_BIN, loadavg, machine, md_table, now, stage_env, write_results  # noqa: E402
from segbisect_toy import PARAMS, bad_commit, commit, dvc, make_toy_repo, sh, write_params  # noqa: E402

CULPRIT = {"train": {"lr": 2.0}}


def section(keys: int) -> dict[str, Any]:
    """The train section with `keys` extra keys besides the toy's own four."""
    return {**PARAMS["train"], **{f"k{i:05d}": i for i in range(keys)}}


def template(work: Path, keys: int) -> Path:
    """The toy repository with GOOD (tag `good`) reading `keys` extra train keys, reproduced, and BAD (tag `bad`)."""
    repo = make_toy_repo(work / f"template-{keys}")
    write_params(repo, {**PARAMS, "train": section(keys)})
    dvc(repo, "repro", "-q")
    commit(repo, f"good: {keys} extra train keys")
    sh(repo, "git", "tag", "-f", "good")
    bad_commit(repo, CULPRIT)
    return repo


def first_hybrid(repo: Path, results: Path) -> dict[str, Any]:
    """One bisection: seconds to the first hybrid's log, to the verdict, and what the verdict says."""
    cmd = [str(VENV_BIN / "segbisect"), "good", "bad", "--repo", str(repo), "--results", str(results)]
    out, err = results.parent / "stdout.json", results.parent / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen([*cmd, "--no-mlflow", "--json"], env=stage_env(), stdout=stdout, stderr=stderr)
        first = None
        while proc.poll() is None:
            if first is None and any(results.glob("*/logs/*.log")):
                first = time.perf_counter() - start
            time.sleep(0.02)
        total = time.perf_counter() - start
    try:
        report = json.loads(out.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        report = {"verdict": f"no JSON: {err.read_text(encoding='utf-8', errors='replace')[-300:]!r}"}
    culprit = report.get("culprit") or {}
    return {
        "first_hybrid_s": first,
        "verdict_s": total,
        "exit": proc.returncode,
        "verdict": report.get("verdict"),
        "culprit": ",".join(sorted(u["name"] for u in culprit.get("units", []))),
        "hybrids": len(report.get("hybrids", [])),
    }


def snapshots(keys: int) -> tuple[Snapshot, Snapshot]:
    """GOOD and BAD as segbisect holds them after reading the toy (its four stages, train reading `keys` more)."""
    stages = [
        StageSnap("prepare", params={("params.yaml", ("prepare", "n")), ("params.yaml", ("prepare", "fg_value"))}),
        StageSnap("preprocess", params={("params.yaml", ("preprocess",))}),
        StageSnap("train", params={("params.yaml", ("train",))}),
        StageSnap("evaluate", params={("params.yaml", ("evaluate",))}),
    ]
    dvcyaml: dict[str, Any] = {"stages": {stage.name: {"cmd": f"python {stage.name}.py"} for stage in stages}}
    good = {**PARAMS, "train": section(keys)}
    bad = {**good, "train": {**good["train"], **CULPRIT["train"]}}
    return tuple(  # type: ignore[return-value]
        Snapshot(Reference(name, "git", "0" * 40), Path("/nonexistent"), stages, {"params.yaml": data}, dvcyaml)
        for name, data in (("good", good), ("bad", bad))
    )


def diff_seconds(keys: int, reps: int) -> dict[str, Any]:
    times, units = [], 0
    for _ in range(reps):
        good, bad = snapshots(keys)
        start = time.perf_counter()
        units = len(diff(good, bad).units)
        times.append(time.perf_counter() - start)
    return {"keys": keys, "diff_s": statistics.median(times), "units": units, "load": loadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,10000", help="extra train keys per bisection, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="bisections per size")
    ap.add_argument("--diff-sizes", default="10,1000,10000,100000")
    ap.add_argument("--diff-reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbisect-bench-params"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started, load_start = now(), loadavg()
    runs = []
    for keys in [int(n) for n in args.sizes.split(",")]:
        repo = template(args.work, keys)
        for rep in range(args.reps):
            copy = Path(shutil.copytree(repo, args.work / f"run-{keys}-{rep}" / "toy", symlinks=True))
            row = {"keys": keys, "rep": rep, **first_hybrid(copy, copy.parent / "results"), "load": loadavg()}
            print(row, flush=True)
            runs.append(row)
    diffs = [diff_seconds(int(n), args.diff_reps) for n in args.diff_sizes.split(",")]
    for row in diffs:
        print(row, flush=True)
    summary = [
        {
            "keys": keys,
            "first hybrid s (median)": statistics.median(r["first_hybrid_s"] for r in rows),
            "first hybrid s (min-max)": f"{min(r['first_hybrid_s'] for r in rows):.2f}-"
            f"{max(r['first_hybrid_s'] for r in rows):.2f}",
            "verdict s (median)": statistics.median(r["verdict_s"] for r in rows),
            "verdicts": ", ".join(sorted({f"{r['verdict']} {r['culprit']}" for r in rows})),
        }
        for keys in sorted({r["keys"] for r in runs})
        if (rows := [r for r in runs if r["keys"] == keys])
    ]
    meta = {
        "machine": machine(),
        "started": started,
        "finished": now(),
        "load_start": load_start,
        "load_end": loadavg(),
        "argv": sys.argv[1:],
    }
    markdown = (
        f"# Params scale\n\n{started} - {meta['finished']}, load {load_start} -> {meta['load_end']}, "
        f"{meta['machine']}\n\n## Time to the first hybrid\n\n{md_table(summary)}\n## Every bisection\n\n"
        f"{md_table(runs)}\n## units.diff alone\n\n{md_table(diffs)}"
    )
    write_results("params_scale", [*runs, *({"kind": "diff", **d} for d in diffs)], meta, markdown, args.out)


if __name__ == "__main__":
    main()

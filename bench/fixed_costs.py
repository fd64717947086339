"""Fixed costs per stage: process start + TensorFlow import, MLflow, DVC bookkeeping.

In a scratch copy of the tests' tiny pipeline (`pipeline.scratch.make_repo` with `TINY_PARAMS`), each
stage's cmd is wrapped by bench/_stage_profile.py (same module, same behaviour, instrumented), then
`dvc repro --force --single-item STAGE` is timed from outside, `--reps` times per stage:

    dvc_total   wall time of the whole `dvc repro` call
    python      interpreter start (`python -c pass`, median of 5), inside the stage's process
    tf_import   first import of tensorflow/keras inside the stage
    mlflow      first import of mlflow + time inside MLflow calls (experiment, run start/end, params,
                metrics, artifacts, model logging)
    dvc         DVC bookkeeping: dvc_total minus the stage process' lifetime (DVC start-up, hashing deps
                and outs, cache commit, dvc.lock) plus nothing else
    work        the rest of the stage process: the stage's actual work (data, training, evaluation)

Shares are of dvc_total. Never asserts timings; writes bench/results/fixed_costs.{md,csv,json}.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, loadavg, machine, md_table, now, stage_env, tiny_repo, write_results

PROFILER = Path(__file__).resolve().parent / "_stage_profile.py"
STAGES = ["synthesize", "prepare", "preprocess", "train", "evaluate"]


def python_start(env: dict[str, str], n: int = 5) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbisect-bench-fixed"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--params", default="", help='JSON overlay on TINY_PARAMS, e.g. \'{"preprocess": {"image_size": 64}}\''
    )
    args = ap.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    repo = tiny_repo(args.work / "repo", json.loads(args.params) if args.params else None)
    prof = args.work / "prof"
    prof.mkdir()
    dvcyaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    for name, stage in dvcyaml["stages"].items():
        stage["cmd"] = f"python {PROFILER} {name} {prof / name}.json"
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvcyaml, sort_keys=False))
    env = stage_env(f"sqlite:///{args.work / 'mlflow.db'}")
    meta: dict[str, Any] = {
        "started": now(),
        "machine": machine(),
        "load_start": loadavg(),
        "params": args.params or "TINY_PARAMS",
    }
    print(f"[{now()}] load {loadavg()}: first repro (warm-up)", flush=True)
    first = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if first.returncode != 0:
        raise SystemExit(first.stdout[-2000:] + first.stderr[-2000:])
    py = python_start(env)
    rows = []
    for rep in range(args.reps):
        for stage in STAGES:
            load = loadavg()
            start = time.time()
            run = subprocess.run(
                [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
            )
            end = time.time()
            if run.returncode != 0:
                raise SystemExit(f"{stage}: {run.stdout[-1500:]}{run.stderr[-1500:]}")
            p = json.loads((prof / f"{stage}.json").read_text())
            total = end - start
            process = (p["end"] - p["start"]) + py
            mlflow = p["mlflow_import"] + p["mlflow_calls"]
            rows.append(
                {
                    "stage": stage,
                    "rep": rep + 1,
                    "dvc_total_s": round(total, 2),
                    "python_start_s": round(py, 3),
                    "tf_import_s": p["tf_import"],
                    "mlflow_import_s": p["mlflow_import"],
                    "mlflow_calls_s": p["mlflow_calls"],
                    "dvc_s": round(total - process, 2),
                    "work_s": round(process - py - p["tf_import"] - mlflow, 2),
                    "load": load,
                }
            )
            print(f"[{now()}] {rows[-1]}", flush=True)
    # one more: the DVC-only cost of a repro that has nothing to do, and of `dvc status`
    noop = []
    for cmd in (["repro"], ["status"]):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", *cmd], cwd=repo, env=env, capture_output=True, check=True)
        noop.append(
            {
                "command": "dvc " + " ".join(cmd) + " (nothing to do, 5 stages)",
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    meta.update(finished=now(), load_end=loadavg(), noop=noop)
    summary = summarize(rows)
    text = markdown(summary, rows, noop, meta)
    write_results("fixed_costs", rows, meta, text, args.out)
    write_results("fixed_costs_summary", summary, meta, text, args.out)
    print(text)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for stage in STAGES:
        mine = [r for r in rows if r["stage"] == stage]
        med = {
            k: statistics.median(r[k] for r in mine)
            for k in (
                "dvc_total_s",
                "python_start_s",
                "tf_import_s",
                "mlflow_import_s",
                "mlflow_calls_s",
                "dvc_s",
                "work_s",
            )
        }
        total = med["dvc_total_s"]
        mlflow = med["mlflow_import_s"] + med["mlflow_calls_s"]
        out.append(
            {
                "stage": stage,
                "total_s": round(total, 2),
                "python+TF import_s": round(med["python_start_s"] + med["tf_import_s"], 2),
                "MLflow_s": round(mlflow, 2),
                "DVC_s": round(med["dvc_s"], 2),
                "work_s": round(med["work_s"], 2),
                "python+TF %": round(100 * (med["python_start_s"] + med["tf_import_s"]) / total, 1),
                "MLflow %": round(100 * mlflow / total, 1),
                "DVC %": round(100 * med["dvc_s"] / total, 1),
                "fixed %": round(100 * (med["python_start_s"] + med["tf_import_s"] + mlflow + med["dvc_s"]) / total, 1),
            }
        )
    return out


def markdown(
    summary: list[dict[str, Any]], rows: list[dict[str, Any]], noop: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    m = meta["machine"]
    return (
        f"# Fixed costs per stage\n\n{meta['started']} .. {meta['finished']}; {m['cores']} cores, {m['cpu_model']}; "
        f"load (1/5/15 min) {meta['load_start']} at start, {meta['load_end']} at end; params {meta['params']}.\n\n"
        "Medians over reps; shares of the stage's whole `dvc repro --force --single-item` time.\n\n"
        + md_table(summary)
        + "\n"
        + md_table(noop)
        + "\n## Every run\n\n"
        + md_table(rows)
    )


if __name__ == "__main__":
    main()

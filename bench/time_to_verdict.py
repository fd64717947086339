"""Time-to-verdict: segbisect against the naive baseline (no cache reuse) and the oracle cost.

For a culprit in each stage (prepare, preprocess, train, evaluate) this runs, on the tests' tiny pipeline
(`pipeline.scratch.make_repo` with `TINY_PARAMS`, the default 5-stage dvc.yaml):

(a) `segbisect good <bad params file> --json --fresh` sequentially and with `--jobs 2`, each in its own
    copy of the reproduced GOOD repository, from two starting points: BAD never run (only GOOD's stages
    are cached) and BAD already reproduced (as by a user who saw it fail: BAD's stages are cached too);
(b) the naive baseline: every hybrid segbisect ran (configurations read from its --json report: GOOD's
    params plus the `from_bad` units), replayed with `dvc repro --force` in a fresh clone with an empty
    DVC cache; and the strict variant that leaves out the configurations the user already has (GOOD, and
    BAD when reproduced). A configuration's from-scratch cost does not depend on which bisection asks for
    it, so each distinct configuration is measured once and charged to every scenario that needs it;
(c) the oracle cost, see `oracle()`.

BAD = GOOD + the culprit unit + one harmless unit (`evaluate.n_overlays`), so the search has two groups
to tell apart (one group with two units when the culprit is in evaluate). GOOD post-processes with a
foreground threshold of 0.001, so its verdict does not hang on what a one-epoch model learnt.

The executor is a dimension too (`--executors`): `local` (worktrees, `--jobs` each value), `ray` (one Ray node
with 2 CPUs) and `ray2` (two Ray nodes of 1 CPU each), both on loopback (the script re-runs itself in a private
network namespace, `unshare -n`, where only loopback exists) against a DVC remote folder into which GOOD's stages
are pushed first (untimed). Ray nodes on one 2-core machine share its cores: the Ray figures measure the
executor's overhead (packing, fetching, pushing), not a speed-up. Each Ray hybrid's fetch/run/push seconds are
in the JSON details and in the profile table.

Never asserts timings; writes bench/results/time_to_verdict.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.scratch import deep_merge
from segbisect.executors.ray_worker import node_caches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, loadavg, machine, md_table, now, stage_env, tiny_repo, write_results

STAGES = ["synthesize", "prepare", "preprocess", "train", "evaluate"]
GOOD_OVERRIDES = {"evaluate": {"postprocess": "threshold", "threshold": 0.001}}
HARMLESS = {"evaluate": {"n_overlays": 1}}

# culprit stage -> (BAD overlay on GOOD, --fail-if predicate, expected culprit unit)
SCENARIOS: dict[str, tuple[dict[str, Any], str, str]] = {
    "prepare": ({"prepare": {"label_map": {0: 0, 255: 255}}}, "true_foreground_fraction == 0", "prepare.label_map"),
    "preprocess": (
        {"preprocess": {"image_size": 48}},
        "true_foreground_fraction != 0.15169270833333334",
        "preprocess.image_size",
    ),
    "train": (
        {"train": {"learning_rate": 0.5, "class_weights": [1.0, 0.0]}},
        "foreground_fraction == 0",
        "train.learning_rate",
    ),
    "evaluate": ({"evaluate": {"threshold": 1.0}}, "foreground_fraction == 0", "evaluate.threshold"),
}


def sh(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)


def repro_timed(repo: Path, env: dict[str, str], force: bool) -> dict[str, Any]:
    """`dvc repro [--force]`, timing each executed stage from the moment DVC announces it to the next announcement."""
    args = [sys.executable, "-m", "dvc", "repro", *(["--force"] if force else [])]
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("Running stage '"):
            marks.append((line.split("'")[1], time.perf_counter()))
        tail = [*tail, line.rstrip()][-5:]
    rc = proc.wait()
    end = time.perf_counter()
    stage_seconds = {}
    for i, (name, t0) in enumerate(marks):
        t1 = marks[i + 1][1] if i + 1 < len(marks) else end
        stage_seconds[name] = round(t1 - t0, 2)
    return {
        "rc": rc,
        "seconds": round(end - start, 2),
        "stage_seconds": stage_seconds,
        "startup_seconds": round((marks[0][1] if marks else end) - start, 2),
        "tail": tail,
    }


def prepare_base(work: Path, tracking_uri: str) -> tuple[Path, dict[str, Any]]:
    """The user's situation before bisecting: GOOD committed and reproduced (its stages in the DVC cache), in a
    project where segbisect has run before: its MLflow experiment exists. The first bisection in a new store
    waits about 1.5 s for MLflow to create it; no later one does, and which run of a pass comes first is arbitrary.
    """
    base = tiny_repo(work / "base", GOOD_OVERRIDES)
    env = stage_env(tracking_uri)
    run = repro_timed(base, env, force=False)
    if run["rc"] != 0:
        raise SystemExit(f"GOOD repro failed: {run['tail']}")
    from mlflow.tracking import MlflowClient

    from segbisect.tracking.store import DEFAULT_EXPERIMENT, artifact_location

    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(DEFAULT_EXPERIMENT) is None:
        client.create_experiment(DEFAULT_EXPERIMENT, artifact_location=artifact_location(tracking_uri))
    sh(["git", "add", "-A"], base)
    sh(["git", "commit", "-q", "-m", "reproduced GOOD"], base)
    sh(["git", "tag", "good"], base)
    return base, run


def bad_params(base: Path, overlay: dict[str, Any], dest: Path) -> Path:
    params = yaml.safe_load((base / "params.yaml").read_text())
    dest.write_text(
        yaml.safe_dump(deep_merge(deep_merge(params, overlay), HARMLESS), sort_keys=False), encoding="utf-8"
    )
    return dest


def run_segbisect(
    base: Path,
    work: Path,
    bad_file: Path,
    predicate: str,
    jobs: int,
    tracking_uri: str,
    bad_cached: bool = False,
    executor: list[str] | None = None,
) -> dict[str, Any]:
    """segbisect in a private copy of the reproduced repo (same cache state for every measurement).

    `bad_cached`: first reproduce BAD in that copy (not timed), as a user who saw the failure has, then put
    GOOD's params and dvc.lock back; BAD's stages are then in the DVC cache and run-cache too.
    """
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(base, repo, symlinks=True)
    env = stage_env(tracking_uri)
    if bad_cached:
        shutil.copyfile(bad_file, repo / "params.yaml")
        run = repro_timed(repo, env, force=False)
        sh(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo)
        sh([sys.executable, "-m", "dvc", "checkout", "-q"], repo, env)
        if run["rc"] != 0:
            raise SystemExit(f"BAD repro failed: {run['tail']}")
    if executor:  # the cluster's shared remote holds what the user has reproduced, as `dvc push` would leave it
        sh([sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "shared", str(work / "remote")], repo, env)
        sh([sys.executable, "-m", "dvc", "push", "-q", "--run-cache"], repo, env)
    args = [
        str(Path(sys.executable).parent / "segbisect"),
        "good",
        str(bad_file),
        "--repo",
        str(repo),
        "--results",
        str(work / "results"),
        "--jobs",
        str(jobs),
        "--fresh",
        "--json",
        "--fail-if",
        predicate,
        *(executor or []),
    ]
    start = time.perf_counter()
    proc = sh(args, repo, env)
    seconds = time.perf_counter() - start
    (work / "segbisect.stderr.log").write_text(proc.stderr)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {"verdict": f"no report (exit {proc.returncode})", "hybrids": [], "stage_executions": 0, "units": []}
    report["_exit"], report["_seconds"] = proc.returncode, round(seconds, 2)
    return report


def hybrid_params(good_params: dict[str, Any], units: list[dict[str, Any]], from_bad: list[str]) -> dict[str, Any]:
    """GOOD's params with the chosen BAD param units (unit name = dotted params.yaml key path)."""
    params = copy.deepcopy(good_params)
    by_id = {u["id"]: u for u in units}
    for uid in from_bad:
        unit = by_id[uid]
        if unit["kind"] != "param":
            raise SystemExit(f"naive replay handles params units only, got {unit}")
        *parents, leaf = unit["name"].split(".")
        tree = params
        for part in parents:
            tree = tree.setdefault(_key(tree, part), {})
        tree[_key(tree, leaf)] = copy.deepcopy(unit["bad"])
    return params


def _key(tree: dict[str, Any], part: str) -> Any:
    """params.yaml keys may be ints (label_map): a dotted unit name spells them as digits."""
    return int(part) if part not in tree and part.lstrip("-").isdigit() and int(part) in tree else part


def naive_replay(base: Path, work: Path, params: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """A fresh clone (empty DVC cache) of GOOD's commit with this configuration, `dvc repro --force`."""
    ws = work / "naive-ws"
    if ws.exists():
        shutil.rmtree(ws)
    sh(["git", "clone", "-q", str(base), str(ws)], work)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    run = repro_timed(ws, stage_env(tracking_uri), force=True)
    run["seconds_total"] = round(time.perf_counter() - start, 2)
    shutil.rmtree(ws, ignore_errors=True)
    return run


def unit_stage_index(unit: dict[str, Any]) -> int:
    return min(STAGES.index(s) for s in unit["stages"])


def oracle(
    units: list[dict[str, Any]], culprit: list[str], bad_cached: bool = False
) -> list[tuple[str, frozenset[str], list[str]]]:
    """The hybrids a perfect bisection must run, and the stages each must execute.

    Hybrids: the minimal evidence for the verdict segbisect reports, knowing the answer in advance:
    BAD fails, the culprit units alone (on GOOD) fail = sufficient, BAD without them passes = necessary,
    and, when the culprit is several units, each of them left out passes (1-minimality).
    GOOD is already reproduced, so it costs nothing; with `bad_cached`, neither does BAD. Stage executions:
    with perfect cache reuse a stage runs only when the BAD units at or upstream of it (in pipeline order)
    form a combination no earlier hybrid, GOOD (or a reproduced BAD) has produced, i.e. only stages
    downstream of each swapped unit, once per new input.
    """
    everything = frozenset(u["id"] for u in units)
    wanted = [
        ("BAD", everything),
        ("culprit only", frozenset(culprit)),
        ("BAD - culprit", everything - frozenset(culprit)),
    ]
    if len(culprit) > 1:  # 1-minimality: each unit of the culprit set is needed
        wanted += [(f"culprit - {u}", frozenset(culprit) - {u}) for u in culprit]

    def upstream_of(config: frozenset[str], i: int) -> frozenset[str]:
        return frozenset(u["id"] for u in units if u["id"] in config and unit_stage_index(u) <= i)

    seen = {s: {frozenset()} | ({upstream_of(everything, i)} if bad_cached else set()) for i, s in enumerate(STAGES)}
    plan, done = [], {frozenset()}
    for label, config in wanted:
        if config in done:
            continue
        done.add(config)
        executed = []
        for i, stage in enumerate(STAGES):
            key = upstream_of(config, i)
            if key not in seen[stage]:
                seen[stage].add(key)
                executed.append(stage)
        plan.append((label, config, executed))
    return plan


STARTS = {"cold": "BAD not yet run", "cached": "BAD already reproduced"}
EXECUTORS = {"local": "local", "ray": "Ray, 1 node", "ray2": "Ray, 2 nodes"}


@dataclass
class Bench:
    """One pass: the reproduced GOOD repository, and what the scenarios share (naive replays, per-run details)."""

    base: Path
    work: Path
    uri: str
    good_params: dict[str, Any]
    jobs: list[int]
    naive: bool
    executors: dict[str, list[str]] = field(default_factory=lambda: {"local": []})
    naive_cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="evaluate,preprocess,train,prepare")
    ap.add_argument("--jobs", default="1,2", help="segbisect --jobs values to measure")
    ap.add_argument(
        "--executors", default="local", help="local, ray (one node, 2 CPUs), ray2 (two nodes of 1 CPU), comma-separated"
    )
    ap.add_argument(
        "--start",
        default="cold,cached",
        help="starting points: cold (only GOOD reproduced), cached (BAD reproduced too, untimed)",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbisect-bench"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive replays (the slowest part)")
    ap.add_argument(
        "--predicate", action="append", default=[], metavar="STAGE=EXPR", help="override a scenario's --fail-if"
    )
    ap.add_argument("--passes", type=int, default=1, help="repeat everything N times (own repository and store each)")
    ap.add_argument("--from-json", type=Path, help="only re-render the tables from an earlier time_to_verdict.json")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        finish(saved["meta"].get("passes") or [{"rows": saved["rows"], "meta": saved["meta"]}], args.out)
        return
    overrides = dict(p.split("=", 1) for p in args.predicate)
    executors = args.executors.split(",")
    if set(executors) - {"local"} and os.environ.get(NAMESPACE_MARK) != "1":
        in_private_network()
    if args.work.exists():
        shutil.rmtree(args.work)
    passes = []
    with clusters(executors) as chosen:
        for number in range(1, args.passes + 1):
            passes.append(one_pass(args, overrides, chosen, args.work / f"pass{number}"))
    finish(passes, args.out)


def one_pass(
    args: argparse.Namespace, overrides: dict[str, str], executors: dict[str, list[str]], work: Path
) -> dict[str, Any]:
    """Everything once: GOOD reproduced, every scenario's segbisect runs, naive replays and oracle."""
    work.mkdir(parents=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    meta: dict[str, Any] = {"started": now(), "machine": machine(), "load_start": loadavg(), "loads": {}}
    print(f"[{now()}] load {loadavg()}: reproducing GOOD in {work}", flush=True)
    base, meta["good_repro"] = prepare_base(work, uri)
    bench = Bench(
        base,
        work,
        uri,
        yaml.safe_load((base / "params.yaml").read_text()),
        [int(j) for j in args.jobs.split(",")],
        not args.no_naive,
        executors,
    )
    rows = measure(bench, args, overrides, meta)
    meta["naive_runs"] = list(bench.naive_cache.values())
    meta["details"] = bench.details
    meta["finished"], meta["load_end"] = now(), loadavg()
    return {"rows": rows, "meta": meta}


NAMESPACE_MARK = "SEGBISECT_BENCH_PRIVATE_NETWORK"


def in_private_network() -> None:
    """Ray binds the machine's interface address: run this script again where only loopback exists."""
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
    os.execvpe("unshare", command, {**os.environ, NAMESPACE_MARK: "1"})


@contextlib.contextmanager
def clusters(executors: list[str]) -> Iterator[dict[str, list[str]]]:
    """segbisect's arguments per executor, with the Ray clusters they name running meanwhile."""
    started: list[Any] = []
    chosen: dict[str, list[str]] = {}
    try:
        for name in executors:
            if name == "local":
                chosen[name] = []
                continue
            from ray.cluster_utils import Cluster  # only when asked for: Ray is an optional extra

            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2 if name == "ray" else 0})
            started.append(cluster)
            if name == "ray2":
                for _ in range(2):
                    cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            chosen[name] = ["--executor", "ray", "--ray-address", cluster.address, "--no-mlflow"]
        yield chosen
    finally:
        for cluster in started:
            cluster.shutdown()


def measure(
    bench: Bench, args: argparse.Namespace, overrides: dict[str, str], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for scenario in args.scenarios.split(","):
        overlay, predicate, expected = SCENARIOS[scenario]
        bad_file = bad_params(bench.base, overlay, args.work / f"bad-{scenario}.yaml")
        for start in args.start.split(","):
            runs, report = segbisect_rows(bench, scenario, start, bad_file, overrides.get(scenario, predicate))
            rows += runs
            if report.get("units"):
                rows += baseline_rows(bench, scenario, start, report, expected)
        meta["loads"][scenario] = loadavg()
    return rows


def segbisect_rows(
    bench: Bench, scenario: str, start: str, bad_file: Path, predicate: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(a): one segbisect run per --jobs value; returns their rows and the report of the smallest --jobs."""
    rows, reports = [], {}
    for (executor, extra), jobs in itertools.product(bench.executors.items(), bench.jobs):
        load_before = loadavg()
        method = f"segbisect --jobs {jobs}" + (f" ({EXECUTORS[executor]})" if extra else "")
        print(f"[{now()}] load {load_before}: {method}, {scenario} ({STARTS[start]})", flush=True)
        key = f"{scenario}-{start}-{executor}-j{jobs}"
        if extra:  # every Ray run starts with empty node caches, as on a new cluster: only the remote carries stages
            shutil.rmtree(node_caches(), ignore_errors=True)
        report = run_segbisect(
            bench.base, bench.work / key, bad_file, predicate, jobs, bench.uri, start == "cached", extra
        )
        if executor == "local":
            reports[jobs] = report
        culprit = report.get("culprit") or {}
        rows.append(
            {
                "culprit_stage": scenario,
                "start": STARTS[start],
                "method": method,
                "verdict": report["verdict"],
                "found": ",".join(u["name"] for u in culprit.get("units", [])) or "-",
                "hybrids": sum(1 for h in report["hybrids"] if not h.get("reused")),
                "stage_executions": report.get("stage_executions", 0),
                "wall_s": report["_seconds"],
                "load": f"{load_before} -> {loadavg()}",
            }
        )
        bench.details[key] = {
            k: report.get(k)
            for k in ("verdict", "message", "hybrids", "units", "stage_executions", "_exit", "_seconds")
        }
    return rows, reports[min(reports)] if reports else report


def baseline_rows(
    bench: Bench, scenario: str, start: str, report: dict[str, Any], expected: str
) -> list[dict[str, Any]]:
    """(b) and (c): the naive replays of the hybrids `report` ran, and the oracle costed with their stage times."""
    units = report["units"]
    found = [u["id"] for u in (report.get("culprit") or {}).get("units", [])] or [
        u["id"] for u in units if u["name"] == expected
    ]
    plan = oracle(units, found, bad_cached=start == "cached")
    ran = [(frozenset(h["from_bad"]), h["label"]) for h in report["hybrids"]]
    configs: dict[frozenset[str], str] = {}
    for config, label in ran + [(config, label) for label, config, _ in plan]:
        configs.setdefault(config, label)
    reproduced = {frozenset()} | ({frozenset(u["id"] for u in units)} if start == "cached" else set())
    rows = []
    stage_times: dict[tuple[frozenset[str], str], float] = {}
    if bench.naive:
        charged = []  # the replays of the hybrids segbisect ran
        for config, label in configs.items():
            run = naive_run(bench, scenario, units, config, label)
            for stage, sec in run["stage_seconds"].items():
                stage_times.setdefault((config, stage), sec)
            if any(config == c for c, _ in ran):
                charged.append(
                    {
                        "seconds": run["seconds_total"],
                        "executions": len(run["stage_seconds"]),
                        "new": config not in reproduced,
                    }
                )
        common = {"culprit_stage": scenario, "start": STARTS[start], "verdict": "-", "found": "-", "load": "see json"}
        for method, picked in (
            ("naive: same hybrids, repro --force", charged),
            ("naive, strict: without configurations already reproduced", [c for c in charged if c["new"]]),
        ):
            rows.append(
                {
                    **common,
                    "method": method,
                    "hybrids": len(picked),
                    "stage_executions": sum(c["executions"] for c in picked),
                    "wall_s": round(sum(c["seconds"] for c in picked), 1),
                }
            )
    # oracle seconds: each executed stage at its own measured from-scratch duration in that configuration
    oracle_s = sum(
        stage_times.get((config, s), statistics.median([v for (c, st), v in stage_times.items() if st == s] or [0.0]))
        for _, config, ex in plan
        for s in ex
    )
    rows.append(
        {
            "culprit_stage": scenario,
            "start": STARTS[start],
            "method": "oracle (perfect reuse, no overhead)",
            "verdict": "-",
            "found": ",".join(u["name"] for u in units if u["id"] in found),
            "hybrids": len(plan),
            "stage_executions": sum(len(ex) for _, _, ex in plan),
            "wall_s": round(oracle_s, 1),
            "load": "-",
        }
    )
    bench.details[f"{scenario}-{start}-oracle"] = [
        {"label": label, "from_bad": sorted(c), "executed": ex} for label, c, ex in plan
    ]
    return rows


def naive_run(
    bench: Bench, scenario: str, units: list[dict[str, Any]], config: frozenset[str], label: str
) -> dict[str, Any]:
    """A configuration replayed from scratch, measured once per pass whichever scenario asks first."""
    params = hybrid_params(bench.good_params, units, sorted(config))
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    if key not in bench.naive_cache:
        print(f"[{now()}] load {loadavg()}: naive {scenario} {label}", flush=True)
        bench.naive_cache[key] = naive_replay(bench.base, bench.work, params, bench.uri) | {
            "load": loadavg(),
            "label": label,
        }
    return bench.naive_cache[key]


def finish(passes: list[dict[str, Any]], out: Path) -> None:
    ratios, profile = [], []
    for number, one in enumerate(passes, start=1):
        ratios += [{"pass": number, **r} for r in ratio_rows(one["rows"])]
        profile += [{"pass": number, **r} for r in profile_rows(one["meta"])]
    summary = median_rows(ratios)
    rows = [{"pass": number, **r} for number, one in enumerate(passes, start=1) for r in one["rows"]]
    meta = {"passes": passes}
    text = (
        markdown(passes)
        + "## Median over passes\n\n"
        + md_table(summary)
        + "\n## Ratios, pass by pass\n\n"
        + md_table(ratios)
        + "\n## All measurements\n\n"
        + md_table(rows)
        + "\n## Where segbisect's time goes\n\n"
        + PROFILE_NOTE
        + "\n"
        + md_table(profile)
        + "\n### Against the run's own stage times, median over passes\n\n"
        + md_table(own_stage_medians(profile))
    )
    write_results("time_to_verdict_profile", profile, meta, text, out)
    write_results("time_to_verdict", rows, meta, text, out)
    write_results("time_to_verdict_ratios", ratios, meta, text, out)
    print(text)


def median_rows(ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario, start and method: each pass's wall time and x oracle, and their medians (single passes
    differ by about 0.2x, so no single pass decides).
    """
    out = []
    for key in dict.fromkeys((r["culprit_stage"], r["start"], r["method"]) for r in ratios):
        mine = [r for r in ratios if (r["culprit_stage"], r["start"], r["method"]) == key]
        x = [r["x_oracle"] for r in mine if isinstance(r["x_oracle"], float)]
        out.append(
            {
                "culprit_stage": key[0],
                "start": key[1],
                "method": key[2],
                "verdicts": ",".join(sorted({r["verdict"] for r in mine})),
                "segbisect_s per pass": " / ".join(str(r["segbisect_s"]) for r in mine),
                "oracle_s per pass": " / ".join(str(r["oracle_s"]) for r in mine),
                "x_oracle per pass": " / ".join(str(r["x_oracle"]) for r in mine),
                "median x_oracle": round(statistics.median(x), 2) if x else "-",
            }
        )
    return out


def own_stage_medians(profile: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sequential run kind: x_own_stages pass by pass and its median."""
    out = []
    for run in dict.fromkeys(r["run"] for r in profile if isinstance(r["x_own_stages"], float)):
        mine = [r for r in profile if r["run"] == run and isinstance(r["x_own_stages"], float)]
        out.append(
            {
                "run": run,
                "outside_stages_s per pass": " / ".join(str(r["outside_stages_s"]) for r in mine),
                "x_own_stages per pass": " / ".join(str(r["x_own_stages"]) for r in mine),
                "median x_own_stages": round(statistics.median(r["x_own_stages"] for r in mine), 2),
            }
        )
    return out


PROFILE_NOTE = (
    "From segbisect's own per-hybrid times (--json) and the stages' from-scratch durations (median over the naive "
    "replays): `session_s` = wall time outside any hybrid (reference resolution, GOOD/BAD snapshots, diff, MLflow "
    "parent run, clean-up); `per_hybrid_overhead_s` = mean over hybrids of (hybrid seconds - its executed stages' "
    "durations): worktree creation, `dvc checkout`, DVC start-up, restoring cached stages, reading metrics; "
    "`all_restored_hybrid_s` = the GOOD hybrid, which executes nothing. `stage_s_in_run` = the seconds segbisect's "
    "hybrids spent in the stages they executed, as its DVC driver timed them (from DVC announcing a stage to its next "
    "news of a stage, or the command's end); `outside_stages_s` = the rest of the wall time (session, restores, DVC "
    "start-up, MLflow, clean-up); `x_own_stages` = wall / `stage_s_in_run`: the oracle ratio with the oracle costed "
    "at the stage durations of the same run, so free of the drift between a stage's duration in segbisect's run and "
    "in the naive replay minutes apart (but blind to any slowdown of segbisect's stages by its own concurrent "
    "bookkeeping, which `x_oracle` does count).\n"
)


def profile_rows(meta: dict[str, Any]) -> list[dict[str, Any]]:
    stage_med: dict[str, float] = {}
    for stage in STAGES:
        values = [r["stage_seconds"][stage] for r in meta.get("naive_runs", []) if stage in r["stage_seconds"]]
        if values:
            stage_med[stage] = statistics.median(values)
    out = []
    for key, d in meta.get("details", {}).items():
        if key.endswith("-oracle") or not d.get("hybrids"):
            continue
        hybrids = [h for h in d["hybrids"] if not h.get("reused")]
        in_hybrids = sum(h["seconds"] for h in hybrids)
        stage_time = sum(stage_med.get(s, 0.0) for h in hybrids for s in h["executed"])
        good = next((h["seconds"] for h in hybrids if h["label"] == "GOOD"), "-")
        jobs = int(key.rsplit("-j", 1)[1])
        in_run = sum(sum(h.get("stage_seconds", {}).values()) for h in hybrids)
        phases = [h.get("placement", {}).get("seconds", {}) for h in hybrids]
        out.append(
            {
                "run": key,
                "wall_s": d["_seconds"],
                "sum_hybrid_s": round(in_hybrids, 1),
                "session_s": round(d["_seconds"] - in_hybrids, 1) if jobs == 1 else "- (overlapping)",
                "est_stage_exec_s": round(stage_time, 1),
                "per_hybrid_overhead_s": round((in_hybrids - stage_time) / max(len(hybrids), 1), 1),
                "stage_s_in_run": round(in_run, 1),
                "outside_stages_s": round(d["_seconds"] - in_run, 1) if jobs == 1 else "- (overlapping)",
                "x_own_stages": round(d["_seconds"] / in_run, 2) if jobs == 1 and in_run else "-",
                "all_restored_hybrid_s": good,
                "hybrids": len(hybrids),
                "median_fetch/run/push_s": "/".join(
                    f"{statistics.median(p.get(phase, 0.0) for p in phases):.2f}" for phase in ("fetch", "run", "push")
                )
                if any(phases)
                else "-",
            }
        )
    return out


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for scenario, start in dict.fromkeys((r["culprit_stage"], r.get("start", "")) for r in rows):
        mine = [r for r in rows if (r["culprit_stage"], r.get("start", "")) == (scenario, start)]
        naive = next((r for r in mine if r["method"].startswith("naive:")), None)
        strict = next((r for r in mine if r["method"].startswith("naive, strict")), None)
        orc = next((r for r in mine if r["method"].startswith("oracle")), None)
        for r in mine:
            if not r["method"].startswith("segbisect"):
                continue
            out.append(
                {
                    "culprit_stage": scenario,
                    "start": start,
                    "method": r["method"],
                    "verdict": r["verdict"],
                    "found": r["found"],
                    "segbisect_s": r["wall_s"],
                    "naive_s": naive["wall_s"] if naive else "-",
                    "speedup_vs_naive": _ratio(naive, r),
                    "speedup_vs_strict_naive": _ratio(strict, r),
                    "oracle_s": orc["wall_s"] if orc else "-",
                    "x_oracle": round(r["wall_s"] / orc["wall_s"], 2) if orc and orc["wall_s"] else "-",
                    "stage_exec (seg/oracle/naive)": f"{r['stage_executions']}/"
                    f"{orc['stage_executions'] if orc else '-'}/"
                    f"{naive['stage_executions'] if naive else '-'}",
                }
            )
    return out


def _ratio(baseline: dict[str, Any] | None, row: dict[str, Any]) -> float | str:
    return round(baseline["wall_s"] / row["wall_s"], 2) if baseline and baseline["wall_s"] and row["wall_s"] else "-"


def markdown(passes: list[dict[str, Any]]) -> str:
    lines = ["# Time to verdict\n"]
    for number, one in enumerate(passes, start=1):
        meta = one["meta"]
        m = meta["machine"]
        lines.append(
            f"Pass {number}: {meta['started']} .. {meta['finished']}; {m['cores']} cores, {m['cpu_model']}; load "
            f"(1/5/15 min) {meta['load_start']} at start, {meta['load_end']} at end. GOOD reproduced in "
            f"{meta['good_repro']['seconds']} s (stages: {meta['good_repro']['stage_seconds']}).\n"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

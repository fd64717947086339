"""One bisection from references to report: the glue between refs, snapshots, search, runs and records."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from segbisect import report as reports
from segbisect.errors import EXIT_CULPRIT, EXIT_NO_CULPRIT, EXIT_PRECONDITION, PreconditionError, UsageError
from segbisect.evaluator import Context, Evaluator, Hybrid, Judge
from segbisect.gitutil import toplevel
from segbisect.journal import Journal, known_hybrids
from segbisect.predicate import Predicate
from segbisect.refs import Reference, resolve
from segbisect.runner import Processes, read_metrics
from segbisect.search import Verdict, search
from segbisect.settings import load as load_settings
from segbisect.snapshot import Snapshot, load
from segbisect.tracking import DEFAULT_EXPERIMENT, Tracker, tracking_uri
from segbisect.units import Inventory, diff, group
from segbisect.workspace import Workspaces, remove_stale, user_cache_dir

RESULTS = "segbisect-results"


@dataclass
class Options:
    """The CLI's options, as the session needs them, completed by the project's `[tool.segbisect]` settings."""

    good: str
    bad: str
    repo: Path = Path(".")
    fail_if: str | None = None
    run: str | None = None
    metrics: str | None = None
    jobs: int = 1
    repeat: int = 1
    keep_workspaces: bool = False
    mlflow: bool = True
    fresh: bool = False
    results: Path | None = None
    experiment: str = DEFAULT_EXPERIMENT
    diagnostics: str | None = None


def bisect(opts: Options, console: Console) -> tuple[int, dict[str, Any]]:
    """Run a whole bisection; returns the exit code and the report (raises UsageError before any run)."""
    repo = _repo(opts.repo)
    opts = _with_settings(opts, repo)
    uri = tracking_uri(repo)
    lookup_uri = uri if os.environ.get("MLFLOW_TRACKING_URI") or (repo / "mlflow.db").exists() else None
    for path in remove_stale(repo):
        console.print(f"removed a workspace left by a killed session: {path}")
    good_ref, bad_ref = resolve(repo, opts.good, lookup_uri), resolve(repo, opts.bad, lookup_uri)
    for warning in good_ref.warnings + bad_ref.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    with Workspaces(repo, user_cache_dir(repo), keep=opts.keep_workspaces) as workspaces:
        good, bad = load(good_ref, repo, workspaces.root / "good"), load(bad_ref, repo, workspaces.root / "bad")
        inventory = diff(good, bad)
        if not inventory.units:
            raise UsageError(f"no differences: {good_ref.describe()} and {bad_ref.describe()} configure the pipeline identically")
        return _search(opts, repo, uri, good, bad, inventory, console, workspaces)


def _search(opts: Options, repo: Path, uri: str, good: Snapshot, bad: Snapshot, inventory: Inventory,
            console: Console, workspaces: Workspaces) -> tuple[int, dict[str, Any]]:
    groups = group(inventory.units)
    metrics_file = opts.metrics or _default_metrics(good)
    judge = Judge(None if opts.run else Predicate(opts.fail_if or ""), opts.run)
    early, _ = read_metrics(repo / metrics_file)
    if judge.predicate and early:
        judge.predicate.resolve_keys(list(early))
    session = _session_id(good.ref, bad.ref, inventory)
    folder = (opts.results or repo / RESULTS) / session
    journal = Journal(folder, fresh=opts.fresh)
    known = {} if opts.fresh else known_hybrids(folder.parent)
    tracker = Tracker(uri if opts.mlflow else None, opts.experiment, lambda text: console.print(f"[yellow]warning:[/] {text}"))
    previous = next(iter(journal.records("session")), {})

    def record_session(parent: str | None) -> None:
        if not previous:
            journal.append({"type": "session", "session": session, "good": good.ref.text, "bad": bad.ref.text,
                            "mlflow_parent": parent})

    tracker.start(session, {"good": good.ref.text, "bad": bad.ref.text, "good_commit": good.ref.commit,
                            "bad_commit": bad.ref.commit},
                  {"good": good.ref.describe(), "bad": bad.ref.describe(), "judge": opts.run or judge.predicate.text,
                   "jobs": opts.jobs, "repeat": opts.repeat, "units": len(inventory.units), "groups": len(groups)},
                  previous.get("mlflow_parent"), record_session)
    console.print(f"GOOD {good.ref.describe()}\nBAD  {bad.ref.describe()}\n{len(inventory.units)} differing unit(s) "
                  f"in {len(groups)} group(s): {', '.join(g.name for g in groups)}; results in {folder}")
    env = _hybrid_env(uri if opts.mlflow else None, opts.experiment, session)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    already = {r["fingerprint"] for r in journal.records("hybrid")}
    procs = Processes()
    ctx = Context(good, bad, inventory, groups, workspaces, procs, journal, known, judge, env, metrics_file,
                  opts.diagnostics, logs, opts.jobs, opts.repeat)
    evaluator = Evaluator(ctx, lambda h: _started(console, h), lambda h: _done(console, tracker, already, h))
    try:
        _preconditions(evaluator, judge, inventory, opts.jobs)
        verdict = search(groups, evaluator, opts.jobs)
    except PreconditionError as exc:
        result = _report(good, bad, inventory, evaluator.hybrids, None, str(exc), folder, "precondition-failed", judge.keys())
        tracker.finish(result, "FAILED")
        reports.write(folder, result)
        return EXIT_PRECONDITION, result
    except BaseException as exc:
        stopped = _report(good, bad, inventory, evaluator.hybrids, None, str(exc) or "interrupted", folder, "stopped", judge.keys())
        tracker.finish(stopped, "KILLED")
        raise
    if opts.keep_workspaces:
        console.print(f"hybrid worktrees kept in {workspaces.root} (remove with `git worktree remove`)")
    result = _report(good, bad, inventory, evaluator.hybrids, verdict, _message(verdict), folder, verdict.kind, judge.keys())
    tracker.finish(result)
    reports.write(folder, result)
    return (EXIT_CULPRIT if verdict.kind in ("culprit", "interaction") else EXIT_NO_CULPRIT), result


def _preconditions(evaluator: Evaluator, judge: Judge, inventory: Inventory, jobs: int) -> None:
    """As git bisect: GOOD must pass and BAD must fail (the predicate's keys are checked on GOOD's metrics)."""
    good, everything = frozenset(), frozenset(u.id for u in inventory.units)
    checked = judge.predicate is None or judge.predicate.resolved
    if jobs >= 2 and checked:
        evaluator([(good, "GOOD"), (everything, "BAD")])
    else:
        evaluator([(good, "GOOD")])
    good_run = evaluator.get(good)
    if not checked and good_run.metrics:
        judge.predicate.resolve_keys(list(good_run.metrics))
        good_run.outcome, good_run.note = judge.all(good_run.attempts)
    if good_run.outcome != "good":
        raise PreconditionError(f"GOOD does not pass ({good_run.outcome}: {good_run.note}); nothing to bisect")
    evaluator([(everything, "BAD")])
    bad_run = evaluator.get(everything)
    if bad_run.outcome != "bad":
        raise PreconditionError(f"BAD does not fail ({bad_run.outcome}: {bad_run.note}); nothing to bisect")


def _report(good: Snapshot, bad: Snapshot, inventory: Inventory, hybrids: list[Hybrid], verdict: Verdict | None,
            message: str, folder: Path, kind: str, keys: list[str]) -> dict[str, Any]:
    by_id = {u.id: u for u in inventory.units}
    culprit = None
    if verdict and verdict.units:
        units = [{**by_id[i].as_dict(), "diff": by_id[i].detail} for i in verdict.units]
        failing = next((h for h in hybrids if set(h.from_bad) == set(verdict.units) and h.outcome == "bad"), None)
        failing = failing or next((h for h in hybrids if h.label == "BAD"), None)
        diagnostics = failing.attempts[-1].get("diagnostics") if failing and failing.attempts else None
        culprit = {"stage": verdict.stage, "stages": verdict.stages, "units": units, "sufficient": verdict.sufficient,
                   "necessary": verdict.necessary, "minimal": verdict.minimal,
                   "also_sufficient": verdict.also_sufficient, "diagnostics": diagnostics}
    return {
        "verdict": kind, "message": message, "culprit": culprit,
        "candidates": verdict.candidates if verdict else [],
        "good": _ref_dict(good.ref), "bad": _ref_dict(bad.ref),
        "units": [u.as_dict() for u in inventory.units],
        "hybrids": [reports.hybrid_row(h) for h in hybrids],
        "stage_executions": sum(len(h.executed) for h in hybrids if not h.reused),
        "stage_executions_total": sum(len(h.executed) for h in hybrids),
        "results_dir": str(folder),
        "key_metrics": keys,
    }


def _message(v: Verdict) -> str:
    if v.kind == "ambiguous":
        return f"untestable hybrids leave the culprit among: {', '.join(v.candidates)}"
    role = {(True, True): "sufficient and necessary", (True, False): "sufficient but not necessary (BAD still fails without it)",
            (True, None): "sufficient (necessity untestable)"}.get((v.sufficient, v.necessary), "")
    if v.kind == "culprit":
        extra = f"; also sufficient on their own: {', '.join(v.also_sufficient)}" if v.also_sufficient else ""
        return f"stage '{v.stage}' is {role}; minimal change: {len(v.units)} unit(s){extra}"
    needed = {True: "necessary", False: "not necessary", None: "necessity untestable"}[v.necessary]
    return (f"no single stage suffices: the failure needs {len(v.units)} unit(s) together across "
            f"{', '.join(v.stages)} ({needed})")


def _started(console: Console, h: Hybrid) -> None:
    console.print(f"[cyan]{h.id}[/] {h.label} ... running")


def _done(console: Console, tracker: Tracker, already: set[str], h: Hybrid) -> None:
    colour = {"good": "green", "bad": "red"}.get(h.outcome, "yellow")
    how = "reused earlier result" if h.reused else (
        f"ran {', '.join(h.executed) or 'nothing'}; restored {len(h.restored)}")
    console.print(f"[cyan]{h.id}[/] {h.label}: [{colour}]{h.outcome}[/] ({h.note}; {how}; {h.seconds}s)")
    if h.fingerprint not in already:
        tracker.hybrid(reports.hybrid_row(h))


def _hybrid_env(uri: str | None, experiment: str, session: str) -> dict[str, str]:
    """The stages' environment: this interpreter's tools first on PATH, one tracking store, session tags."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["SEGBISECT_SESSION"] = session
    env.pop("MLFLOW_RUN_ID", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    else:
        env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _with_settings(opts: Options, repo: Path) -> Options:
    """The project's check and evidence file where the command line names none; no check at all is a usage error."""
    settings = load_settings(repo)
    fail_if = opts.fail_if if opts.fail_if is not None else settings.fail_if
    if opts.run is None and fail_if is None:
        raise UsageError(f"no failure check: pass --fail-if EXPR or --run CMD, or set fail-if in [tool.segbisect] of "
                         f"{repo / 'pyproject.toml'}")
    return replace(opts, fail_if=fail_if, diagnostics=settings.diagnostics)


def _default_metrics(snap: Snapshot) -> str:
    """The metrics file of the last stage (in pipeline order) that declares one."""
    for stage in reversed(snap.stages):
        if stage.metrics:
            return stage.metrics[0]
    raise UsageError("no stage in dvc.yaml declares a metrics file; pass --metrics PATH or --run CMD")


def _session_id(good: Reference, bad: Reference, inventory: Inventory) -> str:
    everything = frozenset(u.id for u in inventory.units)
    key = hashlib.sha256((inventory.fingerprint(frozenset()) + inventory.fingerprint(everything)).encode()).hexdigest()
    return f"{_slug(good.text)}..{_slug(bad.text)}-{key[:8]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).name if "/" in text else text)[:40]


def _ref_dict(ref: Reference) -> dict[str, Any]:
    return {"text": ref.text, "kind": ref.kind, "commit": ref.commit, "detail": ref.detail}


def _repo(path: Path) -> Path:
    try:
        repo = toplevel(path.resolve())
    except Exception:
        raise UsageError(f"--repo {path}: not inside a git repository") from None
    if not (repo / ".dvc").is_dir():
        raise UsageError(f"{repo}: not a DVC repository (no .dvc folder)")
    return repo

"""`segbisect GOOD BAD`: the command line."""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import signal
import sys
import traceback
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand

from segbisect.core.attempt import AttemptPolicy
from segbisect.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, SegbisectError, UsageError
from segbisect.core.tipping import DEFAULT_BUDGET, DEFAULT_TOLERANCE, Tipping
from segbisect.executors.base import ClusterOptions
from segbisect.executors.registry import ExecutorKind
from segbisect.project.validate import check_writable
from segbisect.reporting import render
from segbisect.session import RESULTS, bisect
from segbisect.session.options import Options
from segbisect.tracking.store import DEFAULT_EXPERIMENT

# An unexpected exception (a bug) ends the command as Python's own exit status for one does.
EXIT_UNEXPECTED = 1
JSON_FLAG = "--json"

EPILOG = """\b
Exit codes:
  0    culprit found (a stage, or a minimal interaction of units); with
       --find-fix, the fix found
  1    no culprit: untestable hybrids leave the answer ambiguous; or cannot
       decide: the environment failed a hybrid (after --retries), or its
       --repeat runs disagreed (verdict flaky); or an unexpected error, a
       bug in segbisect (its traceback on stderr; with --json, verdict error)
  2    usage error: unknown/ambiguous reference, bad --fail-if (a metric
       key the metrics file lacks gets the closest one), --fail-if together
       with --run, no differences
  3    precondition failed: GOOD does not pass or BAD does not fail; when
       GOOD fails and BAD passes, the message says they look swapped and
       gives both commands: GOOD and BAD the other way round, or --find-fix
  4    aborted by a --run check (exit code outside 0..127)
  130  interrupted (Ctrl-C/SIGTERM); finished hybrids are kept for resuming

\b
References: a git revision (branch, tag, commit), a DVC experiment name, a
params YAML file overlaid on HEAD's params.yaml, an MLflow run id (its
git_commit tag plus its logged params), or workspace: the working tree as it
is on disk (HEAD plus uncommitted changes and the untracked files the
pipeline reads). Force a kind with git:, exp:, file:, mlflow: or workspace:.
A git revision or params file at HEAD leaves uncommitted changes out (warned).

\b
Under each unit of the minimal change the verdict names the commits on the
first-parent path from GOOD to BAD that brought BAD's value (read from git
alone), or where a value laid over a commit came from.

\b
Project settings: the repository's pyproject.toml may hold
  [tool.segbisect]
  fail-if = "EXPR"          # the default --fail-if
  diagnostics = "PATH"      # a JSON file the pipeline writes, shown as
                            # evidence for the failing hybrid
  tracking-uri = "URI"      # the MLflow store, e.g. sqlite:///mlflow.db
                            # (a relative file: from the repository)
Without fail-if there, --fail-if or --run is required (one of them, not
both).

\b
Tracking: the bisection is recorded in MLflow only in a store you name,
MLFLOW_TRACKING_URI or else tracking-uri; with neither, it runs untracked
and writes nothing into the repository but its results folder. It needs
the mlflow extra (pip install 'segbisect[mlflow]'); without MLflow a named
store is warned about and the bisection runs untracked. MLflow's own log
lines go to <results>/<session>/logs/mlflow.log.

\b
Output: on a terminal, lines fit its width; written to a pipe or a file (a
CI log), they are never wrapped, so every table row stays one line.

\b
Outcomes: a hybrid passes (good), fails (bad), is untestable (skip: a
stage failed through its own code, e.g. exit 2 with an `error:` line or an
exception in the project's code; missing metrics; a check's 125) or meets
an environment error: a stage killed by a signal or exiting 75 (EX_TEMPFAIL,
the documented status for a fault of its environment), a full or read-only
disk, a lost DVC lock, a hybrid past --timeout. Errors are retried and never
journaled, so a later run after a fix runs them again; they never count as
evidence.


Environment of the stages: every `dvc repro` of a hybrid gets
SEGBISECT_SESSION (the session id, the results folder's name) and
SEGBISECT_HYBRID (h01, h02, ...), so stages may tag what they log;
SEGBISECT_STATE_DIR, a folder that outlives the hybrid's worktree, for what
a re-run of the session may resume (<results>/<session>/state, removed when
the session has its answer and by --fresh; with --executor ray, one per
session in each worker's temporary folder, on that node only);
MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME name the bisection's store.
Untracked (--no-mlflow, no store named, no MLflow, or a store that fails a
probe at start, a few seconds), MLFLOW_TRACKING_URI is removed and
SEGBISECT_TRACKING=off tells stages to run untracked.
MLFLOW_HTTP_REQUEST_TIMEOUT=10 and MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 bound
MLflow's waits unless already set.

\b
Resuming: every finished hybrid is appended to <results>/<session>/journal.jsonl
and remembered by its configuration fingerprint; re-running the same GOOD and
BAD (the default --resume) reuses them, so an interrupted bisection continues
where it stopped and ends with the same verdict. --fresh forgets them. A
journaled hybrid is reused only in the numeric environment that computed it:
the same CPU model, kernel-selecting CPU flags and usable CPUs, GPUs, Python,
variables that select numeric kernels (ONEDNN_MAX_CPU_ISA,
TF_ENABLE_ONEDNN_OPTS, thread counts, ...), versions of dvc, numpy,
tensorflow, keras, torch and the like, and every other installed package (the
host name aside); otherwise it runs again, with one warning naming what
differs, unless --reuse-any-environment. Running again, a hybrid is judged
here, but DVC still restores the stages its cache holds (its run-cache is not
keyed by the environment): to recompute them, give the repository a DVC cache
of this environment's own (dvc cache dir). A journal line that is not a
record segbisect writes is skipped with a warning naming its file and line.

\b
With --json, stdout holds one JSON object whatever ends the command: the
report, or {"verdict", "error", "exit_code"} for a usage error (also one the
option parser finds), an abort, an interruption or an unexpected error.
"""


def _show_version(wanted: bool) -> None:
    """`segbisect --version`: the version of the installed `segbisect` distribution, read from its metadata (an
    editable install's files do not name the package, so the distribution is looked up by its own name)."""
    if not wanted:
        return
    try:
        version = metadata.version("segbisect")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    print(f"segbisect {version}")
    raise typer.Exit(0)


def _print_error(verdict: str, error: str, exit_code: int) -> None:
    """The JSON object of a command that ends without a report."""
    print(json.dumps({"verdict": verdict, "error": error, "exit_code": exit_code}))


class _Command(TyperCommand):
    """The parser's own usage errors (a missing argument, an option's bad value) are printed as JSON as well
    when the command line asks for --json: a script reading stdout gets its object whatever went wrong.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        as_json = JSON_FLAG in args  # read first: parsing consumes `args`
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as exc:
            # The parser's errors (click's own, or those of the copy of click that typer carries) have a message
            # and an exit status: 2 for a usage error.
            message = getattr(exc, "format_message", None)
            if as_json and message is not None:
                code = getattr(exc, "exit_code", EXIT_USAGE)
                _print_error("usage-error" if code == EXIT_USAGE else "error", message(), code)
            raise


app = typer.Typer(add_completion=False, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})


@app.command(epilog=EPILOG, cls=_Command)
def main(
    good: str = typer.Argument(
        ...,
        metavar="GOOD",
        help="Known-good configuration (revision, DVC experiment, params file, MLflow run id or workspace).",
    ),
    bad: str = typer.Argument(..., metavar="BAD", help="Failing configuration, same kinds as GOOD."),
    fail_if: str | None = typer.Option(
        None,
        "--fail-if",
        metavar="EXPR",
        help="Failure predicate over the metrics file, e.g. 'foreground_fraction == 0 or mean_iou < 0.2'. "
        "Comparisons of metric keys (dotted for nested) with numbers, and/or/not, parentheses. "
        "Default: the project's fail-if in [tool.segbisect] of pyproject.toml (the WiSe segmentation pipeline sets "
        "'foreground_fraction <= all_zero_threshold', a metric compared with a tolerance its evaluate stage "
        "writes beside it). An empty expression is an error.",
    ),
    run: str | None = typer.Option(
        None,
        "--run",
        metavar="CMD",
        help="Custom check run in the hybrid's workspace after `dvc repro`, as in `git bisect run`: "
        "exit 0 good, 125 untestable, 1-127 bad, anything else aborts. Replaces the project's fail-if; "
        "given with --fail-if, a usage error.",
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        metavar="PATH",
        help="Metrics file to judge. Default: the metrics file `dvc metrics show` reads (stage or "
        "top-level metrics in dvc.yaml); with several, the one holding every key --fail-if names (a --run check "
        "shows the last one's metrics as evidence).",
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Hybrids run in parallel (one worktree each)."),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        metavar="SECONDS",
        min=1,
        help="Time limit of one attempt of a hybrid (all its stages and the check); past it the attempt's processes "
        "are ended and it is an environment error. Default: none.",
    ),
    retries: int = typer.Option(
        1,
        "--retries",
        min=0,
        help="Attempts again a hybrid the environment failed (killed stage, exit 75, full disk, --timeout); still "
        "failing, the bisection stops undecided (exit 1), its other finished hybrids kept for resuming.",
    ),
    repeat: int = typer.Option(
        1,
        "--repeat",
        min=1,
        help="Evaluate each hybrid N times, re-running (forced) the stages that executed and the check every time, "
        "restored stages or not; outcomes that disagree end the bisection with verdict flaky (exit 1), naming "
        "the configuration, instead of trusting a noisy check.",
    ),
    repo: Path = typer.Option(Path("."), "--repo", help="The DVC project (a git repository)."),
    results: Path | None = typer.Option(
        None, "--results", help=f"Results folder (default: <repo>/{RESULTS}); holds journals, logs and reports."
    ),
    keep_workspaces: bool = typer.Option(
        False,
        "--keep-workspaces",
        help="Give every hybrid a worktree of its own and keep them for inspection "
        "(by default worktrees are reused and removed).",
    ),
    mlflow: bool | None = typer.Option(
        None,
        "--mlflow/--no-mlflow",
        help="Record a parent run with one child run per hybrid in the store named by MLFLOW_TRACKING_URI, else by "
        "tracking-uri in [tool.segbisect]. Default: when one is named. --mlflow without a store or without MLflow "
        "installed is a usage error.",
    ),
    experiment: str = typer.Option(
        DEFAULT_EXPERIMENT, "--experiment", help="MLflow experiment of the bisection and its hybrids' stage runs."
    ),
    resume: bool = typer.Option(
        True, "--resume/--fresh", help="Reuse finished hybrids from earlier (interrupted) runs, or start over."
    ),
    reuse_any_environment: bool = typer.Option(
        False,
        "--reuse-any-environment",
        help="Also reuse journaled hybrids computed in another numeric environment (another CPU or kernel "
        "variables, other library versions or installed packages), with one warning listing what differs. By "
        "default they run again.",
    ),
    find_fix: bool = typer.Option(
        False,
        "--find-fix",
        help="Ask the reversed question, which change fixed it: GOOD is then a configuration that fails the check "
        "and BAD one that passes. Verdict, report and MLflow call them BROKEN and FIXED, name the fix (verdict "
        "fix), and show the broken side's diagnostics.",
    ),
    summary_md: Path | None = typer.Option(
        None,
        "--summary-md",
        metavar="PATH",
        help="Also write a short Markdown summary (verdict, minimal change, cost, where the full report is) to "
        "PATH, fit to paste into a pull request. The full reports are report.md and report.html in the results "
        "folder.",
    ),
    tipping_point: bool = typer.Option(
        False,
        "--tipping-point",
        help="When the minimal change is one numeric param, also search where it tips: its value between GOOD's "
        "and BAD's, every other unit at GOOD's (log scale when the two have the same sign and differ by more than a "
        "factor of 10, integers for an int param), --jobs values at once (at least two in the first wave, so a "
        "param that passes again beyond a failing value shows). Each probe is a hybrid like any other. The verdict "
        "adds 'passes up to X, fails from Y', or says the param is not monotone; the reports show every probe.",
    ),
    tipping_tolerance: float | None = typer.Option(
        None,
        "--tipping-tolerance",
        metavar="FACTOR",
        help=f"With --tipping-point: stop when the passing and failing values are within this factor (for values "
        f"on either side of zero: their difference relative to the larger), or adjacent integers. Above 1; default "
        f"{DEFAULT_TOLERANCE}.",
    ),
    tipping_budget: int | None = typer.Option(
        None,
        "--tipping-budget",
        metavar="N",
        min=1,
        help=f"With --tipping-point: probe at most N values (hybrids); default {DEFAULT_BUDGET}.",
    ),
    executor: ExecutorKind = typer.Option(
        ExecutorKind.LOCAL,
        "--executor",
        help="Where hybrids run: local (worktrees on this machine, --jobs at a time) or ray (one Ray task per "
        "hybrid on a cluster, stages shared through a DVC remote's run-cache; needs the `ray` extra, a DVC remote "
        "and, where a tracking store is named, an MLflow server or --no-mlflow). --jobs hybrids are in flight either "
        "way. See docs/cluster.md.",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", metavar="ADDR", help="Ray cluster to use (default: RAY_ADDRESS, else a local Ray)."
    ),
    remote: str | None = typer.Option(
        None, "--remote", metavar="NAME", help="DVC remote the Ray workers share (default: the default remote)."
    ),
    hybrid_cpus: float = typer.Option(1.0, "--hybrid-cpus", min=0, help="Ray CPUs one hybrid asks for."),
    hybrid_gpus: float = typer.Option(0.0, "--hybrid-gpus", min=0, help="Ray GPUs one hybrid asks for."),
    as_json: bool = typer.Option(
        False,
        JSON_FLAG,
        help="Print the verdict as one JSON object on stdout, also for errors; human output goes to stderr.",
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print segbisect's version and exit."
    ),
) -> None:
    """Find the stage, then the minimal change, that makes BAD fail where GOOD passes.

    Hybrids (GOOD with some of BAD's units of change: params keys, code/data files, stage definitions) run
    `dvc repro` in temporary git worktrees sharing your DVC cache, so unchanged stages are restored or skipped,
    not re-run.
    Your working tree, index, refs, stash and DVC outputs are never modified.
    """
    console = _console(stderr=as_json)
    signal.signal(signal.SIGTERM, _interrupt)
    opts = Options(good=good, bad=bad, repo=repo, fail_if=fail_if, run=run, metrics=metrics, experiment=experiment)
    policy = AttemptPolicy(repeat=repeat, retries=retries, timeout=timeout)
    opts = replace(opts, jobs=jobs, attempts=policy, results=results)
    opts = replace(opts, keep_workspaces=keep_workspaces, mlflow=mlflow, fresh=not resume, find_fix=find_fix)
    opts = replace(opts, reuse_any_environment=reuse_any_environment)
    cluster = ClusterOptions(address=ray_address, remote=remote, cpus=hybrid_cpus, gpus=hybrid_gpus)
    opts = replace(opts, summary_md=summary_md, executor=executor, cluster=cluster)
    verdict_out = sys.stdout
    try:
        _one_check(fail_if, run)
        opts = replace(opts, tipping=_tipping(tipping_point, tipping_tolerance, tipping_budget))
        check_writable(summary_md)
        # With --json, stdout carries the verdict alone: what libraries print there (MLflow's run links, Ray's
        # task messages) goes to stderr with the rest of the human output.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            code, result = bisect(opts, console)
        render.show(console, result)
    except SegbisectError as exc:
        console.print(Text.assemble(("error:", "red"), f" {exc}"))
        if as_json:
            _print_error("usage-error" if isinstance(exc, UsageError) else "aborted", str(exc), exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: workspaces removed; run the same command again to resume")
        if as_json:
            _print_error("interrupted", "interrupted", EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if not as_json:
            raise
        traceback.print_exc(file=sys.stderr)
        _print_error("error", f"{type(exc).__name__}: {exc}", EXIT_UNEXPECTED)
        raise typer.Exit(EXIT_UNEXPECTED) from None
    if as_json:
        print(json.dumps(result.to_dict(), default=str), file=verdict_out)
    # Spares the interpreter's final collection the objects DVC and MLflow made (most of a second at exit),
    # without changing collection in a process that calls this command and goes on.
    atexit.register(gc.freeze)
    raise typer.Exit(code)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _console(stderr: bool) -> Console:
    """A terminal's width on a terminal; written to a pipe or a file (a CI log) nothing is wrapped, where rich
    would otherwise break lines, table rows and paths at 80 columns.
    """
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.soft_wrap = True
        console.width = sys.maxsize
    return console


def _one_check(fail_if: str | None, run: str | None) -> None:
    """A hybrid is judged by one check: with both, one of them would be ignored without a word."""
    if fail_if is not None and run is not None:
        raise UsageError("--fail-if and --run given together: hybrids are judged by one check, leave the other out")


def _tipping(wanted: bool, tolerance: float | None, budget: int | None) -> Tipping | None:
    """The tipping-point search asked for; its limits without it would be ignored without a word."""
    if not wanted:
        limits = {"--tipping-tolerance": tolerance, "--tipping-budget": budget}
        given = next((name for name, value in limits.items() if value is not None), None)
        if given:
            raise UsageError(f"{given} is a limit of --tipping-point: add --tipping-point, or leave it out")
        return None
    if tolerance is not None and not tolerance > 1:
        raise UsageError(f"--tipping-tolerance {tolerance:g}: must be a factor above 1 (e.g. {DEFAULT_TOLERANCE})")
    return Tipping(
        tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
        budget=DEFAULT_BUDGET if budget is None else budget,
    )

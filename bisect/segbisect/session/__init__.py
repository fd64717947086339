"""One bisection, told as its story: resolve GOOD and BAD, snapshot both pipelines, diff them into units, check
the preconditions (GOOD passes, BAD fails), search, report. Each step is one call here; the rooms below do the work
(`project` for references, snapshots and units, `core` for the search and judging, `executors` for where hybrids
run, `reporting` for what people read, `tracking` for the MLflow store).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from segbisect.core.errors import (
    EXIT_CULPRIT,
    EXIT_NO_CULPRIT,
    EXIT_PRECONDITION,
    PreconditionError,
    UndecidableError,
    UsageError,
)
from segbisect.core.hybrid import Hybrid
from segbisect.core.judge import Judge
from segbisect.core.predicate import Predicate
from segbisect.core.search import search
from segbisect.core.terms import CULPRIT, FIX, Terms
from segbisect.core.tipping import TippingPoint
from segbisect.core.units import Inventory, group
from segbisect.core.verdict import Outcome, Verdict, VerdictKind
from segbisect.executors.base import Executor, ExecutorContext, Preflight, Tracked
from segbisect.executors.registry import EXECUTORS, Registration
from segbisect.project import gateway, metrics
from segbisect.project.changes import diff
from segbisect.project.gateway import Dvc
from segbisect.project.provenance import trace
from segbisect.project.reading import toplevel
from segbisect.project.refs import Reference, resolve
from segbisect.project.runner import STATE_VARIABLE, Task
from segbisect.project.snapshot import Snapshot, load_all, uncommitted_warnings
from segbisect.project.validate import check_command, check_overlay
from segbisect.project.workspace import Workspaces, remove_stale
from segbisect.reporting import render
from segbisect.reporting.progress import Progress, planned
from segbisect.reporting.report import Findings, HybridRow, Report, build
from segbisect.reporting.runs import Tracker
from segbisect.session.evaluator import Evaluator, Listeners, Plan
from segbisect.session.journal import Header, HybridRecord, Journal, Known, MlflowRecord, journal_id, known_hybrids
from segbisect.session.options import Options
from segbisect.session.settings import load as load_settings
from segbisect.session.tipping import tip
from segbisect.tracking.store import (
    BOUNDED_WAITS,
    INSTALL_HINT,
    NAME_A_STORE,
    QUIET,
    mlflow_installed,
    tracking_uri,
    unusable,
)
from segbisect.tracking.switch import TRACKING_SWITCH, StageTracking, untracked

RESULTS = "segbisect-results"
# In a session's logs folder, beside the hybrids' logs: what MLflow itself logs while segbisect tracks.
MLFLOW_LOG = "mlflow.log"
# In a session's results folder: what its stages keep beyond a hybrid's worktree (see runner.STATE_VARIABLE).
STATE = "state"
GOOD_CONFIG: frozenset[str] = frozenset()


def bisect(opts: Options, console: Console) -> tuple[int, Report]:
    """Run a whole bisection; returns the exit code and the report (raises UsageError before any run)."""
    repo = _repo(opts.repo)
    opts = _with_settings(opts, repo)
    if opts.run is not None:
        check_command(opts.run, repo)
    registration = EXECUTORS[opts.executor]
    # Its fork server started first (unless the console script already did), so that it imports DVC on another core
    # meanwhile.
    with gateway.for_session(fork=registration.forks_dvc) as dvc:
        dvc.on_warning(lambda text: _warn(console, text))
        return _bisect(_Setup(opts=opts, repo=repo, console=console, executor=registration, dvc=dvc))


@dataclass(frozen=True, kw_only=True)
class _Setup:
    """What a bisection starts from: the options completed by the project's settings, the repository, the console,
    the executor's registration, and the session's DVC gateway (see `gateway`).
    """

    opts: Options
    repo: Path
    console: Console
    executor: Registration
    dvc: Dvc


@dataclass(frozen=True, kw_only=True)
class _Sides:
    """Both pipelines as read, and the units where they differ."""

    good: Snapshot
    bad: Snapshot
    inventory: Inventory


def _bisect(setup: _Setup) -> tuple[int, Report]:
    opts, repo, console = setup.opts, setup.repo, setup.console
    _bound_mlflow()
    uri = tracking_uri(repo, opts.tracking_uri)
    store = _store(opts, uri, repo, console)
    checked = setup.executor.preflight(Preflight(repo=repo, cluster=opts.cluster, tracking=store.uri))
    for line in remove_stale(repo):
        console.print(f"cleaned up after a killed session: {line}", markup=False)
    refs = _resolve(setup, uri)
    with Workspaces(repo, keep=opts.keep_workspaces, dvc=setup.dvc) as workspaces:
        sides = _diff(setup, *_snapshots(setup, workspaces, refs))
        bisection = _Bisection.open(setup, store, sides, workspaces, checked)
        try:
            result = bisection.run()
        finally:
            bisection.executor.close()
        if opts.keep_workspaces:
            kept = f"hybrid worktrees kept in {workspaces.root} (remove with `git worktree remove`)"
            console.print(kept, markup=False)
        return result


def _bound_mlflow() -> None:
    """MLflow's HTTP waits bounded, and its run links kept off stdout, for this process and the stages."""
    for name, value in BOUNDED_WAITS.items():
        os.environ.setdefault(name, value)
    os.environ.update(QUIET)


def _resolve(setup: _Setup, uri: str | None) -> tuple[Reference, Reference]:
    """GOOD and BAD as commits plus what is laid over them, with the warnings resolving them raised."""
    refs = resolve(setup.repo, setup.opts.good, uri), resolve(setup.repo, setup.opts.bad, uri)
    for warning in refs[0].warnings + refs[1].warnings:
        _warn(setup.console, warning)
    return refs


def _snapshots(setup: _Setup, workspaces: Workspaces, refs: tuple[Reference, Reference]) -> tuple[Snapshot, Snapshot]:
    """Both pipelines read from exports of GOOD and BAD; a params file or run must name keys its pipeline reads."""
    good_ref, bad_ref = refs
    pairs = [(good_ref, workspaces.root / "good"), (bad_ref, workspaces.root / "bad")]
    good, bad = load_all(pairs, setup.repo, setup.dvc)
    for line in uncommitted_warnings(setup.repo, good, bad, FIX if setup.opts.find_fix else CULPRIT):
        _warn(setup.console, line)
    check_overlay(good_ref, good)
    check_overlay(bad_ref, bad)
    return good, bad


def _diff(setup: _Setup, good: Snapshot, bad: Snapshot) -> _Sides:
    """The units of change; none at all is a usage error, as there is nothing to bisect."""
    inventory = diff(good, bad)
    if not inventory.units:
        raise UsageError(
            f"no differences: {good.ref.describe()} and {bad.ref.describe()} configure the pipeline identically"
        )
    return _Sides(good=good, bad=bad, inventory=inventory)


@dataclass(frozen=True)
class _Store:
    """Where the bisection and its stages log (None: untracked) and why, as the report says it."""

    uri: str | None
    description: str


def _store(opts: Options, uri: str | None, repo: Path, console: Console) -> _Store:
    """The store the user named, if MLflow is installed and the store takes runs now. None named: untracked, as
    segbisect writes nothing into a repository but its results folder. A store named where MLflow is not installed,
    or that takes no runs now, costs one warning and everything runs untracked; `--mlflow` makes a missing store or
    a missing MLflow a usage error.
    """
    if opts.mlflow is False:
        return _Store(None, "off (--no-mlflow)")
    if uri is None:
        if opts.mlflow:
            raise UsageError(
                f"--mlflow: no tracking store named; set MLFLOW_TRACKING_URI, or tracking-uri in [tool.segbisect] "
                f"of {repo / 'pyproject.toml'}"
            )
        return _Store(None, f"off: no tracking store named ({NAME_A_STORE})")
    if not mlflow_installed():
        if opts.mlflow:
            raise UsageError(f"--mlflow: MLflow is not installed; {INSTALL_HINT}")
        _warn(
            console,
            f"MLflow store {uri} is named but MLflow is not installed ({INSTALL_HINT}): the bisection "
            "and its stages run untracked",
        )
        return _Store(None, f"off: MLflow is not installed ({INSTALL_HINT}) to log to {uri}")
    reason = unusable(uri)
    if reason:
        _warn(console, f"MLflow store {uri} is unusable ({reason}): the bisection and its stages run untracked")
        return _Store(None, f"off: {uri} unusable ({reason})")
    return _Store(uri, f"MLflow {uri}")


@dataclass(kw_only=True)
class _Bisection:
    """The live parts of one session; `run` takes it through preconditions, search and report."""

    opts: Options
    repo: Path
    good: Snapshot
    bad: Snapshot
    inventory: Inventory
    files: list[str]
    judge: Judge
    journal: Journal
    tracker: Tracker
    store: _Store
    executor: Executor
    folder: Path
    console: Console
    evaluator: Evaluator = field(init=False)
    terms: Terms = field(init=False)
    progress: Progress = field(init=False)
    # Finished hybrids not shown yet: their outcome waits for the judge to settle (see `_show_settled`).
    held: list[Hybrid] = field(init=False, default_factory=list)
    # The hybrids this session's journal held at the start (their MLflow runs exist), and those of them that earlier
    # runs of this session executed (their stage executions count as this session's).
    already: set[str] = field(init=False)
    earlier: frozenset[str] = field(init=False)
    tipping_point: TippingPoint | None = field(init=False, default=None)

    @classmethod
    def open(
        cls, setup: _Setup, store: _Store, sides: _Sides, workspaces: Workspaces, checked: Mapping[str, str]
    ) -> _Bisection:
        """The session's judge, folder, executor, journal and MLflow parent run, in that order."""
        opts, repo, console = setup.opts, setup.repo, setup.console
        good, bad, inventory = sides.good, sides.bad, sides.inventory
        files = [opts.metrics] if opts.metrics else good.metrics_files
        judge = _judge(opts, repo, files)
        session = _session_id(good.ref, bad.ref, inventory)
        folder = _ignored(opts.results or repo / RESULTS) / session
        run_id = journal_id(folder, opts.fresh)
        task = Task(
            env=_hybrid_env(store.uri, opts.experiment, session, folder / STATE),
            state=f"{session}-{run_id}" if run_id else session,
            metrics_files=tuple(files),
            check=opts.run,
            diagnostics=opts.diagnostics,
            data_sources=tuple(sorted({*good.data_sources, *bad.data_sources})),
            plots=tuple(dict.fromkeys([*good.plot_paths, *bad.plot_paths])),
        )
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        tracking = StageTracking(store.uri, lambda text: _warn(console, text))
        # First, so that a cluster that cannot take a hybrid is reported before a journal or a run is opened.
        context = ExecutorContext(
            good=good,
            bad=bad,
            task=task,
            folder=folder,
            jobs=opts.jobs,
            workspaces=workspaces,
            dvc=setup.dvc,
            cluster=opts.cluster,
            checked=checked,
        )
        executor = Tracked(setup.executor.build(context), tracking)
        try:
            header = Header(session=session, id=run_id, good=good.ref.text, bad=bad.ref.text)
            journal = Journal(folder, header, fresh=opts.fresh)
            if opts.fresh:
                shutil.rmtree(folder / STATE, ignore_errors=True)
            (folder / STATE).mkdir(exist_ok=True)
            if journal.set_aside:
                _warn(console, f"{journal.set_aside} was written by another segbisect version; its hybrids run again")
            tracker = Tracker(tracking, opts.experiment, folder / "logs" / MLFLOW_LOG)
            _start_tracking(tracker, journal, session, *_describe(opts, good, bad, inventory, judge))
        except BaseException:
            executor.close()
            raise
        return cls(
            opts=opts,
            repo=repo,
            good=good,
            bad=bad,
            inventory=inventory,
            files=files,
            judge=judge,
            journal=journal,
            tracker=tracker,
            store=store,
            executor=executor,
            folder=folder,
            console=console,
        )

    def __post_init__(self) -> None:
        self.terms = FIX if self.opts.find_fix else CULPRIT
        groups = group(self.inventory.units)
        self.console.print(
            f"GOOD {self.good.ref.describe()}\nBAD  {self.bad.ref.describe()}\n{len(self.inventory.units)} "
            f"differing unit(s) in {len(groups)} group(s): {', '.join(g.name for g in groups)}; "
            f"results in {self.folder}",
            markup=False,
        )
        known = Known() if self.opts.fresh else known_hybrids(self.folder.parent)
        for line in known.skipped:
            _warn(self.console, line)
        plan = Plan(
            inventory=self.inventory,
            groups=groups,
            stages=[s.name for s in self.good.stages],
            known=known.hybrids,
            # Asked only when there is something to compare: a cluster answers with a task of its own.
            environment=self.executor.environment() if known.hybrids else {},
            policy=self.opts.attempts,
            reuse_any_environment=self.opts.reuse_any_environment,
        )
        self.already = {r.fingerprint for r in self.journal.records(HybridRecord)}
        self.earlier = self.journal.executed_here()
        probes = self.opts.tipping.budget if self.opts.tipping else 0
        self.progress = Progress(self.console, self.folder / "logs", planned(groups, self.opts.jobs) + probes)

        def started(h: Hybrid) -> None:
            self.progress.started(h)
            _started(self.console, h)

        def done(h: Hybrid) -> None:
            self.progress.done(h)
            self.held.append(h)
            self._show_settled()

        listeners = Listeners(on_start=started, on_done=done, on_warning=lambda text: _warn(self.console, text))
        self.evaluator = Evaluator(plan, self.executor, self.journal, self.judge, listeners)

    def run(self) -> tuple[int, Report]:
        groups = self.evaluator.plan.groups
        try:
            with self.progress:
                self._preconditions()
                verdict = search(groups, self.evaluator, self.opts.jobs)
                verdict = verdict.as_fix() if self.terms.find_fix else verdict
                self.tipping_point, tipped = tip(verdict, self.evaluator, self.judge, self.opts)
        except PreconditionError as exc:
            self._forget_state()
            return EXIT_PRECONDITION, self._close(VerdictKind.PRECONDITION_FAILED, str(exc), None, "FAILED")
        except UndecidableError as exc:
            message = f"cannot decide: {exc}; finished hybrids are kept, so the same command resumes"
            return EXIT_NO_CULPRIT, self._close(VerdictKind(exc.kind), message, None, "FAILED")
        except BaseException as exc:
            stopped = build(self._findings(), VerdictKind.STOPPED, str(exc) or "interrupted")
            self.tracker.finish(stopped, "KILLED")
            raise
        self._forget_state()
        report = self._close(verdict.kind, verdict.message() + tipped, verdict)
        return (EXIT_CULPRIT if verdict.names_a_change else EXIT_NO_CULPRIT), report

    def _preconditions(self) -> None:
        """As git bisect: GOOD must pass and BAD must fail; both run at once when `--jobs` allows, also while the
        judge waits for GOOD's metrics to settle its file and keys (see `_show_settled`).
        """
        everything = frozenset(u.id for u in self.inventory.units)
        terms = self.terms
        both = [(GOOD_CONFIG, terms.old), (everything, terms.new)]
        try:
            self.evaluator(both if self.opts.jobs >= 2 else both[:1])
        finally:
            self._show_settled(final=True)
        good_run = self.evaluator.get(GOOD_CONFIG)
        passes, fails = ("fail", "pass") if terms.find_fix else ("pass", "fail")
        if good_run.outcome != Outcome.GOOD:
            got = f"{terms.outcome(good_run.outcome)}: {good_run.note}"
            hint = ""
            if good_run.outcome == Outcome.BAD:
                # One more hybrid tells a swapped pair from a wrong check; it is journaled by content, so the
                # corrected command (swapped, or --find-fix) reuses it and nothing is run twice. Only a hint: an
                # environment that fails it leaves the answer GOOD's, without the hint.
                with contextlib.suppress(UndecidableError):
                    self.evaluator([(everything, terms.new)])
                    bad_run = self.evaluator.get(everything)
                    if bad_run.outcome == Outcome.GOOD:
                        hint = "; " + terms.swapped(self.good.ref.text, self.bad.ref.text, bad_run.note)
            raise PreconditionError(f"{terms.old} does not {passes} ({got}); nothing to bisect{hint}")
        self.evaluator([(everything, terms.new)])
        bad_run = self.evaluator.get(everything)
        if bad_run.outcome != Outcome.BAD:
            got = f"{terms.outcome(bad_run.outcome)}: {bad_run.note}"
            raise PreconditionError(f"{terms.new} does not {fails} ({got}); nothing to bisect")

    def _show_settled(self, final: bool = False) -> None:
        """Show (and log to MLflow) each finished hybrid once its outcome is settled, so the line shown and the
        report agree. A predicate whose metrics file and keys come from GOOD's metrics settles when GOOD's run
        brings them; finished hybrids wait here until then and are judged again. `final`: nothing more can settle
        the judge (GOOD ran without metrics, or the run stops), so they are shown as judged.
        """
        if not self.held:
            return
        good_run = self.evaluator.get(GOOD_CONFIG)
        if not self.judge.ready and good_run.attempts and good_run.attempts[-1].metrics:
            _settle(self.judge, self.files, good_run)
        if not (self.judge.ready or final):
            return
        held, self.held = self.held, []
        for hybrid in held:
            _done(self.console, self.tracker, self.already, self.evaluator.rejudge(hybrid), self.judge, self.terms)

    def _forget_state(self) -> None:
        """A session with an answer has nothing left to resume: what its stages kept for a resume goes (a session
        that could not decide, or was stopped, keeps it for the same command to resume).
        """
        shutil.rmtree(self.folder / STATE, ignore_errors=True)

    def _findings(self) -> Findings:
        return Findings(
            good=self.good.ref,
            bad=self.bad.ref,
            inventory=self.inventory,
            hybrids=self.evaluator.hybrids,
            metrics_file=self.judge.metrics_file,
            key_metrics=self.judge.keys(),
            folder=self.folder,
            tracking=self.tracker.tracking.describe(self.store.description),
            terms=self.terms,
            earlier=self.earlier,
            tipping_point=self.tipping_point,
        )

    def _close(self, kind: VerdictKind, message: str, verdict: Verdict | None, status: str = "FINISHED") -> Report:
        findings = self._findings()
        if verdict and verdict.units:
            # Read from git's history alone, once the verdict names its units: nothing more runs.
            culprit = [u for u in self.inventory.units if u.id in verdict.units]
            findings = replace(findings, provenance=trace(self.repo, self.good.ref, self.bad.ref, culprit))
        report = build(findings, kind, message, verdict)
        files = render.write(self.folder, report)
        if self.opts.summary_md:
            self.opts.summary_md.write_text(render.summary(report), encoding="utf-8")
        self.tracker.finish(report, status, attachments=files)
        return report


def _ignored(results: Path) -> Path:
    """The results folder ignores itself, as pytest's cache does, so it never shows in the user's `git status`."""
    results.mkdir(parents=True, exist_ok=True)
    marker = results / ".gitignore"
    if not marker.exists():
        marker.write_text("# Created by segbisect: journals, logs and reports of bisections.\n*\n", encoding="utf-8")
    return results


def _judge(opts: Options, repo: Path, files: list[str]) -> Judge:
    """The check; for a predicate also the metrics file it reads and its keys, settled now when the user's
    workspace holds the metrics files (from their last `dvc repro`), else by GOOD's first run.
    """
    predicate = None if opts.run else Predicate(opts.fail_if or "")
    found, _ = metrics.read_all(repo, files)
    judge = Judge(predicate, opts.run, metrics.choose(files, predicate, found), invert=opts.find_fix)
    if predicate and judge.metrics_file in found:
        predicate.resolve_keys(list(found[judge.metrics_file]))
    return judge


def _settle(judge: Judge, files: list[str], good_run: Hybrid) -> None:
    """Choose the metrics file and resolve the predicate's keys from GOOD's metrics."""
    found = good_run.attempts[-1].metrics
    judge.metrics_file = judge.metrics_file or metrics.choose(
        files, judge.predicate, {f: found.get(f, {}) for f in files}
    )
    if judge.predicate and judge.metrics_file in found:
        judge.predicate.resolve_keys(list(found[judge.metrics_file]))


def _describe(
    opts: Options, good: Snapshot, bad: Snapshot, inventory: Inventory, judge: Judge
) -> tuple[dict[str, str], dict[str, object]]:
    """The bisection's MLflow tags and params."""
    tags = {"good": good.ref.text, "bad": bad.ref.text, "good_commit": good.ref.commit, "bad_commit": bad.ref.commit}
    params: dict[str, object] = {
        "good": good.ref.describe(),
        "bad": bad.ref.describe(),
        "judge": opts.run or (judge.predicate.text if judge.predicate else ""),
        "jobs": opts.jobs,
        "repeat": opts.attempts.repeat,
        "units": len(inventory.units),
        "groups": len(group(inventory.units)),
    }
    return tags, params


def _start_tracking(
    tracker: Tracker, journal: Journal, session: str, tags: dict[str, str], params: dict[str, object]
) -> None:
    """Open the MLflow parent run, reopening the one an interrupted run of this session recorded."""
    parents = [r.parent for r in journal.records(MlflowRecord)]
    previous = parents[-1] if parents else None

    def remember(parent: str | None) -> None:
        if parent and parent != previous:
            journal.append(MlflowRecord(parent=parent))

    tracker.start(session, tags, params, previous, remember)


def _warn(console: Console, text: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(text)}")


def _started(console: Console, h: Hybrid) -> None:
    console.print(f"[cyan]{h.id}[/] {escape(h.label)} ... running")


def _done(console: Console, tracker: Tracker, already: set[str], h: Hybrid, judge: Judge, terms: Terms) -> None:
    healthy, broken = (Outcome.BAD, Outcome.GOOD) if terms.find_fix else (Outcome.GOOD, Outcome.BAD)
    colour = {healthy: "green", broken: "red"}.get(h.outcome, "yellow")
    how = (
        "reused earlier result"
        if h.reused
        else (f"ran {', '.join(h.executed) or 'nothing'}; restored {len(h.restored)}")
    )
    details = escape(f"({h.note}; {how}; {h.seconds}s)")
    console.print(f"[cyan]{h.id}[/] {escape(h.label)}: [{colour}]{terms.outcome(h.outcome)}[/] {details}")
    if h.fingerprint not in already:
        tracker.hybrid(HybridRow.of(h, judge.metrics_file, terms))


def _hybrid_env(uri: str | None, experiment: str, session: str, state: Path) -> dict[str, str]:
    """The stages' environment: this interpreter's tools first on PATH, one tracking store (or
    SEGBISECT_TRACKING=off), session tags, and the session's folder for state that outlives a worktree.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["SEGBISECT_SESSION"] = session
    env[STATE_VARIABLE] = str(state)
    env.pop("MLFLOW_RUN_ID", None)
    if not uri:
        return untracked(env)
    env["MLFLOW_TRACKING_URI"] = uri
    env["MLFLOW_EXPERIMENT_NAME"] = experiment
    env.pop(TRACKING_SWITCH, None)
    return env


def _with_settings(opts: Options, repo: Path) -> Options:
    """The project's check, evidence file and tracking store where the command line names none; no check at all is
    a usage error.
    """
    settings = load_settings(repo)
    fail_if = opts.fail_if if opts.fail_if is not None else settings.fail_if
    if opts.run is None and fail_if is None:
        raise UsageError(
            f"no failure check: pass --fail-if EXPR or --run CMD, or set fail-if in [tool.segbisect] of "
            f"{repo / 'pyproject.toml'}"
        )
    return replace(opts, fail_if=fail_if, diagnostics=settings.diagnostics, tracking_uri=settings.tracking_uri)


def _session_id(good: Reference, bad: Reference, inventory: Inventory) -> str:
    everything = frozenset(u.id for u in inventory.units)
    key = hashlib.sha256((inventory.fingerprint(frozenset()) + inventory.fingerprint(everything)).encode()).hexdigest()
    return f"{_slug(good.text)}..{_slug(bad.text)}-{key[:8]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).name if "/" in text else text)[:40]


def _repo(path: Path) -> Path:
    try:
        repo = toplevel(path.resolve())
    except Exception:
        raise UsageError(f"--repo {path}: not inside a git repository") from None
    if not (repo / ".dvc").is_dir():
        raise UsageError(f"{repo}: not a DVC repository (no .dvc folder)")
    return repo

"""What segbisect learns from DVC, pinned against the installed DVC: stages executed or restored, failure
reasons, and metrics files found the way `dvc metrics show` finds them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from segbisect.cli import app
from segbisect.core.attempt import AttemptStatus
from segbisect.project import gateway
from segbisect.project.gateway import DirectDvc, ForkedDvc
from segbisect.project.runner import Processes, Site, Task, attempt

pytestmark = pytest.mark.e2e

STAGES: dict[str, Any] = {
    "make": {"cmd": "python make.py", "deps": ["make.py"], "params": ["make"], "outs": ["data.txt"]},
    "score": {
        "cmd": "python score.py",
        "deps": ["score.py", "data.txt"],
        "outs": [{"out/metrics.json": {"cache": False}}],
    },
}
MAKE = 'import yaml\nn = yaml.safe_load(open("params.yaml"))["make"]["n"]\nopen("data.txt", "w").write(str(n))\n'
SCORE = (
    "import json, os, sys\nn = int(open('data.txt').read())\n"
    "if n < 0:\n    print('error: data.txt: negative count', file=sys.stderr)\n    sys.exit(2)\n"
    "os.makedirs('out', exist_ok=True)\njson.dump({'fg': 0 if n > 5 else 0.1, 'n': n}, open('out/metrics.json', 'w'))\n"
)


def sh(repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(args, cwd=repo, check=True, capture_output=True, env=env)


def project(root: Path, stages: dict[str, Any], top_level_metrics: list[str] | None = None) -> Path:
    root.mkdir()
    (root / "make.py").write_text(MAKE)
    (root / "score.py").write_text(SCORE)
    (root / "params.yaml").write_text(yaml.safe_dump({"make": {"n": 3}}))
    pipeline: dict[str, Any] = {"stages": stages}
    if top_level_metrics:
        pipeline = {"metrics": top_level_metrics, **pipeline}
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "t@example.com")
    sh(root, "git", "config", "user.name", "t")
    sh(root, sys.executable, "-m", "dvc", "init", "-q")
    return root


@pytest.fixture(params=[False, True], ids=["fresh-interpreter", "forked"])
def procs(request: pytest.FixtureRequest) -> Iterator[Processes]:
    """DVC run both ways segbisect runs it: a fresh interpreter (cluster workers), forked from a warm server (local)."""
    processes = Processes(dvc=ForkedDvc() if request.param else DirectDvc())
    yield processes
    processes.close()


def repro(repo: Path, log: Path, procs: Processes) -> Any:
    task = Task(env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}, metrics_files=("out/metrics.json",))
    return attempt(Site(procs=procs, workspace=repo, log=log, task=task, env=task.env))


def set_n(repo: Path, n: int) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"make": {"n": n}}))


def test_executed_unchanged_and_run_cache_restores_are_told_apart(tmp_path: Path, procs: Processes) -> None:
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    first = repro(repo, log, procs)
    assert first.status == AttemptStatus.OK and first.executed == ("make", "score") and first.restored == ()
    assert first.metrics == {"out/metrics.json": {"fg": 0.1, "n": 3}}
    again = repro(repo, log, procs)
    assert again.executed == () and again.restored == ("make", "score"), "unchanged stages are skipped in place"
    set_n(repo, 4)
    assert repro(repo, log, procs).executed == ("make", "score")
    set_n(repo, 3)
    back = repro(repo, log, procs)
    assert back.restored == ("make",), "restored from the run-cache"
    assert back.executed == ("score",), "an output with cache: false cannot come from the run-cache"
    assert set(first.stage_seconds) == {"make", "score"} and again.stage_seconds == {}
    assert set(back.stage_seconds) == {"score"}, "restored stages take no stage time"


def test_each_executed_stage_is_timed_from_its_start_to_the_next_stage(tmp_path: Path, procs: Processes) -> None:
    """A stage's seconds are its own command's and DVC's saving of its outputs: not the next stage's, nor the rest
    of the attempt. Both stages nap 1.5 s, so a stage charged with the other's time would show 3 s or more.
    """
    nap = "python -c 'import time; time.sleep(1.5)' && "
    napping = {name: {**stage, "cmd": nap + stage["cmd"]} for name, stage in STAGES.items()}
    repo, log = project(tmp_path / "p", napping), tmp_path / "log"
    timed = repro(repo, log, procs)
    assert timed.status == AttemptStatus.OK and list(timed.stage_seconds) == ["make", "score"]
    assert all(1.5 <= seconds < 3.0 for seconds in timed.stage_seconds.values()), timed.stage_seconds
    assert sum(timed.stage_seconds.values()) < timed.seconds
    set_n(repo, -1)
    crashed = repro(repo, log, procs)
    assert crashed.status == AttemptStatus.CRASH and set(crashed.stage_seconds) == {"make", "score"}


def test_stages_pulled_from_a_remote_count_as_restored(tmp_path: Path) -> None:
    """`repro --pull` (the cluster executor's): an unchanged stage whose outputs only the remote holds is pulled,
    not run; where the remote lacks them, the stage runs.
    """
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    sh(repo, sys.executable, "-m", "dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    assert repro(repo, log, Processes()).executed == ("make", "score")
    sh(repo, sys.executable, "-m", "dvc", "push", "-q")
    sh(repo, "rm", "-rf", ".dvc/cache", "data.txt")
    task = Task(
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}, metrics_files=(), repro_args=("--pull",)
    )
    pulled = attempt(Site(procs=Processes(), workspace=repo, log=log, task=task, env=task.env))
    assert pulled.executed == () and pulled.restored == ("make", "score")
    sh(repo, "rm", "-rf", ".dvc/cache", "data.txt", str(tmp_path / "remote"))
    missing = attempt(Site(procs=Processes(), workspace=repo, log=log, task=task, env=task.env))
    assert missing.executed == ("make",) and missing.restored == ("score",)


def test_failure_reason_names_the_stage_and_its_own_last_words(tmp_path: Path, procs: Processes) -> None:
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    set_n(repo, -1)
    crashed = repro(repo, log, procs)
    assert crashed.status == AttemptStatus.CRASH and crashed.executed == ("make", "score")
    assert crashed.reason == "stage 'score' failed (exit 2): error: data.txt: negative count"


def test_a_dvc_error_outside_any_command_still_has_a_reason(tmp_path: Path, procs: Processes) -> None:
    stages = {**STAGES, "score": {**STAGES["score"], "deps": ["score.py", "data.txt", "missing.csv"]}}
    repo, log = project(tmp_path / "p", stages), tmp_path / "log"
    crashed = repro(repo, log, procs)
    assert crashed.status == AttemptStatus.CRASH
    assert crashed.reason.startswith("dvc failed (exit 255): failed to reproduce 'score'; ")
    assert crashed.reason.endswith("missing.csv'")


@contextlib.contextmanager
def usage_report_endpoint() -> Iterator[tuple[str, list[str]]]:
    """A loopback stand-in for DVC's usage-report endpoint; yields its address and the commands reported to it."""
    reported: list[str] = []

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reported.append(json.loads(body).get("cmd_class", "?"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", reported
    finally:
        server.shutdown()
        server.server_close()


def test_segbisects_own_dvc_commands_send_no_usage_reports(tmp_path: Path, procs: Processes) -> None:
    """The project has DVC's usage reports on (DVC's default); the user's own `dvc status` sends one, the
    hybrid's `dvc repro` none (each would start a detached interpreter beside the stages).
    """
    repo, log = project(tmp_path / "p", STAGES), tmp_path / "log"
    sh(repo, sys.executable, "-m", "dvc", "config", "core.analytics", "true")
    with usage_report_endpoint() as (address, reported):
        # DVC's reporter runs `python <site-packages>/dvc/__main__.py`, which puts dvc/ first on the module path,
        # where dvc/types.py hides the standard library's `types`: in a plain venv it dies before it reports
        # (in a checkout, an editable install's .pth happens to import `types` first). PYTHONSAFEPATH keeps that
        # folder off the path, so a report is sent wherever one is started.
        env = {
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "DVC_ANALYTICS_ENDPOINT": address,
            "PYTHONSAFEPATH": "1",
        }
        task = Task(env=env, metrics_files=("out/metrics.json",))
        assert attempt(Site(procs=procs, workspace=repo, log=log, task=task, env=env)).executed == ("make", "score")
        users = {k: v for k, v in os.environ.items() if k not in ("DVC_NO_ANALYTICS", "DVC_TEST")}
        sh(repo, sys.executable, "-m", "dvc", "status", "-q", env={**users, **env})
        deadline = time.monotonic() + 60
        while "CmdDataStatus" not in reported and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
    assert reported == ["CmdDataStatus"]


def test_top_level_metrics_are_found_without_metrics_flag(tmp_path: Path) -> None:
    """A dvclive-style project: the metrics file is declared at the top level of dvc.yaml, not on a stage."""
    stages = {**STAGES, "score": {**STAGES["score"], "outs": [{"out": {"cache": False}}]}}
    repo = project(tmp_path / "p", stages, top_level_metrics=["out/metrics.json"])
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "good")
    set_n(repo, 9)
    sh(repo, "git", "commit", "-qam", "bad")
    result = CliRunner().invoke(
        app,
        [
            "HEAD~1",
            "HEAD",
            "--fail-if",
            "fg == 0",
            "--repo",
            str(repo),
            "--json",
            "--no-mlflow",
            "--results",
            str(tmp_path / "results"),
        ],
    )
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert report["culprit"]["stage"] == "make" and [u["name"] for u in report["culprit"]["units"]] == ["make.n"]
    assert report["hybrids"][0]["metrics"] == {"fg": 0.1, "n": 3}


ECHO_STAGE = {
    "echo": {
        "cmd": "python -c \"import os; print('stage sees', os.environ['HYBRID_MARK'], os.getcwd())\"",
        "always_changed": True,
    }
}
SLEEP_STAGE = {"sleep": {"cmd": "python -c 'import time; time.sleep(600)'", "always_changed": True}}


def stage_processes(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def ended(marker: str, within: float = 10.0) -> bool:
    """Whether no process matching `marker` is left within `within` seconds (a signalled process takes a moment)."""
    deadline = time.monotonic() + within
    while stage_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not stage_processes(marker)


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[1])


def test_a_forked_command_runs_in_its_workspace_with_its_environment_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server was started with another environment and folder: the command must get the request's."""
    monkeypatch.setenv("HYBRID_MARK", "server's")
    repo, log = project(tmp_path / "p", ECHO_STAGE), tmp_path / "log"
    procs = Processes(dvc=ForkedDvc())
    try:
        env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HYBRID_MARK": "hybrid's"}
        done = attempt(Site(procs=procs, workspace=repo, log=log, task=Task(env=env, metrics_files=()), env=env))
    finally:
        procs.close()
    assert done.status == AttemptStatus.OK and done.executed == ("echo",)
    assert f"stage sees hybrid's {repo}" in log.read_text()


def sleeping_attempt(procs: Processes, tmp_path: Path) -> tuple[threading.Thread, list[Any]]:
    """An attempt of a project whose stage sleeps, in a thread, returned once the stage runs (with its result
    list, filled when the attempt ends).
    """
    repo = project(tmp_path / "p", SLEEP_STAGE)
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(
            attempt(
                Site(procs=procs, workspace=repo, log=tmp_path / "log", task=Task(env=env, metrics_files=()), env=env)
            )
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while not stage_processes("time.sleep(600)") and time.monotonic() < deadline:
        time.sleep(0.1)
    return worker, result


def test_stopping_ends_a_forked_command_and_its_stage(tmp_path: Path) -> None:
    """The forked driver leads a process group of its own, so Ctrl-C (stop_all) reaches the stage it started."""
    procs = Processes(dvc=ForkedDvc())
    worker, result = sleeping_attempt(procs, tmp_path)
    assert stage_processes("time.sleep(600)"), "the stage never started"
    procs.stop_all()
    worker.join(timeout=30)
    procs.close()
    assert result and result[0].status == AttemptStatus.ERROR, result
    assert ended("time.sleep(600)")


def test_a_fork_server_that_dies_is_an_environment_error_and_the_next_command_gets_a_new_one(tmp_path: Path) -> None:
    procs = Processes(dvc=ForkedDvc())
    worker, result = sleeping_attempt(procs, tmp_path)
    servers = [pid for pid in stage_processes("segbisect.project.forked") if parent(pid) == os.getpid()]
    assert servers and stage_processes("time.sleep(600)")
    for pid in servers:
        os.kill(pid, signal.SIGKILL)
    worker.join(timeout=30)
    assert result and result[0].status == AttemptStatus.ERROR
    assert (
        result[0].reason
        == "dvc failed (killed by signal 9): dvc died: dvc repro ended without a report (killed by signal 9)"
    )
    assert ended("time.sleep(600)"), "the lost command's stage is ended with it"
    other = project(tmp_path / "q", STAGES)
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    again = attempt(
        Site(
            procs=procs,
            workspace=other,
            log=tmp_path / "log",
            task=Task(env=env, metrics_files=("out/metrics.json",)),
            env=env,
        )
    )
    procs.close()
    assert again.status == AttemptStatus.OK and again.metrics == {"out/metrics.json": {"fg": 0.1, "n": 3}}


def test_a_script_without_a_main_guard_can_fork_dvc_commands(tmp_path: Path) -> None:
    """Python's multiprocessing forkserver would run this script again in every child."""
    repo = project(tmp_path / "p", STAGES)
    script = tmp_path / "caller.py"
    script.write_text(
        "import os, sys\nfrom pathlib import Path\nfrom segbisect.project.gateway import ForkedDvc\n"
        "from segbisect.project.runner import Processes, Site, Task, attempt\n"
        "procs = Processes(dvc=ForkedDvc())\nenv = dict(os.environ)\n"
        f"done = attempt(Site(procs=procs, workspace=Path({str(repo)!r}), log=Path({str(tmp_path / 'log')!r}), task="
        "Task(env=env, metrics_files=()), env=env))\nprocs.close()\nprint(done.status.value, done.executed)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok ('make', 'score')", out.stderr


# Several commands in one process, as no fork-server child runs them (each runs one): DVC before 3.62 leaves its
# loggers at the level a `--quiet` set, so each command starts from the levels the first found.
PRELOAD_PROBE = """
import importlib, json, logging, sys
from pathlib import Path
from segbisect.project.forked import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
from ruamel.yaml import YAML
from segbisect.project.dvc_run import main
loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
levels = [logger.level for logger in loggers]
before = set(sys.modules)
for step in json.loads(sys.argv[1]):
    if isinstance(step, str):
        Path("params.yaml").write_text(step)
    elif isinstance(step, dict):
        importlib.import_module(step["driver"]).main(step["argv"])
    else:
        main([".events.json", "--", *step])
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)
print(json.dumps({"parser": YAML(typ="safe").Parser.__name__, "new": sorted(set(sys.modules) - before)}))
"""


def test_the_fork_server_preloads_what_dvc_commands_import_and_dvc_parses_yaml_in_c(tmp_path: Path) -> None:
    """A forked command imports nothing of its own on the way through a checkout, a run, a run-cache restore, a
    no-op repro and the session's questions (a pipeline, the cache folder): each missing module costs every command
    its import. DVC's YAML goes through ruamel's C parser (the pure-Python one is 3-4 times slower on every params
    file and lock).
    """
    repo = project(tmp_path / "p", STAGES)
    sh(repo, sys.executable, "-m", "dvc", "repro", "-q")
    first, other = (yaml.safe_dump({"make": {"n": n}}) for n in (3, 7))
    asks = [
        {"driver": "segbisect.project.gateway", "argv": [".read.json", "pipeline", "."]},
        {"driver": "segbisect.project.gateway", "argv": [".cache.json", "cache-dir", "."]},
    ]
    steps = [*asks, ["checkout", "--quiet", "--allow-missing"], other, ["repro"], first, ["repro"], ["repro"]]
    run = subprocess.run(
        [sys.executable, "-c", PRELOAD_PROBE, json.dumps(steps)], cwd=repo, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "is cached - skipping run" in run.stdout + run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["parser"] == "CParser"
    assert found["new"] == []


def test_forked_commands_read_a_lock_for_update_with_the_c_parser_and_keep_no_rwlock(tmp_path: Path) -> None:
    """DVC reads dvc.lock again before every rewrite with ruamel's pure-Python round-trip parser, to keep its
    comments, and records each stage's reads and writes in `.dvc/tmp/rwlock`; commands forked from the server use
    the C parser and keep no such record. The lock they write is DVC's own bar the comment, whose loss shows which
    parser read it.
    """
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    locks, rwlock_touched = {}, {}
    for how in ("dvc", "forked"):
        repo = project(tmp_path / how, STAGES)
        sh(repo, sys.executable, "-m", "dvc", "repro", "-q")
        lock, rwlock = repo / "dvc.lock", repo / ".dvc" / "tmp" / "rwlock"
        lock.write_text("# a comment\n" + lock.read_text())
        (repo / "params.yaml").write_text(yaml.safe_dump({"make": {"n": 7}}))
        before = rwlock.stat().st_mtime_ns
        if how == "dvc":
            sh(repo, sys.executable, "-m", "dvc", "repro", "-q")
        else:
            procs = Processes(dvc=ForkedDvc())
            try:
                done = attempt(
                    Site(
                        procs=procs, workspace=repo, log=tmp_path / "log", task=Task(env=env, metrics_files=()), env=env
                    )
                )
            finally:
                procs.close()
            assert done.status == AttemptStatus.OK and done.executed == ("make", "score")
        locks[how], rwlock_touched[how] = lock.read_text(), rwlock.stat().st_mtime_ns != before
    assert locks["dvc"].startswith("# a comment\n")
    assert locks["forked"] == locks["dvc"].removeprefix("# a comment\n")
    assert rwlock_touched == {"dvc": True, "forked": False}


READ_PROBE = """
import json, sys
from pathlib import Path
from segbisect.core.errors import UsageError
from segbisect.project.gateway import DirectDvc, ForkedDvc
from segbisect.project.refs import resolve
from segbisect.project.snapshot import load_all
from segbisect.project.workspace import Workspaces

def read(repo, rev, folder, dvc):
    try:
        [snap] = load_all([(resolve(repo, rev, None), folder)], repo, dvc)
    except UsageError as exc:
        return str(exc)
    return [[vars(s) for s in snap.stages], snap.params_data, snap.dvcyaml, snap.data_sources, snap.metrics_files]

repo = Path(sys.argv[1])
with ForkedDvc() as dvc, Workspaces(repo, dvc=dvc) as ws:
    forked = {rev: read(repo, rev, ws.root / f"forked-{rev}", dvc) for rev in ("HEAD~1", "HEAD")}
    worktree, _ = ws.acquire("good", resolve(repo, "HEAD~1", None).commit, [], [])
    config = (worktree / ".dvc" / "config.local").read_text()
    dvc_here = sorted(m for m in sys.modules if m == "dvc" or m.startswith("dvc."))
    here = {rev: read(repo, rev, ws.root / f"here-{rev}", DirectDvc()) for rev in ("HEAD~1", "HEAD")}
print(json.dumps({"forked": forked, "here": here, "dvc_here": dvc_here, "config": config}, default=str))
"""


def test_the_session_reads_pipelines_and_the_cache_folder_through_the_fork_server(tmp_path: Path) -> None:
    """Both pipelines are read, and the user's cache folder found, by children of the fork server, so the session
    never imports DVC itself; what they answer is what DVC answers in this process, an unreadable pipeline included.
    """
    repo = project(tmp_path / "p", {**STAGES, "score": {**STAGES["score"], "params": [{"score.yaml": ["cut"]}]}})
    (repo / "score.yaml").write_text(yaml.safe_dump({"cut": 5, "other": 1}))
    (repo / ".dvc" / "config.local").write_text("['remote \"store\"']\n    url = /elsewhere\n")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {"cmd": "true", "outs": 5}}}))
    sh(repo, "git", "commit", "-qam", "unreadable pipeline")
    run = subprocess.run([sys.executable, "-c", READ_PROBE, str(repo)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["dvc_here"] == [], "the session imported DVC"
    assert found["forked"]["HEAD~1"] == found["here"]["HEAD~1"]
    stages, params, _, _, _ = found["forked"]["HEAD~1"]
    assert [s["name"] for s in stages] == ["make", "score"]
    assert "('score.yaml', ('cut',))" in stages[1]["params"] and params["score.yaml"] == {"cut": 5, "other": 1}
    for side in ("forked", "here"):  # DVC names the file relative to where it runs: the same file either way
        assert re.fullmatch(
            r"HEAD \(git: \w+\): cannot read the DVC pipeline: '.*dvc.yaml' validation failed", found[side]["HEAD"]
        )
    assert f"dir = {repo / '.dvc' / 'cache'}" in found["config"]
    assert "url = /elsewhere" in found["config"], "the user's local settings travel with the worktree"


def test_the_console_script_hands_its_early_fork_server_over_once() -> None:
    gateway.start_early()
    server = gateway.take_early()
    try:
        assert server is not None and server.alive
        assert gateway.take_early() is None
    finally:
        assert server is not None
        server.close()

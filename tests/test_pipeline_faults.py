"""Stages under a failing environment: exit 75 with one line for a fault of the machine, exit 2 for bad input,
untracked (with one warning) when the MLflow store is unusable, and no temp leftovers from killed stages.

Real parts throughout: /dev/full and a tiny tmpfs for a full disk, real SQLite files made read-only, real HTTP
servers on the loopback (answering 500, or never answering) and a closed port, real processes killed by SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.errors import EXIT_ENVIRONMENT, EXIT_INPUT, INSTALL_TENSORFLOW, PipelineError, run_stage
from pipeline.io import atomic_dir, atomic_file, remove_stale_temps
from pipeline.params import load_section
from pipeline.scratch import ROOT
from pipeline.synthesize import SynthesizeParams
from support import THRESHOLD_GOOD, ThresholdBisection, make_pipeline_repo

PYTHON = sys.executable
HTTP_SETTINGS = tuple(tracking.HTTP_DEFAULTS)


def run_python(
    code: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- exit statuses -------------------------------------------------------------------------------------------


def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise PipelineError("params.yaml: train.epochs must be positive")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == EXIT_INPUT == 2
    assert capsys.readouterr().err == "error: params.yaml: train.epochs must be positive\n"


def test_a_full_disk_exits_75_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full missing")
    result = run_python(
        """
        from pipeline.errors import run_stage
        from pipeline.io import atomic_file

        def main():
            with atomic_file("out.json") as tmp:
                tmp.write_text("{}")
                with open("/dev/full", "w") as full:  # ENOSPC, as on a full disk
                    full.write("x" * 65536)

        run_stage(main)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_ENVIRONMENT == 75, result.stderr
    assert error_lines(result.stderr) == [
        "error: while writing out.json: No space left on device [ENOSPC] (environment fault)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the failed write left a file behind"


def test_a_missing_tensorflow_exits_75_saying_how_to_install_it(capsys: pytest.CaptureFixture[str]) -> None:
    """A machine installed without the cpu or gpu extra: the environment's fault, and one line on the fix."""

    def stage() -> None:
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(stage)
    assert exit_info.value.code == EXIT_ENVIRONMENT
    line = capsys.readouterr().err.strip()
    assert line == f"error: tensorflow: not installed ({INSTALL_TENSORFLOW}) (environment fault)"
    assert "requirements/cpu.txt" in line and "requirements/gpu.txt" in line


def test_out_of_memory_exits_75(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        raise MemoryError

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == EXIT_ENVIRONMENT
    assert capsys.readouterr().err == "error: memory: out of memory (environment fault)\n"


def test_bad_input_raised_while_the_disk_fails_is_an_environment_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage that turns an unreadable file into a PipelineError must not hide an I/O error as bad input."""

    def main() -> None:
        try:
            raise OSError(5, "Input/output error", str(tmp_path / "a.png"))
        except OSError as exc:
            raise PipelineError(f"{exc.filename}: unreadable image") from None

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == EXIT_ENVIRONMENT
    assert capsys.readouterr().err == f"error: {tmp_path / 'a.png'}: Input/output error [EIO] (environment fault)\n"


def test_a_bug_keeps_its_traceback_and_exit_1(tmp_path: Path) -> None:
    result = run_python(
        """
        from pipeline.errors import run_stage

        def main():
            open("missing-by-mistake.txt")  # FileNotFoundError: the code's bug, not the machine's

        run_stage(main)
        """,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_a_readonly_sqlite_error_is_an_environment_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")

    def main() -> None:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.execute("INSERT INTO runs VALUES ('x')")

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == EXIT_ENVIRONMENT
    assert capsys.readouterr().err == "error: database: attempt to write a readonly database (environment fault)\n"


# --- untracked stages and the store probe ----------------------------------------------------------------------


@pytest.fixture()
def stage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the project's params.yaml, as DVC runs a stage in; MLflow's HTTP settings unset."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    monkeypatch.chdir(work)
    for name in HTTP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(tracking.TRACKING_SWITCH, raising=False)
    return work


def run_a_stage(work: Path) -> tuple[dict[str, Any], tracking.StageRun, float]:
    """A stage-like block under `stage_run`, logging as the stages do; the run file, the run, and the seconds."""
    params = load_section("synthesize", SynthesizeParams)
    start = time.monotonic()
    with atomic_dir(work / "out") as out, tracking.stage_run("synthesize", params, out / "synthesize_run.json") as run:
        (out / "result.txt").write_text("done\n")
        tracking.log_metric("foreground_share", 0.08)
        tracking.log_dict({"a": 1}, "spec.json")
    seconds = time.monotonic() - start
    assert (work / "out/result.txt").read_text() == "done\n"
    return json.loads((work / "out/synthesize_run.json").read_text()), run, seconds


def assert_untracked(record: dict[str, Any], run: tracking.StageRun) -> None:
    assert record["run_id"] is None and record["experiment_id"] is None
    assert record["stage"] == "synthesize" and record["config_hash"] and record["numerics"]["python"]
    assert not run.tracked


def test_tracking_off_never_touches_mlflow(stage_dir: Path, tmp_path: Path) -> None:
    result = run_python(
        """
        import json, sys
        from pipeline import tracking
        from pipeline.params import load_section
        from pipeline.synthesize import SynthesizeParams

        params = load_section("synthesize", SynthesizeParams)
        with tracking.stage_run("synthesize", params, "synthesize_run.json") as run:
            tracking.log_metric("foreground_share", 0.1)
            tracking.log_artifact("params.yaml")
        print(json.dumps({"mlflow_imported": "mlflow" in sys.modules, "tracked": run.tracked}))
        """,
        cwd=stage_dir,
        env={"SEGBISECT_TRACKING": "off", "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"mlflow_imported": False, "tracked": False}
    assert result.stderr == ""
    assert not (stage_dir / "mlflow.db").exists() and not (stage_dir / "mlruns").exists()
    assert json.loads((stage_dir / "synthesize_run.json").read_text())["run_id"] is None


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only for real: mode 0444, and for root (whom modes do not stop) the immutable attribute too."""
    mode = path.stat().st_mode
    path.chmod(0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("running as root, where mode 0444 does not stop writes, and chattr +i is unavailable here")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def sqlite_store(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE experiments (id INTEGER)")
    return path


def test_a_readonly_sqlite_store_costs_one_warning_and_the_stage_runs_untracked(
    stage_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = sqlite_store(stage_dir / "mlflow.db")
    before = db.read_bytes()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with read_only(db):
        record, run, _ = run_a_stage(stage_dir)
    assert_untracked(record, run)
    assert error_lines(capsys.readouterr().err) == [
        "warning: MLflow store sqlite:///mlflow.db unusable (attempt to write a readonly database): "
        "this stage runs untracked"
    ]
    assert db.read_bytes() == before


def test_a_sqlite_store_in_a_missing_folder_costs_one_warning(
    stage_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = stage_dir / "no-such-folder"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}/mlflow.db")
    record, run, _ = run_a_stage(stage_dir)
    assert_untracked(record, run)
    assert f"(folder {missing} does not exist): this stage runs untracked" in capsys.readouterr().err
    assert not missing.exists()


def test_a_writable_sqlite_store_passes_the_probe(stage_dir: Path) -> None:
    db = sqlite_store(stage_dir / "mlflow.db")
    assert tracking.probe_store("sqlite:///mlflow.db") is None
    assert tracking.probe_store(f"sqlite:///{stage_dir}/new.db") is None
    with sqlite3.connect(db) as conn:  # the probe's write was rolled back
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    assert tables == ["experiments"]
    assert sorted(p.name for p in stage_dir.iterdir()) == ["mlflow.db", "params.yaml"]


class _Handler(BaseHTTPRequestHandler):
    """Answers 500 to everything, or only to MLflow's API when the server is `healthy`."""

    healthy = False

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        ok = self.healthy and self.path.rstrip("/").endswith("/health")
        body = b"OK" if ok else b"Internal Server Error"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_server(healthy: bool) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"healthy": healthy})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_mlflow_server_answering_500_costs_one_warning(
    stage_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with http_server(healthy=False) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        runs_untracked_with_one_warning(stage_dir, capsys, uri, f"HTTP 500 from {uri}/health")
    assert {name: os.environ[name] for name in HTTP_SETTINGS} == tracking.HTTP_DEFAULTS


def test_a_closed_port_costs_one_warning(
    stage_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs_untracked_with_one_warning(stage_dir, capsys, uri, f"no answer from {uri}/health: Connection refused")


def runs_untracked_with_one_warning(stage_dir: Path, capsys: pytest.CaptureFixture[str], uri: str, reason: str) -> None:
    """The stage succeeds untracked within seconds, after exactly one warning naming the store and the reason."""
    record, run, seconds = run_a_stage(stage_dir)
    assert_untracked(record, run)
    assert seconds < 15
    assert error_lines(capsys.readouterr().err) == [
        f"warning: MLflow store {uri} unusable ({reason}): this stage runs untracked"
    ]


def test_a_server_speaking_no_http_costs_one_warning(
    stage_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"garbage\r\n\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        record, run, _ = run_a_stage(stage_dir)
        thread.join(5)
    assert_untracked(record, run)
    assert error_lines(capsys.readouterr().err) == [
        f"warning: MLflow store {uri} unusable (no HTTP answer from {uri}/health (BadStatusLine)): "
        "this stage runs untracked"
    ]


@pytest.mark.e2e  # waits out the probe's timeout
def test_a_server_that_never_answers_costs_seconds(
    stage_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        record, run, seconds = run_a_stage(stage_dir)
    assert_untracked(record, run)
    assert tracking.PROBE_TIMEOUT_S <= seconds < 15
    assert "unusable (no answer from" in capsys.readouterr().err


def test_user_http_settings_are_kept(stage_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    tracking.probe_store(f"http://127.0.0.1:{closed_port()}")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == tracking.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


@pytest.mark.e2e  # imports MLflow in a fresh process
def test_mlflow_failing_after_the_probe_exits_75_naming_the_store(stage_dir: Path) -> None:
    """/health answers, MLflow's API answers 500: the stage cannot be tracked as asked, and says so in one line."""
    with http_server(healthy=True) as uri:
        start = time.monotonic()
        result = run_python(
            """
            from pipeline import tracking
            from pipeline.errors import run_stage
            from pipeline.io import atomic_dir
            from pipeline.params import load_section
            from pipeline.synthesize import SynthesizeParams

            def main():
                params = load_section("synthesize", SynthesizeParams)
                with atomic_dir("out") as out, tracking.stage_run("synthesize", params, out / "run.json"):
                    (out / "result.txt").write_text("done")

            run_stage(main)
            """,
            cwd=stage_dir,
            env={"MLFLOW_TRACKING_URI": uri},
        )
        seconds = time.monotonic() - start
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow store {uri}: "), result.stderr
    assert lines[0].endswith("(environment fault)")
    assert seconds < 60
    assert sorted(p.name for p in stage_dir.iterdir()) == ["params.yaml"], "a half-written output was left"


# --- temp leftovers of killed stages -----------------------------------------------------------------------------


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = dead_pid()
    stale_dir = tmp_path / f".models.{dead}.abc_12x.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub/model.keras").write_bytes(b"half")
    stale_file = tmp_path / f".models.{dead}.k3j9q0.tmp"
    stale_file.write_text("half")
    live = tmp_path / f".models.{os.getpid()}.zz9.tmp"  # a write in progress: its process runs
    live.mkdir()
    keep = [
        live,
        tmp_path / f".models.json.{dead}.abc.tmp",  # another target's temp
        tmp_path / ".models.abcd1234",  # not ours to judge (no pid)
        tmp_path / ".gitignore",
    ]
    for path in keep[1:]:
        path.write_text("x")

    with atomic_dir(tmp_path / "models") as out:
        (out / "model.keras").write_text("new")
    assert not stale_dir.exists() and not stale_file.exists()
    assert all(path.exists() for path in keep)
    assert (tmp_path / "models/model.keras").read_text() == "new"
    assert remove_stale_temps(tmp_path / "models") == []


def test_a_killed_stage_leaves_an_ignored_temp_that_the_next_run_removes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    killed = run_python(
        """
        import os, signal
        from pipeline.io import atomic_dir, atomic_file

        with atomic_dir("data/synthetic") as out, atomic_file("data/summary.json") as tmp:
            (out / "images").mkdir()
            (out / "images" / "0001.png").write_bytes(b"partial")
            tmp.write_text("{")
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        cwd=repo,
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in (repo / "data").iterdir())
    assert len(leftovers) == 2 and all(name.endswith(".tmp") for name in leftovers), leftovers
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == "?? .gitignore\n"

    with atomic_dir(repo / "data/synthetic") as out:
        (out / "done").write_text("")
    with atomic_file(repo / "data/summary.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["summary.json", "synthetic"]


def test_gitignore_hides_temps_and_no_real_dotfile(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    temps = [
        ".models.1234.abcd_12.tmp",
        ".models.1234.abcd_12.tmp/model.keras",
        "data/.synthetic.99.x1y2z3.tmp",
        "reports/.metrics.json.4242.k3j_2a.tmp",
        "data/processed/.spec.json.7.q1w2e3.tmp",
        ".train-backup/0123456789abcdef/latest.json",
    ]
    real = [
        ".dvc",
        ".dvc/config",
        ".dvc/.gitignore",
        ".gitignore",
        ".ci",
        ".ci/run",
        ".pre-commit-config.yaml",
        ".dvcignore",
        "data/.gitignore",
        "pipeline/train.py",
        "reports/metrics.json",
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *temps, *real],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    matched = {}
    for line in result.stdout.splitlines():
        source, path = line.split("\t")
        matched[path] = bool(source.strip(":"))
    assert {path: matched[path] for path in temps} == dict.fromkeys(temps, True)
    assert {path: matched[path] for path in real} == dict.fromkeys(real, False)


def test_every_dvc_output_is_ignored_by_the_committed_gitignores(tmp_path: Path) -> None:
    """DVC adds a missing entry for each output it writes: committed, the quick start's `dvc repro` edits none."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for name in (".gitignore", "data/.gitignore", "reports/.gitignore"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outputs = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in stages.values()
        for field in ("outs", "metrics", "plots")
        for entry in stage.get(field, [])
    ]
    assert len(outputs) >= 8, outputs
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *outputs],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    unignored = [line.split("\t")[1] for line in result.stdout.splitlines() if line.startswith("::")]
    assert unignored == []


# --- whole stages, as DVC runs them ------------------------------------------------------------------------------


def stage(repo: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", f"pipeline.{name}"], cwd=repo, env={**os.environ, **env}, capture_output=True, text=True
    )


@pytest.mark.e2e
def test_stages_run_untracked_when_the_sqlite_store_is_readonly(tmp_path: Path) -> None:
    repo = make_pipeline_repo(tmp_path / "repo")
    db = sqlite_store(tmp_path / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    with read_only(db):
        for name in ("synthesize", "prepare"):
            result = stage(repo, name, env)
            assert result.returncode == 0, result.stderr
            warnings = [line for line in error_lines(result.stderr) if line.startswith("warning: MLflow store")]
            assert warnings == [
                f"warning: MLflow store sqlite:///{db} unusable (attempt to write a readonly database): "
                "this stage runs untracked"
            ]
    assert json.loads((repo / "data/prepared/prepare_run.json").read_text())["run_id"] is None
    assert (repo / "reports/prepare_summary.json").exists()


@pytest.mark.e2e
def test_the_whole_pipeline_untracked_trains_the_same_model(
    tmp_path: Path, threshold_bisection: ThresholdBisection
) -> None:
    """`SEGBISECT_TRACKING=off dvc repro`: no MLflow store, run files with a null run id, and the training history
    of the same configuration reproduced tracked (the shared bisection's GOOD, built once per run), which logged
    its train run."""
    repo = make_pipeline_repo(tmp_path / "repo", THRESHOLD_GOOD)
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db", "SEGBISECT_TRACKING": "off"}
    result = subprocess.run([PYTHON, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MLflow store" not in result.stderr
    assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()
    for run_file in (
        "data/synthetic/synthesize_run.json",
        "data/prepared/prepare_run.json",
        "data/processed/preprocess_run.json",
        "models/train_run.json",
        "reports/evaluate/evaluate_run.json",
    ):
        record = json.loads((repo / run_file).read_text())
        assert record["run_id"] is None and record["numerics"]["tensorflow"], run_file
    assert json.loads((repo / "reports/metrics.json").read_text())["mean_iou"] >= 0

    tracked = threshold_bisection.repo
    assert (tracked / "reports/train_history.csv").read_text() == (repo / "reports/train_history.csv").read_text()
    run_id = json.loads((tracked / "models/train_run.json").read_text())["run_id"]
    client = MlflowClient(threshold_bisection.uri)
    assert client.get_run(run_id).data.tags["stage"] == "train"
    assert "train_history.csv" in {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.e2e
def test_a_stage_on_a_full_disk_exits_75_and_leaves_nothing(tmp_path: Path) -> None:
    """A real ENOSPC: the stage's output folder is a 64 KiB tmpfs (a private mount namespace; root only)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a private tmpfs mount")
    repo = make_pipeline_repo(tmp_path / "repo")
    (repo / "data").mkdir()
    script = f"mount -t tmpfs -o size=64k tmpfs data && exec {PYTHON} -m pipeline.synthesize; echo mount-failed >&2"
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=repo,
        env={**os.environ, "SEGBISECT_TRACKING": "off"},
        capture_output=True,
        text=True,
    )
    if "mount-failed" in result.stderr or "unshare failed" in result.stderr:
        pytest.skip(f"no private tmpfs here: {result.stderr.strip()}")
    assert result.returncode == EXIT_ENVIRONMENT, result.stderr
    lines = error_lines(result.stderr)
    assert lines == ["error: while writing data/synthetic: No space left on device [ENOSPC] (environment fault)"], lines
    assert "Traceback" not in result.stderr

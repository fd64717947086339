"""A toy DVC project for segbisect tests: four stdlib-only stages, each `dvc repro` in about a second.

Known ways to get the all-zero symptom (foreground_fraction == 0, the toy's own check in its pyproject.toml),
one or more per stage:
- prepare.fg_value != 255 (foreground label read as another value)
- preprocess.mask_interp: bilinear (masks blurred below 1)
- train.lr > 1 (collapse), or train.lr > 0.5 together with train.momentum > 0.9 (two-unit interaction)
- evaluate.postprocess: threshold together with evaluate.threshold >= 0.99 (two units in one stage)
- preprocess.scale: 0.5 together with evaluate.margin: 0.3 (an interaction across stages)
- train crashes when prepare.n > train.max_n (an untestable hybrid: BAD's data with GOOD's train)
Faults of the environment (killed, hung, slow, full disk) are injected through TOY_FAULT (see `fault` in common.py).
Harmless changes: prepare.n up to 45, train.epochs, comments in stage scripts.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PARAMS: dict[str, Any] = {
    "prepare": {"n": 40, "fg_value": 255},
    "preprocess": {"scale": 1.0, "mask_interp": "nearest"},
    "train": {"lr": 0.1, "momentum": 0.5, "epochs": 5, "max_n": 45},
    "evaluate": {"postprocess": "argmax", "threshold": 0.5, "margin": 0.0},
}

COMMON = '''"""Helpers shared by the toy stages."""
import json
import os
import signal
import sys
import time

import yaml


def params(section):
    fault(section)
    with open("params.yaml") as f:
        return yaml.safe_load(f)[section]


def fault(stage):
    """A fault of the environment, as tests inject it: TOY_FAULT=<stage>:<kind>[:<file>] (with a file, only
    while the file does not exist yet: the fault happens once). Like the real pipeline, the toy reports a
    fault of its environment with exit status 75.
    """
    spec = os.environ.get("TOY_FAULT", "").split(":")
    if spec[0] != stage:
        return
    if len(spec) > 2:
        if os.path.exists(spec[2]):
            return
        open(spec[2], "w").close()
    if spec[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if spec[1] == "hang":
        time.sleep(600)
    if spec[1] == "slow":
        time.sleep(30)
        return
    target = "/dev/full" if spec[1] == "full" else "filler.bin"
    try:
        with open(target, "wb") as out:
            for _ in range(64):
                out.write(bytes(1 << 20))
                out.flush()
    except OSError as exc:
        print(f"error: {target}: {exc.strerror}", file=sys.stderr)
        sys.exit(75)


def read(path):
    with open(path) as f:
        return json.load(f)


def write(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
'''

STAGES = {
    "prepare": """from common import params, write

p = params("prepare")
x = [(i % 10) / 10 for i in range(p["n"])]
raw = [255 if v >= 0.5 else 0 for v in x]
write("data/prepared.json", {"x": x, "y": [1 if r == p["fg_value"] else 0 for r in raw]})
""",
    "preprocess": """from common import params, read, write

p = params("preprocess")
d = read("data/prepared.json")
y = d["y"] if p["mask_interp"] == "nearest" else [v * 0.5 for v in d["y"]]
write("data/processed.json", {"x": [v * p["scale"] for v in d["x"]], "y": [1 if v >= 1 else 0 for v in y]})
""",
    "train": """import sys

from common import params, read, write

p = params("train")
d = read("data/processed.json")
if len(d["x"]) > p["max_n"]:
    sys.exit("train: more samples than max_n")
fg = [x for x, y in zip(d["x"], d["y"]) if y == 1]
bg = [x for x, y in zip(d["x"], d["y"]) if y == 0]
collapsed = not fg or not bg or p["lr"] > 1 or (p["lr"] > 0.5 and p["momentum"] > 0.9)
threshold = 1e9 if collapsed else (sum(fg) / len(fg) + sum(bg) / len(bg)) / 2
write("model/model.json", {"threshold": threshold, "epochs": p["epochs"], "collapsed": collapsed})
""",
    "evaluate": """import math
import os

from common import params, read, write

p = params("evaluate")
d = read("data/processed.json")
m = read("model/model.json")
scores = [x - m["threshold"] for x in d["x"]]
if p["postprocess"] == "argmax":
    pred = [1 if s > p["margin"] else 0 for s in scores]
else:
    pred = [1 if 1 / (1 + math.exp(-10 * s)) > p["threshold"] else 0 for s in scores]
fg = sum(pred) / len(pred)
acc = sum(int(a == b) for a, b in zip(pred, d["y"])) / len(pred)
write("metrics.json", {"foreground_fraction": fg, "accuracy": acc, "per_class": {"foreground": fg}})
os.makedirs("eval/plots", exist_ok=True)
write("eval/diagnostics.json", {"cause": "collapsed model" if m["collapsed"] else ("none" if fg else "threshold")})
svg = '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="10"><rect width="{:.0f}" height="10"/></svg>'
bar = svg.format(100 * fg)
with open("eval/plots/foreground.svg", "w") as out:
    out.write(bar)
""",
}

DVC_YAML = {
    "stages": {
        "prepare": {
            "cmd": "python prepare.py",
            "deps": ["prepare.py", "common.py"],
            "params": ["prepare.n", "prepare.fg_value"],
            "outs": ["data/prepared.json"],
        },
        "preprocess": {
            "cmd": "python preprocess.py",
            "deps": ["preprocess.py", "data/prepared.json"],
            "params": ["preprocess"],
            "outs": ["data/processed.json"],
        },
        "train": {
            "cmd": "python train.py",
            "deps": ["train.py", "common.py", "data/processed.json"],
            "params": ["train"],
            "outs": ["model"],
        },
        "evaluate": {
            "cmd": "python evaluate.py",
            "deps": ["evaluate.py", "common.py", "data/processed.json", "model"],
            "params": ["evaluate"],
            "outs": ["eval"],
            "metrics": [{"metrics.json": {"cache": False}}],
        },
    },
    "plots": ["eval/plots"],
}


# The toy's segbisect settings: its own symptom and evidence file, as any project names them.
PYPROJECT = """[tool.segbisect]
fail-if = "foreground_fraction == 0"
diagnostics = "eval/diagnostics.json"
"""


def bisect(repo: Path, *args: str, mlflow: bool = False) -> tuple[int, dict[str, Any], str]:
    """Run `segbisect ... --json` in-process; returns exit code, the JSON verdict and the human output."""
    from typer.testing import CliRunner

    from segbisect.cli import app

    extra = [] if mlflow else ["--no-mlflow"]
    result = CliRunner().invoke(app, [*args, "--repo", str(repo), "--json", *extra])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout), result.stderr


def unit_names(report: dict[str, Any]) -> list[str]:
    return sorted(u["name"] for u in report["culprit"]["units"])


def sh(repo: Path, *args: str) -> str:
    """Run a command in `repo` and return its stdout (raises on failure)."""
    return subprocess.run(list(args), cwd=repo, check=True, capture_output=True, text=True).stdout


def dvc(repo: Path, *args: str) -> str:
    return sh(repo, sys.executable, "-m", "dvc", *args)


def write_params(repo: Path, params: dict[str, Any]) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_toy_repo(dest: Path) -> Path:
    """git + DVC repo with the toy pipeline reproduced and committed (dvc.lock included) on branch main."""
    dest.mkdir(parents=True)
    (dest / "common.py").write_text(COMMON)
    for name, code in STAGES.items():
        (dest / f"{name}.py").write_text(code)
    (dest / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    write_params(dest, PARAMS)
    (dest / "pyproject.toml").write_text(PYPROJECT)
    (dest / ".gitignore").write_text("__pycache__/\nmlflow.db\n/segbisect-results/\n")
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "git", "config", "user.email", "toy@example.com")
    sh(dest, "git", "config", "user.name", "toy")
    dvc(dest, "init", "-q")
    dvc(dest, "config", "core.analytics", "false")
    dvc(dest, "repro", "-q")
    commit(dest, "good toy pipeline")
    sh(dest, "git", "tag", "good")
    return dest


def commit(repo: Path, message: str) -> str:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", message)
    return sh(repo, "git", "rev-parse", "HEAD").strip()


def bad_commit(
    repo: Path, params: dict[str, Any] | None = None, files: dict[str, str] | None = None, tag: str = "bad"
) -> str:
    """Commit a BAD configuration on a side branch (params overlay and file edits), then return to main."""
    sh(repo, "git", "checkout", "-q", "-b", f"branch-{tag}")
    if params:
        current = yaml.safe_load((repo / "params.yaml").read_text())
        for section, values in params.items():
            current[section].update(values)
        write_params(repo, current)
    for name, text in (files or {}).items():
        (repo / name).write_text(text)
    sha = commit(repo, f"bad: {tag}")
    sh(repo, "git", "tag", tag)
    sh(repo, "git", "checkout", "-q", "main")
    return sha


def tree_state(repo: Path, skip: tuple[str, ...] = (".git/", ".dvc/cache/")) -> dict[str, str]:
    """Every file's bytes (hashed) outside .git and the DVC cache (shared on purpose, it only grows),
    plus git's view: status, index, refs, stash, worktrees."""
    state = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_file() and not rel.startswith(skip):
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    for name, args in {
        "status": ["status", "--porcelain", "--ignored"],
        "index": ["ls-files", "-s"],
        "refs": ["for-each-ref"],
        "stash": ["stash", "list"],
        "head": ["rev-parse", "HEAD"],
        "worktrees": ["worktree", "list", "--porcelain"],
    }.items():
        state[f"git {name}"] = sh(repo, "git", *args)
    return state

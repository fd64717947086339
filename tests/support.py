"""The WiSe project's test helpers: tiny pipeline repositories, processed splits, the casebook's scripts, folders
built once per pytest run, and the shared threshold bisection (its fixtures are in conftest.py)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from filelock import FileLock

from pipeline.params import SPLITS
from pipeline.processed import SPEC_FILE, Spec, SplitWriter, batches, encode_png, example
from pipeline.scratch import TINY_PARAMS, deep_merge, git, make_repo
from segbisect_toy import tree_state


def make_pipeline_repo(dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A fresh git + DVC repository holding this project's pipeline with tiny params, committed."""
    return make_repo(dest, deep_merge(TINY_PARAMS, overrides or {}), message="tiny pipeline")


def dvc_repro(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", "repro", *args], cwd=repo, capture_output=True, text=True)


def run_stage(repo: Path, stage: str) -> subprocess.CompletedProcess[str]:
    """Run one stage's module directly, as DVC would, to see its exit code and message."""
    return subprocess.run([sys.executable, "-m", f"pipeline.{stage}"], cwd=repo, capture_output=True, text=True)


def two_class_spec(size: int, ignore_index: int) -> dict[str, Any]:
    """spec.json's fields as preprocess writes them for background/foreground images in [0, 1], without splits."""
    return {
        "image_size": size,
        "num_classes": 2,
        "class_names": ["background", "foreground"],
        "ignore_index": ignore_index,
        "normalization": {"method": "unit"},
        "image_interpolation": "bilinear",
        "mask_interpolation": "nearest",
    }


def write_processed(
    folder: Path, fields: dict[str, Any], splits: dict[str, tuple[np.ndarray, np.ndarray]], shard_bytes: int = 1 << 20
) -> Spec:
    """data/processed as preprocess writes it, from arrays: shards of each split (stems `<split>000`, ...) and
    spec.json with `fields`; a split not given is written empty."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in SPLITS:
        writer = SplitWriter(folder, name, shard_bytes)
        images, masks = splits.get(name, (np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8)))
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            writer.add(example(f"{name}{i:03d}", encode_png(image), encode_png(mask)))
        written[name] = writer.close()
    spec = Spec(**fields, splits=written)
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_json()))
    return spec


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A whole processed split in numpy, in stem order, as the tests compare it (the stages themselves stream)."""
    spec = Spec.load(folder)
    stems, images, masks = [], [], []
    for batch_stems, batch_images, batch_masks in batches(spec, folder, split, 64):
        stems += batch_stems
        images.append(batch_images)
        masks.append(batch_masks)
    size = spec.image_size
    if not stems:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8), []
    order = np.argsort(stems)
    return np.concatenate(images)[order], np.concatenate(masks)[order], [stems[i] for i in order]


@functools.cache
def load_script(path: Path) -> ModuleType:
    """A script in a folder that is no package (examples/zero-predictions has a dash in its name), by its path.
    Its folder goes on sys.path, as when it runs as a script, so it imports its siblings the same way. Loaded once
    per process: the test modules that load the same script share its module (and its dataclasses)."""
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This pytest run's temporary folder, the same for all its xdist workers (each worker's own is a child)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name` that `build` fills once per pytest run, by whichever xdist worker asks first: the others
    wait on a file lock and reuse it. A build that failed is not started again by the next worker, which fails
    with the same message: a broken build costs its minutes once."""
    root = session_folder(tmp_path_factory)
    folder, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(root / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"{name}: built by another worker, which failed: {failed.read_text()}", pytrace=False)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                build(folder)
            except BaseException as exc:  # pytest-timeout's failure and Ctrl-C too: never rebuilt in this run
                failed.write_text(f"{type(exc).__name__}: {exc}")
                raise
            done.touch()
    return folder


CASEBOOK_RUNNER = Path(__file__).resolve().parents[1] / "examples" / "zero-predictions" / "run_casebook.py"


def write_params(repo: Path, overlay: dict[str, Any]) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(path.read_text()), overlay), sort_keys=False))


@dataclass
class ThresholdBisection:
    """A reproduced tiny pipeline (tag `good`), a BAD branch (tag `bad`) and one real `segbisect good bad` on it."""

    root: Path
    repo: Path
    uri: str
    returncode: int
    report: dict[str, Any]
    output: str
    before: dict[str, str]
    after: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ThresholdBisection:
        fields = json.loads(text)
        return cls(**{**fields, "root": Path(fields["root"]), "repo": Path(fields["repo"])})


BISECTION_RECORD = "bisection.json"
# The shared bisection's GOOD: the tiny pipeline, its evaluate counting a pixel as foreground from probability 1e-6.
THRESHOLD_GOOD: dict[str, Any] = {"evaluate": {"postprocess": "threshold", "threshold": 1e-6}}


def run_threshold_bisection(root: Path) -> None:
    """The bisection behind `threshold_bisection`, recorded in `root`.

    GOOD counts a pixel as foreground when its softmax probability reaches 1e-6 (nearly every pixel, whatever
    the one-epoch model learnt); BAD asks for 1.0, which no pixel reaches: the all-zero symptom from one
    evaluate param. `n_overlays` is a harmless second difference the search must rule out.
    """
    root.mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    repo = make_pipeline_repo(root / "repo", THRESHOLD_GOOD)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, env=env, check=True, capture_output=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "GOOD: tiny pipeline, reproduced")
    git(repo, "tag", "good")
    git(repo, "checkout", "-q", "-b", "threshold")
    write_params(repo, {"evaluate": {"threshold": 1.0, "n_overlays": 1}})
    git(repo, "commit", "-q", "-am", "BAD: evaluate threshold 1.0")
    git(repo, "tag", "bad")
    git(repo, "checkout", "-q", "main")
    before = tree_state(repo)
    segbisect = Path(sys.executable).parent / "segbisect"
    result = subprocess.run(
        [
            str(segbisect),
            "good",
            "bad",
            "--repo",
            str(repo),
            "--results",
            str(root / "results"),
            "--jobs",
            "2",
            "--json",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    bisection = ThresholdBisection(
        root, repo, uri, result.returncode, report, result.stderr[-4000:], before, tree_state(repo)
    )
    (root / BISECTION_RECORD).write_text(bisection.to_json())

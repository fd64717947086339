"""Run one pipeline stage (`python -m pipeline.<stage>`) with its fixed costs instrumented.

Used by fixed_costs.py as a stage's DVC `cmd` in a scratch copy of the pipeline:
    python bench/_stage_profile.py STAGE OUT.json
Records (wall clock, epoch seconds) the process start, the first import of tensorflow/keras and of mlflow,
the time spent inside MLflow calls (run start/end, params, metrics, artifacts, model logging, experiment
lookup), and the process end. Behaviour of the stage is unchanged.
"""

from __future__ import annotations

import builtins
import json
import os
import runpy
import sys
import time

T0 = time.time()
sys.path.insert(0, os.getcwd())  # as `python -m`: the stage's own checkout first
STAGE, OUT = sys.argv[1], sys.argv[2]
TIMES = {"tf_import": 0.0, "mlflow_import": 0.0, "mlflow_calls": 0.0}
WATCH = {"tensorflow": "tf_import", "keras": "tf_import", "mlflow": "mlflow_import"}
MLFLOW_FUNCS = (
    "start_run",
    "end_run",
    "log_params",
    "log_param",
    "log_metrics",
    "log_metric",
    "log_artifact",
    "log_artifacts",
    "set_tag",
    "set_tags",
    "log_figure",
    "log_dict",
    "log_image",
    "log_text",
    "set_experiment",
    "set_tracking_uri",
    "get_experiment_by_name",
    "create_experiment",
    "log_model",
)
_depth = {"import": 0, "mlflow": 0}
_real_import = builtins.__import__
_patched: set[int] = set()


def _timed_mlflow(fn):
    def wrapper(*args, **kwargs):
        if _depth["mlflow"]:
            return fn(*args, **kwargs)
        _depth["mlflow"] += 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES["mlflow_calls"] += time.perf_counter() - start
            _depth["mlflow"] -= 1

    wrapper.__wrapped_for_bench__ = True
    return wrapper


def _patch_mlflow() -> None:
    for name in ("mlflow", "mlflow.tracking.fluent", "mlflow.keras", "mlflow.tracking._tracking_service.utils"):
        module = sys.modules.get(name)
        if module is None or id(module) in _patched:
            continue
        _patched.add(id(module))
        for func in MLFLOW_FUNCS:
            fn = getattr(module, func, None)
            if callable(fn) and not getattr(fn, "__wrapped_for_bench__", False):
                setattr(module, func, _timed_mlflow(fn))


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    root = name.split(".")[0] if level == 0 else ""
    key = WATCH.get(root)
    # imports made from inside an MLflow call (mlflow imports lazily) count as MLflow calls, not twice
    if key is None or _depth["import"] or _depth["mlflow"] or name in sys.modules:
        module = _real_import(name, globals, locals, fromlist, level)
    else:
        _depth["import"] += 1
        start = time.perf_counter()
        try:
            module = _real_import(name, globals, locals, fromlist, level)
        finally:
            TIMES[key] += time.perf_counter() - start
            _depth["import"] -= 1
    if root == "mlflow" and not _depth["import"]:
        _patch_mlflow()
    return module


builtins.__import__ = _import
code = 0
try:
    runpy.run_module(f"pipeline.{STAGE}", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump({"stage": STAGE, "start": T0, "end": time.time(), **{k: round(v, 3) for k, v in TIMES.items()}}, fh)
sys.exit(code)

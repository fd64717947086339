"""Shared helpers for the benchmarks: machine/load description, result writing, the tiny pipeline repo."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.scratch import TINY_PARAMS, deep_merge, make_repo

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent


def loadavg() -> str:
    """`uptime`-style 1/5/15 minute load averages (the machine is shared: every figure carries its load)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def stage_env(tracking_uri: str | None = None) -> dict[str, str]:
    """Environment for `dvc repro`/`segbisect`: this venv first on PATH (dvc.yaml runs `python -m ...`)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = env.get("TF_CPP_MIN_LOG_LEVEL", "2")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A Markdown table (pandas' to_markdown needs `tabulate`; this does not)."""
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        out.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(out) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_results(
    name: str, rows: list[dict[str, Any]], meta: dict[str, Any], markdown: str, out: Path = RESULTS
) -> None:
    """<out>/<name>.csv (pandas), <name>.json (rows + meta) and <name>.md."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown)


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def tiny_repo(dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The tests' tiny pipeline repository (`pipeline.scratch.make_repo` with `TINY_PARAMS`)."""
    return make_repo(dest, deep_merge(TINY_PARAMS, overrides or {}), message="tiny pipeline")

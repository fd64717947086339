"""The machine that runs the hybrids: what selects floating-point kernels, so every outcome is tied to it.

Numeric libraries (oneDNN, BLAS) dispatch on the CPU's instruction sets, the variables that cap or switch
them, the number of threads that split a reduction, and their own versions, so the same configuration can give
results that differ in the last bits on another machine or after an upgrade. A verdict that compares a run
recorded in one such environment with hybrids run in another may rest on that difference rather than on the
change: a journaled hybrid is reused only where `environment_differences` finds none. The host name is
recorded but never compared: two identical nodes compute alike.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any

# The CPU flags numeric libraries choose kernels by: SIMD widths, fused multiply-add, reduced-precision units.
KERNEL_FLAGS = re.compile(r"^(sse4_[12]|avx\w*|fma|f16c|amx\w*)$")
# Environment variables that select, cap or switch numeric kernels, or the threads a reduction is split over.
NUMERIC_VARIABLES = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "TF_XLA_FLAGS",
    "XLA_FLAGS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "KERAS_BACKEND",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_TF32_OVERRIDE",
    "CUBLAS_WORKSPACE_CONFIG",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "NPY_DISABLE_CPU_FEATURES",
    "PYTHONHASHSEED",
)
# The distributions that run stages or compute in them, named in a difference; a change in any other installed
# distribution shows as "other installed packages".
LIBRARIES = (
    "dvc",
    "numpy",
    "scipy",
    "pandas",
    "pillow",
    "scikit-learn",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "torch",
    "jax",
    "jaxlib",
)
# The fields of `describe` that decide the numbers a stage computes (all but the host).
NUMERIC_FIELDS = ("cpu", "cpu_flags", "cpus", "gpus", "python", "variables", "libraries", "packages")
# Tags a stage run may carry about where it ran (the pipeline's stages write them).
RECORDED_HOST, RECORDED_CPU = "numerics.host", "numerics.cpu"
CPU_INFO = Path("/proc/cpuinfo")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


@functools.cache
def describe() -> dict[str, Any]:
    """Host and numeric environment of this process's machine: CPU model, kernel-selecting flags, usable CPUs,
    GPUs, Python, the numeric variables set, the libraries' versions and a digest of every other distribution.
    """
    fields: dict[str, str] = {}
    try:
        for line in CPU_INFO.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = sorted(f for f in fields.get("flags", "").split() if KERNEL_FLAGS.match(f))
    installed = _installed()
    others = sorted(f"{name}=={version}" for name, version in installed.items() if name not in LIBRARIES)
    return {
        "host": socket.gethostname(),
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": flags,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": _gpus(),
        "python": platform.python_version(),
        "variables": {name: os.environ[name] for name in NUMERIC_VARIABLES if name in os.environ},
        "libraries": {name: installed[name] for name in LIBRARIES if name in installed},
        "packages": hashlib.sha256("\n".join(others).encode()).hexdigest()[:16],
    }


def environment_differences(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """How the numeric environment an attempt recorded differs from `here` (what `describe` says where hybrids run
    now), one item per difference; fields an earlier segbisect did not record count as different (nothing says they
    matched).
    """
    missing = sorted(key for key in NUMERIC_FIELDS if key not in recorded)
    found = [f"not recorded: {', '.join(missing)}"] if missing else []
    for key in ("cpu", "cpus", "gpus", "python"):
        if key in recorded and recorded[key] != here[key]:
            found.append(f"{key} {recorded[key]!r} (here {here[key]!r})")
    if "cpu_flags" in recorded and recorded["cpu_flags"] != here["cpu_flags"]:
        theirs, ours = set(recorded["cpu_flags"] or ()), set(here["cpu_flags"])
        found.append(f"cpu flags only there: {_words(theirs - ours)}; only here: {_words(ours - theirs)}")
    found += _entries(recorded.get("variables"), here["variables"], "{}={}", "unset")
    found += _entries(recorded.get("libraries"), here["libraries"], "{} {}", "not installed")
    if "packages" in recorded and recorded["packages"] != here["packages"]:
        found.append("other installed packages")
    return found


def differences(tags: dict[str, str]) -> list[str]:
    """How a recorded run's host and CPU differ from this machine's (nothing when it did not record them)."""
    here = describe()
    found = []
    for tag, key in ((RECORDED_HOST, "host"), (RECORDED_CPU, "cpu")):
        if tags.get(tag) and tags[tag] != here[key]:
            found.append(f"{key} '{tags[tag]}' (here: '{here[key]}')")
    return found


def _entries(recorded: Any, here: dict[str, str], shown: str, absent: str) -> list[str]:
    """The names whose values differ between two mappings (not recorded: said already; not a mapping: none match)."""
    if recorded is None:
        return []
    theirs = recorded if isinstance(recorded, dict) else {}
    return [
        f"{shown.format(name, theirs.get(name) or absent)} (here {here.get(name) or absent})"
        for name in sorted(theirs.keys() | here.keys())
        if theirs.get(name) != here.get(name)
    ]


def _words(flags: set[str]) -> str:
    return " ".join(sorted(flags)) or "none"


def _installed() -> dict[str, str]:
    """Installed distributions by normalized name, read from their `name-version.dist-info` folders' names, as
    the packaging specifications name them: reading every distribution's metadata instead takes half a second.
    """
    found: dict[str, str] = {}
    for entry in filter(None, sys.path):
        folder = Path(entry)
        if not folder.is_dir():
            continue
        for info in folder.glob("*.dist-info"):
            name, _, version = info.name.removesuffix(".dist-info").partition("-")
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), version)
    return found


def _gpus() -> list[str]:
    """The NVIDIA GPUs' models as the driver lists them (none without the driver: stages compute on the CPU)."""
    models = []
    for info in sorted(NVIDIA_GPUS.glob("*/information")):
        with open(info, encoding="utf-8", errors="replace") as text:
            models += [line.partition(":")[2].strip() for line in text if line.startswith("Model:")]
    return models

"""The machine that runs the hybrids: what selects floating-point kernels, so every outcome is tied to it.

Numeric libraries (oneDNN, BLAS) dispatch on the CPU's instruction sets, so the same configuration can give
results that differ in the last bits on another CPU. A verdict that compares a run recorded on one machine
with hybrids run on another may rest on that difference rather than on the change.
"""

from __future__ import annotations

import functools
import platform
import re
import socket
from pathlib import Path
from typing import Any

# The CPU flags numeric libraries choose kernels by: SIMD widths, fused multiply-add, reduced-precision units.
KERNEL_FLAGS = re.compile(r"^(sse4_[12]|avx\w*|fma|f16c|amx\w*)$")
# Tags a stage run may carry about where it ran (the pipeline's stages write them).
RECORDED_HOST, RECORDED_CPU = "numerics.host", "numerics.cpu"
CPU_INFO = Path("/proc/cpuinfo")


@functools.cache
def describe() -> dict[str, Any]:
    """Host, CPU model, kernel-selecting CPU flags and Python version of this process's machine."""
    fields: dict[str, str] = {}
    try:
        for line in CPU_INFO.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = sorted(f for f in fields.get("flags", "").split() if KERNEL_FLAGS.match(f))
    return {
        "host": socket.gethostname(),
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": flags,
        "python": platform.python_version(),
    }


def differences(tags: dict[str, str]) -> list[str]:
    """How a recorded run's host and CPU differ from this machine's (nothing when it did not record them)."""
    here = describe()
    found = []
    for tag, key in ((RECORDED_HOST, "host"), (RECORDED_CPU, "cpu")):
        if tags.get(tag) and tags[tag] != here[key]:
            found.append(f"{key} '{tags[tag]}' (here: '{here[key]}')")
    return found

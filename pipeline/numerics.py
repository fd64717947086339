"""The numeric environment of a stage execution: what makes floating-point results differ between machines.

oneDNN picks its kernels from the CPU's instruction sets (capped by `ONEDNN_MAX_CPU_ISA`), so the same
configuration gives results that differ in the last bits on another CPU. Recording the CPU, the ISA and
the library versions beside every result lets a person tell a numeric difference from a real change.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# oneDNN's x86 ISA levels (names as ONEDNN_MAX_CPU_ISA takes them), each with the CPU features it needs.
# A level is usable when the CPU has all its features; the cap allows the levels whose features it includes.
_SSE41 = frozenset({"sse4_1"})
_AVX2 = _SSE41 | {"avx", "avx2"}
_AVX2_VNNI = _AVX2 | {"avx_vnni"}
_AVX512_CORE = _AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
_AVX512_CORE_VNNI = _AVX512_CORE | {"avx512_vnni"}
_AVX512_CORE_BF16 = _AVX512_CORE_VNNI | {"avx512_bf16"}
_AVX512_CORE_FP16 = _AVX512_CORE_BF16 | {"avx512_fp16"}
ONEDNN_ISAS: dict[str, frozenset[str]] = {
    "SSE41": _SSE41,
    "AVX": _SSE41 | {"avx"},
    "AVX2": _AVX2,
    "AVX2_VNNI": _AVX2_VNNI,
    "AVX2_VNNI_2": _AVX2_VNNI | {"avx_vnni_int8", "avx_ne_convert"},
    "AVX512_CORE": _AVX512_CORE,
    "AVX512_CORE_VNNI": _AVX512_CORE_VNNI,
    "AVX512_CORE_BF16": _AVX512_CORE_BF16,
    "AVX10_1_512": _AVX512_CORE_FP16,
    "AVX10_1_512_AMX": _AVX512_CORE_FP16 | {"amx_tile", "amx_int8", "amx_bf16"},
}
ISA_ALIASES = {"AVX512_CORE_FP16": "AVX10_1_512", "AVX512_CORE_AMX": "AVX10_1_512_AMX"}
CPU_INFO = Path("/proc/cpuinfo")


def cpu_model_and_flags(cpuinfo: Path = CPU_INFO) -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux); elsewhere the platform's processor string and no flags."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        lines = cpuinfo.read_text(encoding="utf-8").splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def onednn_enabled() -> bool:
    """TensorFlow uses oneDNN's CPU kernels on x86 unless TF_ENABLE_ONEDNN_OPTS turns them off."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in {"0", "false", "off"}


def onednn_isa(flags: set[str], cap: str | None = None) -> str | None:
    """The ISA oneDNN dispatches to: the widest level the CPU supports within the cap; None off x86."""
    cap_name = (cap or "").strip().upper()
    cap_name = ISA_ALIASES.get(cap_name, cap_name)
    allowed = ONEDNN_ISAS.get(cap_name)
    usable = [name for name, needs in ONEDNN_ISAS.items() if needs <= flags and (allowed is None or needs <= allowed)]
    return max(usable, key=lambda name: len(ONEDNN_ISAS[name])) if usable else None


def numeric_environment() -> dict[str, Any]:
    """Host, CPU, oneDNN on/off and ISA, library versions and GPUs (when TensorFlow is loaded) of this process."""
    model, flags = cpu_model_and_flags()
    enabled = onednn_enabled()
    return {
        "host": socket.gethostname(),
        "cpu": model,
        "onednn": enabled,
        "onednn_isa": onednn_isa(flags, os.environ.get("ONEDNN_MAX_CPU_ISA")) if enabled else None,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "keras": _version("keras"),
        "gpus": _gpus(),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """The GPUs TensorFlow sees, when this stage loaded it (stages without TensorFlow compute on the CPU)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return []
    devices = tf.config.list_physical_devices("GPU")
    return [tf.config.experimental.get_device_details(d).get("device_name", d.name) for d in devices]

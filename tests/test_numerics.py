"""The numeric environment a stage records: the oneDNN ISA derived from the CPU flags is the one oneDNN reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.numerics import cpu_model_and_flags, numeric_environment, onednn_isa

# oneDNN's verbose header names its ISA in words; the levels are those ONEDNN_MAX_CPU_ISA takes.
VERBOSE_NAMES = {
    "Intel SSE4.1": "SSE41",
    "Intel AVX": "AVX",
    "Intel AVX2": "AVX2",
    "Intel AVX2 with Intel DL Boost": "AVX2_VNNI",
    "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions": "AVX512_CORE",
    "Intel AVX-512 with Intel DL Boost": "AVX512_CORE_VNNI",
    "Intel AVX-512 with Intel DL Boost and bfloat16 support": "AVX512_CORE_BF16",
    "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support": "AVX10_1_512",
    (
        "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support "
        "and Intel AMX with bfloat16 and 8-bit integer support"
    ): "AVX10_1_512_AMX",
}
ZEN4 = {"sse4_1", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}


def test_isa_is_the_widest_level_the_cpu_has_within_the_cap():
    assert onednn_isa(ZEN4) == "AVX512_CORE_BF16"
    assert onednn_isa(ZEN4, "avx2") == "AVX2"
    assert onednn_isa(ZEN4, "AVX512_CORE") == "AVX512_CORE"
    assert onednn_isa(ZEN4, "SSE41") == "SSE41"
    assert onednn_isa({"sse4_1", "avx", "avx2"}, "AVX512_CORE_BF16") == "AVX2"
    assert onednn_isa({"sse4_1", "avx", "avx2", "avx_vnni"}) == "AVX2_VNNI"
    assert onednn_isa({"sse4_1", "avx", "avx2", "avx_vnni"}, "AVX512_CORE") == "AVX2"
    assert onednn_isa(set()) is None


def test_cpuinfo_gives_model_and_flags(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Example CPU\nflags\t\t: fpu sse4_1 avx avx2\n\n"
        "processor\t: 1\nmodel name\t: Example CPU\nflags\t\t: fpu sse4_1 avx avx2\n"
    )
    assert cpu_model_and_flags(info) == ("Example CPU", {"fpu", "sse4_1", "avx", "avx2"})


def test_onednn_off_records_no_isa(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    record = numeric_environment()
    assert (record["onednn"], record["onednn_isa"]) == (False, None)
    assert record["host"] and record["cpu"] and record["tensorflow"] and record["keras"]


@pytest.mark.e2e
def test_recorded_isa_is_the_one_onednn_uses():
    """Under this process's ONEDNN_MAX_CPU_ISA (CI runs the suite under two settings), ask oneDNN itself."""
    probe = "import keras, tensorflow as tf; keras.layers.Conv2D(4, 3)(tf.zeros([2, 8, 8, 3]))"
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    header = next(line for line in out.splitlines() if ",info,cpu,isa:" in line)
    used = VERBOSE_NAMES[header.split("isa:", 1)[1].strip()]
    _, flags = cpu_model_and_flags()
    assert onednn_isa(flags, os.environ.get("ONEDNN_MAX_CPU_ISA")) == used

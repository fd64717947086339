"""Mixed precision, tf.distribute strategies and XLA for the train stage, on real TensorFlow (CPU only).

Logical CPU devices and MultiWorkerMirroredStrategy must be set up before TensorFlow starts its runtime, so the
tests that need them run fresh processes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from pipeline.accelerate import dtype_policy, global_batch_size, is_chief, make_strategy
from pipeline.errors import PipelineError
from pipeline.model import build_deeplabv3plus
from pipeline.tracking import TRACKING_SWITCH
from support import two_class_spec, write_processed
from test_train import TINY_PARAMS as TINY_TRAIN
from test_train import squares

SIZE = 32
TINY = {"aspp_filters": 8, "decoder_filters": 8, "low_level_filters": 8}
TIMEOUT = 120
# No GPU, and quiet C++ logs: the fresh processes see the CPU the in-process tests see.
CPU_ENV = {"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}

# Two logical CPU devices (before TensorFlow starts), then what `mirrored` and `jit_compile` do on them.
FRESH_PROCESS = """
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from pipeline.accelerate import compile_options, global_batch_size, make_strategy
from pipeline.errors import PipelineError


def refusal(*args):
    try:
        compile_options(*args)
    except PipelineError as exc:
        return str(exc)
    return None


def fit(strategy, jit_compile):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1, keepdims=True))).batch(global_batch_size(2, strategy))
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", **compile_options(jit_compile, "none", strategy))
    return ds, model, model.fit(ds, epochs=2, verbose=0).history["loss"][-1]


mirrored = make_strategy("mirrored")
ds, model, mirrored_loss = fit(mirrored, False)
x, _ = next(iter(mirrored.experimental_distribute_dataset(ds)))
in_run = mirrored.run(lambda t: tf.shape(t)[0], args=(x,))
_, xla_model, xla_loss = fit(make_strategy("none"), True)
facts = {
    "replicas": mirrored.num_replicas_in_sync,
    "devices": list(mirrored.extended.worker_devices),
    "global_batch": global_batch_size(2, mirrored),
    "per_replica_batches": [int(n) for n in mirrored.experimental_local_results(in_run)],
    "variable_copies": len(mirrored.experimental_local_results(model.trainable_variables[0].value)),
    "mirrored_loss": mirrored_loss,
    "xla": xla_model.jit_compile,
    "xla_loss": xla_loss,
    "refused_logical_cpus": refusal(True, "none", mirrored),
    "refused_half_precision": refusal(True, "bfloat16", make_strategy("none")),
}
tf.config.experimental.enable_op_determinism()
facts["refused_determinism"] = refusal(True, "none", make_strategy("none"))
print(json.dumps(facts))
"""


def run_python(args: list[str], cwd: Path, **env: str) -> dict[str, Any]:
    """Run the test's interpreter in a fresh process; its last stdout line is a JSON object of what it saw."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **CPU_ENV, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_python(["-c", FRESH_PROCESS], tmp_path_factory.mktemp("fresh"))


@pytest.mark.e2e
def test_mirrored_splits_the_global_batch_over_two_logical_cpus_and_trains(fresh: dict[str, Any]) -> None:
    assert fresh["replicas"] == 2 and [d.split("/")[-1] for d in fresh["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert fresh["global_batch"] == 4 and fresh["per_replica_batches"] == [2, 2]
    assert fresh["variable_copies"] == 2, "the model must be built under the strategy's scope"
    assert math.isfinite(fresh["mirrored_loss"])


@pytest.mark.e2e
def test_jit_compile_runs_xla_on_one_cpu_replica_and_refuses_what_xla_cannot_run(fresh: dict[str, Any]) -> None:
    assert fresh["xla"] is True and math.isfinite(fresh["xla_loss"])
    assert fresh["refused_logical_cpus"].startswith("jit_compile: XLA cannot train 2 replicas on CPUs")
    assert fresh["refused_half_precision"].startswith("jit_compile: XLA's CPU compiler rejects")
    assert "bfloat16" in fresh["refused_half_precision"]
    assert fresh["refused_determinism"] == "jit_compile: XLA cannot run with TensorFlow's op determinism enabled"


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out on the loopback interface (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.e2e
def test_multi_worker_train_stage_runs_on_two_local_workers_and_only_the_chief_writes(tmp_path: Path) -> None:
    """`python -m pipeline.train` with `distribute: multi_worker` in two worker processes on loopback ports: both
    train one epoch in step with 2 replicas, and only the chief (worker 0) leaves the stage's outputs behind."""
    splits = {split: squares(n, seed=n) for split, n in (("train", 8), ("val", 4), ("test", 2))}
    params = {"train": {**TINY_TRAIN, "epochs": 1, "distribute": "multi_worker", "augment_flips": True}}
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    try:
        for index in range(2):
            folder = tmp_path / f"worker{index}"
            write_processed(folder / "data/processed", two_class_spec(SIZE, 255), splits, shard_bytes=4000)
            (folder / "params.yaml").write_text(yaml.safe_dump(params))
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            log = (tmp_path / f"worker{index}.out").open("w")
            env = {**os.environ, **CPU_ENV, "TF_CONFIG": config, TRACKING_SWITCH: "off"}
            workers.append(
                subprocess.Popen([sys.executable, "-m", "pipeline.train"], cwd=folder, env=env, stdout=log, stderr=log)
            )
            log.close()
        codes = [worker.wait(timeout=TIMEOUT) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = [(tmp_path / f"worker{index}.out").read_text() for index in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert keras.models.load_model(chief / "models/model.keras").count_params() > 0
    history = (chief / "reports/train_history.csv").read_text().splitlines()
    assert len(history) == 2 and all(math.isfinite(float(v)) for v in history[1].split(",")[1:] if v)
    assert not (other / "models").exists() and not (other / "reports").exists()
    assert not (chief / ".train-backup").exists() and not (other / ".train-backup").exists()


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "TF_CONFIG: not set"),
        ("{cluster", "TF_CONFIG: not valid JSON"),
        ('["worker"]', "TF_CONFIG: expected a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG: 'cluster' must map"),
        ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {}}', "TF_CONFIG: cluster job 'worker' must be"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "TF_CONFIG: 'task' must be an object"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "not in the cluster"),
    ],
)
def test_malformed_tf_config_is_one_line(monkeypatch: pytest.MonkeyPatch, tf_config: str | None, message: str) -> None:
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(PipelineError, match=message) as caught:
        make_strategy("multi_worker")
    assert "\n" not in str(caught.value)


def strategy_of(cluster: dict[str, list[str]], task_type: str, task_id: int) -> Any:
    """A stand-in for a multi-worker strategy: only its cluster resolver matters to `is_chief`."""
    spec = tf.train.ClusterSpec(cluster)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, task_type=task_type, task_id=task_id)
    return SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize(
    ("cluster", "task", "chief"),
    [
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
        ({"worker": ["a:1"], "evaluator": ["e:1"]}, ("evaluator", 0), False),
    ],
)
def test_is_chief_follows_tensorflows_convention(
    cluster: dict[str, list[str]], task: tuple[str, int], chief: bool
) -> None:
    assert is_chief(strategy_of(cluster, *task)) is chief


def test_no_distribution_is_the_default_strategy_on_one_replica() -> None:
    strategy = make_strategy("none")
    assert strategy is tf.distribute.get_strategy()
    assert is_chief(strategy) and global_batch_size(8, strategy) == 8


def test_dtype_policy_is_restored_when_building_fails() -> None:
    with pytest.raises(ValueError, match="output_stride"), dtype_policy("float16"):
        build_deeplabv3plus((SIZE, SIZE, 3), 2, output_stride=32)
    assert keras.mixed_precision.dtype_policy().name == "float32"


@pytest.mark.e2e
def test_bfloat16_trains_on_cpu_to_a_finite_loss() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((4, SIZE, SIZE, 3), dtype=np.float32)
    masks = rng.integers(0, 2, (4, SIZE, SIZE)).astype(np.int32)
    with dtype_policy("bfloat16"):
        model = build_deeplabv3plus((SIZE, SIZE, 3), 2, **TINY)
    # Eagerly: the same bfloat16 CPU kernels, without tracing DeepLab's training graph (about 20 s on a CPU).
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0).history
    assert len(history["loss"]) == 1 and math.isfinite(history["loss"][0])

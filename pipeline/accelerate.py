"""How the train stage uses the hardware: mixed precision, tf.distribute strategies and XLA.

The params choose, not the hardware: `mixed_precision`, `distribute` and `jit_compile` each map to one explicit
Keras or TensorFlow setting, and a combination that cannot run fails with one line before training starts.
TensorFlow is imported only when it is used, so the stage can import the params' types cheaply.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import tensorflow as tf

Precision = Literal["none", "float16", "bfloat16"]
Distribute = Literal["none", "mirrored", "multi_worker"]
PRECISIONS: tuple[Precision, ...] = typing.get_args(Precision)
STRATEGIES: tuple[Distribute, ...] = typing.get_args(Distribute)

# Keras' global dtype policy per `mixed_precision`: mixed policies compute in 16 bits and keep float32 weights.
_POLICIES: dict[str, str] = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@contextmanager
def dtype_policy(mixed_precision: Precision) -> Iterator[None]:
    """Build the model under `mixed_precision`'s Keras dtype policy, then restore the previous global policy.

    Layers take the global policy when they are created, so only the model built inside is affected; layers that
    set their own dtype (the float32 logits) keep it. Under `float16`, `Model.compile` wraps the optimizer in a
    LossScaleOptimizer, since float16 gradients underflow; `bfloat16` has float32's range and needs no scaling.
    """
    import keras

    if mixed_precision not in _POLICIES:
        raise ValueError(f"unknown mixed_precision '{mixed_precision}' (known: {', '.join(PRECISIONS)})")
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(_POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def make_strategy(distribute: Distribute) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `distribute`; build and compile the model inside its `scope()`.

    - `none`: TensorFlow's default strategy (one device, no replication);
    - `mirrored`: one replica per local GPU, or per logical CPU device when there is no GPU;
    - `multi_worker`: synchronous data parallelism across the processes that TF_CONFIG names. TensorFlow sets up
      collective ops when its runtime starts, so this must run before any other TensorFlow op in the process.
    """
    if distribute not in STRATEGIES:
        raise ValueError(f"unknown distribute '{distribute}' (known: {', '.join(STRATEGIES)})")
    if distribute == "multi_worker":
        _check_tf_config(os.environ.get("TF_CONFIG"))
    import tensorflow as tf

    if distribute == "none":
        return tf.distribute.get_strategy()
    if distribute == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return _multi_worker_strategy()


def _check_tf_config(text: str | None) -> None:
    """Reject a TF_CONFIG that MultiWorkerMirroredStrategy would silently read as one local worker, or fail on late.

    The cluster must map job names to lists of `host:port` addresses, and the task must be one of them.
    """
    if not text:
        raise PipelineError("TF_CONFIG: not set; distribute: multi_worker needs the cluster and this task in it")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"TF_CONFIG: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PipelineError("TF_CONFIG: expected a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise PipelineError("TF_CONFIG: 'cluster' must map job names to lists of host:port addresses")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
            raise PipelineError(f"TF_CONFIG: cluster job '{job}' must be a non-empty list of host:port addresses")
    if not isinstance(task, dict) or not isinstance(task.get("type"), str) or type(task.get("index")) is not int:
        raise PipelineError("TF_CONFIG: 'task' must be an object with a job 'type' and an integer 'index'")
    job, index = task["type"], task["index"]
    if job not in cluster or not 0 <= index < len(cluster[job]):
        raise PipelineError(f"TF_CONFIG: task {job}:{index} is not in the cluster (jobs: {', '.join(cluster)})")


def _multi_worker_strategy() -> tf.distribute.Strategy:
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """Reduces nested values leaf by leaf, and scalars across replicas, as MirroredStrategy does.

        Keras 3's `fit` reduces its first batch, an (inputs, targets) tuple, in one call to build the model, and
        reduces the scalar loss and metrics of every step along axis 0: TensorFlow's MultiWorkerMirroredStrategy
        rejects both, so `fit` would fail before its first step.
        """

        def reduce(self, reduce_op: Any, value: Any, axis: Any) -> Any:
            reduce_one = tf.distribute.MultiWorkerMirroredStrategy.reduce

            def reduce_leaf(leaf: Any) -> Any:
                scalar = self.experimental_local_results(leaf)[0].shape.rank == 0
                return reduce_one(self, reduce_op, leaf, None if scalar else axis)

            return tf.nest.map_structure(reduce_leaf, value)

    return MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the outputs: every process except the non-chief tasks of a multi-worker run.

    The chief is the `chief` task, or worker 0 when the cluster has no `chief` job (TensorFlow's convention).
    """
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None or resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


def global_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The batch the dataset must yield: `batch_size` is per replica, and each step feeds every replica one."""
    return batch_size * int(strategy.num_replicas_in_sync)


def compile_options(jit_compile: bool, mixed_precision: Precision, strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Keyword arguments for `Model.compile`: XLA exactly as `jit_compile` says, or one line saying why it cannot.

    Keras' default ("auto") chooses by the hardware and the strategy, and Keras drops `jit_compile=True` with
    only a warning while TensorFlow's op determinism is enabled. XLA on CPUs has no collective ops and compiles
    for one device, so it cannot train several replicas, and it rejects DeepLabV3+'s float16/bfloat16 gradients:
    these are refused here, before the model is compiled, rather than failing in the first step.
    """
    if not jit_compile:
        return {"jit_compile": False}
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled

    if is_op_determinism_enabled():
        raise PipelineError("jit_compile: XLA cannot run with TensorFlow's op determinism enabled")
    if not tf.config.list_logical_devices("GPU"):
        if strategy.num_replicas_in_sync > 1:
            raise PipelineError(
                f"jit_compile: XLA cannot train {strategy.num_replicas_in_sync} replicas on CPUs; "
                "set jit_compile: false or distribute over GPUs"
            )
        if mixed_precision != "none":
            raise PipelineError(
                f"jit_compile: XLA's CPU compiler rejects DeepLabV3+'s {mixed_precision} gradients; "
                "set jit_compile: false or mixed_precision: none"
            )
    return {"jit_compile": True}

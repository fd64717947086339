"""Training and inference throughput: our DeepLabV3+ against keras-hub's DeepLabV3 image segmenter.

Run it with an interpreter that has keras-hub (see bench/README.md: a separate venv layered on the project's
venv, so the project's venv is never modified). Every (model, image size) runs in its own subprocess so
its peak memory (ru_maxrss) is its own. Same settings for both models: random init (weights=None; nothing
is downloaded: keras-hub models are built from their constructors, never from a preset), same input size,
batch size, number of classes, optimizer (Adam 1e-3) and loss (sparse cross-entropy on logits).

    train img/s      batch_size * steps / time, per run from per-batch times inside model.fit (compiled
                     graph, first `--warmup` steps excluded); median of `--runs` runs of `--steps` steps
    infer img/s      same with predict_on_batch
    input wait %     our tf.data pipeline (train_data.training_batches over shards: shuffle, flips, normalization,
                     weights, prefetch) feeding our model: share of the training loop spent in next(iterator)

Never asserts timings; writes bench/results/model_speed.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

MODELS = {
    "ours-resnet18": "our DeepLabV3+ (pipeline/model.py), ResNet18, output stride 16, ASPP 256, decoder 256",
    "kerashub-resnet18": (
        "keras-hub DeepLabV3ImageSegmenter, ResNetBackbone (ResNet18 layout), SPP at P5, "
        "low-level P2 (its preset layout)"
    ),
    "ours-default": "our DeepLabV3+ as params.yaml trains it: MobileNetV2 alpha 0.35, OS16, ASPP 64, decoder 64",
}


def build(name: str, size: int, num_classes: int) -> Any:
    if name.startswith("ours"):
        from pipeline.model import build_deeplabv3plus

        if name == "ours-default":
            return build_deeplabv3plus((size, size, 3), num_classes, "mobilenetv2", 0.35, 16, 64, 64)
        return build_deeplabv3plus((size, size, 3), num_classes, "resnet18", 1.0, 16, 256, 256)
    import keras_hub

    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        image_shape=(size, size, 3),
    )
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        low_level_feature_key="P2",
        image_shape=(size, size, 3),
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes, activation=None)


def one(
    name: str, size: int, batch: int, num_classes: int, steps: int, runs: int, warmup: int, deterministic: bool = False
) -> dict[str, Any]:
    """Measure one model at one size (in this process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    if deterministic:  # as pipeline/train.py does (Keras never uses XLA with op determinism on)
        tf.config.experimental.enable_op_determinism()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build(name, size, num_classes)
    # keras-hub's segmenter compiles a pixel accuracy metric whatever `metrics` says: give ours the same
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = (rng.random((batch, size, size, 1)) < 0.1).astype(np.int32)  # (B, H, W, 1): keras-hub's metric needs it
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.t)

    clock = Clock()
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0)
    compile_s = time.perf_counter() - t0
    train_rates = []
    for _ in range(runs):
        clock.times = []
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock])
        train_rates.append(batch * len(clock.times) / sum(clock.times))
    model.predict_on_batch(x)
    model.predict_on_batch(x)
    infer_rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            model.predict_on_batch(x)
        infer_rates.append(batch * steps / (time.perf_counter() - start))
    result = {
        "model": name,
        "size": size,
        "batch": batch,
        "classes": num_classes,
        "params_M": round(model.count_params() / 1e6, 2),
        "train_img_s": round(statistics.median(train_rates), 2),
        "train_runs": [round(r, 2) for r in train_rates],
        "infer_img_s": round(statistics.median(infer_rates), 2),
        "infer_runs": [round(r, 2) for r in infer_rates],
        "first_fit_s": round(compile_s, 1),
        "xla": bool(model.jit_compile),
        "deterministic": deterministic,
    }
    if name.startswith("ours"):
        result["input_wait_pct"] = input_wait(model, size, batch, num_classes, steps * runs)
    result["peak_rss_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    result["rss_before_model_MB"] = round(rss_start / 1024, 0)
    return result


def input_wait(model: Any, size: int, batch: int, num_classes: int, steps: int) -> float:
    """Share (%) of our training loop spent waiting for the next batch of the train stage's stream.

    Random images and masks are written as processed shards in a temporary folder and read back by
    `pipeline.train_data.training_batches` (shard interleave, decode, shuffle buffer, flips, normalization,
    weights, prefetch), as the train stage reads data/processed.
    """
    import math
    import tempfile

    import keras
    import numpy as np

    from pipeline.normalization import PixelMoments, make_spec
    from pipeline.processed import Spec, Split, SplitWriter, encode_png, example
    from pipeline.train_data import Batching, pixel_weight_table, training_batches

    rng = np.random.default_rng(1)
    n = max(4 * batch, 32)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = (rng.random((n, size, size)) < 0.1).astype(np.uint8)
    moments = PixelMoments()
    moments.add(images)
    weights = pixel_weight_table([1.0, 3.0], num_classes, 255)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
    )
    with tempfile.TemporaryDirectory(prefix="model-speed-") as tmp:
        folder = Path(tmp)
        writer = SplitWriter(folder, "train", 100 * 10**6)
        for i, (image, mask) in enumerate(zip(images, masks)):
            writer.add(example(f"train{i:05d}", encode_png(image), encode_png(mask)))
        empty = Split(images=0, shards=())
        spec = Spec(
            image_size=size,
            num_classes=num_classes,
            class_names=[f"class_{c}" for c in range(num_classes)],
            ignore_index=255,
            normalization=make_spec("standardize", moments),
            splits={"train": writer.close(), "val": empty, "test": empty},
        )
        epochs = math.ceil((steps + 2) * batch / n)
        ds = training_batches(spec, folder, Batching(batch, 1024, True, 0), range(epochs), weights)
        it = iter(ds)
        for _ in range(2):  # trace/compile
            xb, yb, wb = next(it)
            model.train_on_batch(xb, yb, sample_weight=wb)
        wait = total = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            xb, yb, wb = next(it)
            t1 = time.perf_counter()
            model.train_on_batch(xb, yb, sample_weight=wb)
            t2 = time.perf_counter()
            wait, total = wait + (t1 - t0), total + (t2 - t0)
    return round(100 * wait / total, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--deterministic", action="store_true", help="enable TF op determinism as the train stage does")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    args = ap.parse_args()
    if args.one:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print(
            "RESULT "
            + json.dumps(
                one(
                    args.one[0],
                    int(args.one[1]),
                    args.batch,
                    args.classes,
                    args.steps,
                    args.runs,
                    args.warmup,
                    args.deterministic,
                )
            )
        )
        return
    from _common import loadavg, machine, md_table, now, write_results

    meta: dict[str, Any] = {
        "started": now(),
        "machine": machine(),
        "load_start": loadavg(),
        "python": sys.executable,
        "models": MODELS,
        "settings": vars(args) | {"out": str(args.out)},
    }
    try:
        import keras_hub

        meta["keras_hub"] = keras_hub.__version__
    except Exception as exc:  # documented fallback: no keras-hub rows
        meta["keras_hub"] = f"unavailable: {exc}"
    import keras
    import tensorflow as tf

    meta["keras"], meta["tensorflow"] = keras.__version__, tf.__version__
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for name in args.models.split(","):
            if name.startswith("kerashub") and str(meta["keras_hub"]).startswith("unavailable"):
                continue
            load = loadavg()
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                str(size),
                "--batch",
                str(args.batch),
                "--classes",
                str(args.classes),
                "--steps",
                str(args.steps),
                "--runs",
                str(args.runs),
                "--warmup",
                str(args.warmup),
                *(["--deterministic"] if args.deterministic else []),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                rows.append(
                    {"model": name, "size": size, "error": proc.stderr.strip().splitlines()[-1:] or proc.returncode}
                )
            else:
                rows.append(json.loads(line[7:]) | {"load": f"{load} -> {loadavg()}"})
            print(f"[{now()}] {rows[-1]}", flush=True)
    meta.update(finished=now(), load_end=loadavg())
    ratios = []
    for size in [int(s) for s in args.sizes.split(",")]:
        ours = next(
            (r for r in rows if r["model"] == "ours-resnet18" and r["size"] == size and "train_img_s" in r), None
        )
        hub = next(
            (r for r in rows if r["model"] == "kerashub-resnet18" and r["size"] == size and "train_img_s" in r), None
        )
        if ours and hub:
            ratios.append(
                {
                    "size": size,
                    "train ours/keras-hub": round(ours["train_img_s"] / hub["train_img_s"], 2),
                    "infer ours/keras-hub": round(ours["infer_img_s"] / hub["infer_img_s"], 2),
                    "peak RSS ours/keras-hub": round(ours["peak_rss_MB"] / hub["peak_rss_MB"], 2),
                }
            )
    cols = [
        "model",
        "size",
        "batch",
        "params_M",
        "xla",
        "train_img_s",
        "infer_img_s",
        "input_wait_pct",
        "peak_rss_MB",
        "first_fit_s",
        "load",
    ]
    m = meta["machine"]
    text = (
        f"# Model speed (CPU)\n\n{meta['started']} .. {meta['finished']}; {m['cores']} cores, {m['cpu_model']}; "
        f"TF {meta['tensorflow']}, Keras {meta['keras']}, keras-hub {meta['keras_hub']}; load (1/5/15 min) "
        f"{meta['load_start']} at start, {meta['load_end']} at end. Batch {args.batch}, {args.classes} classes, "
        f"median of {args.runs} runs x {args.steps} steps; "
        f"TF op determinism {'on, as the train stage' if args.deterministic else 'off'}; "
        "Keras jit_compile=auto (resolved per model: `xla` column).\n\n"
        + md_table(rows, cols)
        + "\n"
        + md_table(ratios)
        + "\nModels:\n\n"
        + "".join(f"- `{k}`: {v}\n" for k, v in MODELS.items())
    )
    write_results("model_speed" + ("_deterministic" if args.deterministic else ""), rows, meta, text, args.out)
    print(text)


if __name__ == "__main__":
    main()

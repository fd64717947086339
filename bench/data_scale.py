"""Data scale: peak memory and throughput of every stage as the data set grows (200, 2,000 and 10,000 images).

Each size gets a scratch folder holding a copy of pipeline/ and of params.yaml with `SCALE_PARAMS` laid over it
(tiny model, one epoch; by default 144 px synthetic images resized to 128 px, params.yaml's preprocess size;
everything else as params.yaml has it: shuffle buffer 1024, 100 MB shards), and the five
stages run there one after the other as `python -m pipeline.<stage>` with SEGBISECT_TRACKING=off, so neither
MLflow nor DVC is in the figures. The copies are taken before the first stage runs, so every size runs one code.

    peak RSS MB     the stage process' own ru_maxrss, from os.wait4 on its pid (RUSAGE_CHILDREN would be the
                    largest of every child reaped so far)
    wall s          process start to exit, interpreter and TensorFlow import included
    images/s        images the stage handled / wall s: every image for synthesize, prepare and preprocess,
                    epochs x train images for train, the test images for evaluate; train also from its own
                    fit time (`images_per_second` in reports/train_metrics.json); marginal images/s = extra
                    images / extra seconds between the two largest sets, start-up costs cancelled
    per core        preprocess images/s / the cores it may use (its thread pool has one worker per core)
    input wait %    in a separate process per size: the real training stream (`training_batches` over that
                    size's shards) feeding the real model (`build_model`, same params, op determinism as the
                    train stage); share of next(iterator) in wait + train_on_batch over `--steps` steps after
                    2 warm-up steps; next() floor = next() on a batch that is always ready (same shapes), the
                    iterator's own cost without any input work; stream alone = next() on the training stream
                    with no step between calls (after `--steps` calls that drain what prefetch held): the input
                    pipeline's own time per batch on these cores

Targets, reported and never asserted: each stage's peak RSS grows < 10% from the smallest to the largest set;
input wait < 5% of the training step. `--gpu-sweep` measures the train stage at 512 px under each mixed precision
on one and on all GPUs instead (it says so and stops when TensorFlow sees no GPU).
Writes bench/results/data_scale.{md,csv,json} (`--gpu-sweep`: data_scale_gpu.*).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, loadavg, machine, md_table, now, stage_env, write_results
from pipeline.scratch import deep_merge

STAGES = ("synthesize", "prepare", "preprocess", "train", "evaluate")
RSS_TARGET_PCT = 10.0
WAIT_TARGET_PCT = 5.0
WARMUP_STEPS = 2
# One short epoch of a tiny model, identical at every size, so train time grows with the data alone.
SCALE_PARAMS: dict[str, Any] = {
    "train": {
        "epochs": 1,
        "alpha": 0.35,
        "output_stride": 16,
        "aspp_filters": 8,
        "decoder_filters": 8,
        "batch_size": 16,
        "early_stopping_patience": 1,
    },
}
GPU_PRECISIONS = ("none", "float16", "bfloat16")
GPU_STRATEGIES = ("none", "mirrored")
GPU_SIZE = 512
# Keras' verbose=2 epoch line: "88/88 - 52s - 592ms/step - loss: ..."
EPOCH_LINE = re.compile(r"^\s*(\d+)/(\d+) - \S+ - ([\d.]+)(us|ms|s)/step")


def scratch(dest: Path, overlay: dict[str, Any]) -> Path:
    """pipeline/ and params.yaml (with `overlay`) copied into `dest`: all `python -m pipeline.<stage>` needs."""
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overlay)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "logs").mkdir()
    return dest


def bench_env(folder: Path) -> dict[str, str]:
    """No MLflow, and the folder's pipeline/ ahead of the project's editable install for `--wait-one`."""
    env = stage_env()
    env["SEGBISECT_TRACKING"] = "off"
    env["PYTHONPATH"] = str(folder)
    return env


def run_stage(folder: Path, stage: str, log_name: str | None = None) -> dict[str, Any]:
    """Run one stage in `folder`; its own peak RSS comes from wait4 on its pid, its output goes to logs/."""
    log = folder / "logs" / f"{log_name or stage}.log"
    load = loadavg()
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"pipeline.{stage}"],
            cwd=folder,
            env=bench_env(folder),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} in {folder} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return {"peak_rss_MB": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2), "load": load}


def images_handled(folder: Path, stage: str, n_images: int) -> int:
    spec = json.loads((folder / "data/processed/spec.json").read_text())
    if stage == "train":
        metrics = json.loads((folder / "reports/train_metrics.json").read_text())
        return int(metrics["epochs_run"]) * int(spec["splits"]["train"]["images"])
    if stage == "evaluate":
        return int(spec["splits"]["test"]["images"])
    return n_images


def measure_size(folder: Path, n_images: int, cores: int) -> list[dict[str, Any]]:
    rows = []
    for stage in STAGES:
        row: dict[str, Any] = {"images": n_images, "stage": stage, **run_stage(folder, stage)}
        print(f"[{now()}] {n_images} images: {stage} {row}", flush=True)
        rows.append(row)
    for row in rows:
        handled = images_handled(folder, row["stage"], n_images)
        row["images_handled"] = handled
        row["images_per_s"] = round(handled / row["wall_s"], 1)
        if row["stage"] == "preprocess":
            row["cores"] = cores
            row["images_per_s_per_core"] = round(row["images_per_s"] / cores, 1)
        if row["stage"] == "train":
            metrics = json.loads((folder / "reports/train_metrics.json").read_text())
            row["fit_s"] = metrics["train_seconds"]
            row["fit_images_per_s"] = metrics["images_per_second"]
    return rows


def measure_wait(folder: Path, steps: int) -> dict[str, Any]:
    """`--wait-one` in its own process, so each size's stream and model start from nothing."""
    load = loadavg()
    proc = subprocess.run(
        [sys.executable, __file__, "--wait-one", str(folder), "--steps", str(steps)],
        cwd=folder,
        env=bench_env(folder),
        capture_output=True,
        text=True,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"input wait in {folder} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :]) | {"load": f"{load} -> {loadavg()}"}


def input_wait(folder: Path, steps: int) -> dict[str, Any]:
    """Time next(iterator) against train_on_batch on the train stage's own stream and model, in this process."""
    import resource

    import keras
    import tensorflow as tf

    import pipeline
    from pipeline.params import load_section
    from pipeline.processed import Spec
    from pipeline.train import TrainParams, build_model
    from pipeline.train_data import Batching, pixel_weight_table, training_batches

    params = load_section("train", TrainParams, folder / "params.yaml")
    processed = folder / "data/processed"
    spec = Spec.load(processed)
    keras.utils.set_random_seed(params.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(params, (spec.image_size, spec.image_size, 3), spec.num_classes, spec.ignore_index)
    weights = (
        None
        if params.class_weights is None
        else pixel_weight_table(params.class_weights, spec.num_classes, spec.ignore_index)
    )
    batching = Batching(params.batch_size, params.shuffle_buffer, params.augment_flips, params.seed)
    per_epoch = math.ceil(spec.splits["train"].images / params.batch_size)
    epochs = math.ceil((WARMUP_STEPS + 3 * steps) / per_epoch)
    it = iter(training_batches(spec, processed, batching, range(epochs), weights))
    start = time.perf_counter()
    first = 0.0
    for i in range(WARMUP_STEPS):
        x, y, w = next(it)
        if i == 0:
            first = time.perf_counter() - start
        model.train_on_batch(x, y, sample_weight=w)
    waits, trains = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y, w = next(it)
        t1 = time.perf_counter()
        model.train_on_batch(x, y, sample_weight=w)
        waits.append(t1 - t0)
        trains.append(time.perf_counter() - t1)
    wait, train = sum(waits), sum(trains)
    ready = iter(tf.data.Dataset.from_tensors((x, y, w)).repeat().prefetch(1))
    next(ready)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(ready)
    floor = (time.perf_counter() - t0) / steps
    for _ in range(steps):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    stream = (time.perf_counter() - t0) / steps
    return {
        "train_images": spec.splits["train"].images,
        "shuffle_buffer": min(spec.splits["train"].images, params.shuffle_buffer),
        "steps": steps,
        "epochs_streamed": epochs,
        "first_batch_s": round(first, 3),
        "wait_ms_per_step": round(1000 * wait / steps, 2),
        "max_wait_ms": round(1000 * max(waits), 2),
        "next_floor_ms": round(1000 * floor, 2),
        "stream_ms_per_batch": round(1000 * stream, 2),
        "train_ms_per_step": round(1000 * train / steps, 2),
        "median_train_ms": round(1000 * statistics.median(trains), 2),
        "max_train_ms": round(1000 * max(trains), 2),
        "wait_pct": round(100 * wait / (wait + train), 2),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pipeline": str(Path(pipeline.__file__).parent),
    }


def marginal_rate(smaller: dict[str, Any], larger: dict[str, Any]) -> float | None:
    """Images/s of the extra images alone: the start-up both runs pay (interpreter, TensorFlow import, model
    building) cancels out, which at small sizes is most of the wall time."""
    extra_s = larger["wall_s"] - smaller["wall_s"]
    extra = larger["images_handled"] - smaller["images_handled"]
    return round(extra / extra_s, 1) if extra_s > 0 else None


def summarize(rows: list[dict[str, Any]], waits: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ...]:
    """Per stage across sizes (peak RSS, its growth, images/s) and per size (input wait, preprocess per core)."""
    sizes = sorted({r["images"] for r in rows})
    by = {(r["images"], r["stage"]): r for r in rows}
    per_stage = []
    for stage in STAGES:
        small, large = by[(sizes[0], stage)]["peak_rss_MB"], by[(sizes[-1], stage)]["peak_rss_MB"]
        growth = round(100 * (large - small) / small, 1)
        row: dict[str, Any] = {"stage": stage}
        row |= {f"peak RSS MB @{n}": by[(n, stage)]["peak_rss_MB"] for n in sizes}
        row["RSS growth %"] = growth
        row[f"< {RSS_TARGET_PCT:g}%"] = "met" if growth < RSS_TARGET_PCT else "**missed**"
        row |= {f"img/s @{n}": by[(n, stage)]["images_per_s"] for n in sizes}
        row[f"marginal img/s {sizes[-2]}->{sizes[-1]}"] = marginal_rate(by[(sizes[-2], stage)], by[(sizes[-1], stage)])
        per_stage.append(row)
    per_size = []
    for n, wait in zip(sizes, waits):
        per_size.append(
            {
                "images": n,
                "train/test images": f"{wait['train_images']}/{by[(n, 'evaluate')]['images_handled']}",
                "wall s (5 stages)": round(sum(by[(n, s)]["wall_s"] for s in STAGES), 1),
                "preprocess img/s": by[(n, "preprocess")]["images_per_s"],
                "preprocess img/s/core": by[(n, "preprocess")]["images_per_s_per_core"],
                "train fit img/s": by[(n, "train")]["fit_images_per_s"],
                "shuffle buffer": wait["shuffle_buffer"],
                "first batch s": wait["first_batch_s"],
                "wait ms/step": wait["wait_ms_per_step"],
                "max wait ms": wait["max_wait_ms"],
                "next() floor ms": wait["next_floor_ms"],
                "stream alone ms/batch": wait["stream_ms_per_batch"],
                "train ms/step": wait["train_ms_per_step"],
                "max train ms": wait["max_train_ms"],
                "input wait %": wait["wait_pct"],
                f"< {WAIT_TARGET_PCT:g}%": "met" if wait["wait_pct"] < WAIT_TARGET_PCT else "**missed**",
                "load (wait)": wait["load"],
            }
        )
    return per_stage, per_size


def markdown(
    per_stage: list[dict[str, Any]], per_size: list[dict[str, Any]], rows: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    m = meta["machine"]
    return (
        f"# Data scale\n\n{meta['started']} .. {meta['finished']} ({meta['minutes']} min); {m['cores']} cores, "
        f"{m['cpu_model']}; load (1/5/15 min) {meta['load_start']} at start, {meta['load_end']} at end.\n\n"
        f"Synthetic images of {meta['synth_size']} px, {meta['image_size']} px after preprocessing; "
        f"params overlay {json.dumps(meta['overlay'])}; input wait over {meta['steps']} steps after "
        f"{WARMUP_STEPS} warm-up steps. Stages run untracked (SEGBISECT_TRACKING=off), without DVC.\n\n"
        "## Per stage\n\n"
        + md_table(per_stage)
        + "\n## Per size\n\n"
        + md_table(per_size)
        + "\n## Every stage run\n\n"
        + md_table(
            rows,
            [
                "images",
                "stage",
                "peak_rss_MB",
                "wall_s",
                "images_handled",
                "images_per_s",
                "images_per_s_per_core",
                "fit_s",
                "fit_images_per_s",
                "load",
            ],
        )
    )


def gpu_count() -> int:
    """GPUs TensorFlow sees, asked in a child process so this one never initializes a device."""
    probe = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True,
        text=True,
        env=stage_env(),
    )
    return int(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 and probe.stdout.strip() else 0


def last_epoch_step_s(log: Path) -> float | None:
    """Seconds per step of the last epoch, as Keras' epoch line reports it (validation included)."""
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    steps = [
        float(m[3]) * scale[m[4]] for m in map(EPOCH_LINE.match, log.read_text(encoding="utf-8").splitlines()) if m
    ]
    return steps[-1] if steps else None


def gpu_sweep(args: argparse.Namespace) -> None:
    """Train at 512 px under each mixed precision, on one GPU (no strategy) and on all (mirrored)."""
    gpus = gpu_count()
    if not gpus:
        print(
            "--gpu-sweep skipped: tf.config.list_physical_devices('GPU') is empty, so the 512 px "
            "float32/float16/bfloat16 training throughput cannot be measured on this machine."
        )
        return
    if args.work.exists():
        shutil.rmtree(args.work)
    epochs = args.gpu_epochs
    overlay = {
        "synthesize": {"n_images": args.gpu_images, "image_size": GPU_SIZE},
        "preprocess": {"image_size": GPU_SIZE},
        "train": {"epochs": epochs, "early_stopping_patience": epochs},
    }
    folder = scratch(args.work / "gpu", overlay)
    meta: dict[str, Any] = {"started": now(), "machine": machine(), "gpus": gpus, "load_start": loadavg()}
    meta["overlay"] = overlay
    for stage in ("synthesize", "prepare", "preprocess"):
        run_stage(folder, stage)
    rows = []
    params_file = folder / "params.yaml"
    base = yaml.safe_load(params_file.read_text())
    for distribute in GPU_STRATEGIES:
        for precision in GPU_PRECISIONS:
            params = deep_merge(base, {"train": {"mixed_precision": precision, "distribute": distribute}})
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            shutil.rmtree(folder / "models", ignore_errors=True)
            name = f"train-{precision}-{distribute}"
            row: dict[str, Any] = {
                "mixed_precision": precision,
                "distribute": distribute,
                "gpus used": gpus if distribute == "mirrored" else 1,
                **run_stage(folder, "train", name),
            }
            metrics = json.loads((folder / "reports/train_metrics.json").read_text())
            step = last_epoch_step_s(folder / "logs" / f"{name}.log")
            global_batch = params["train"]["batch_size"] * row["gpus used"]
            row["stage img/s (all epochs)"] = metrics["images_per_second"]
            row["last epoch img/s"] = round(global_batch / step, 1) if step else None
            row["train images"] = images_handled(folder, "train", 0) // int(metrics["epochs_run"])
            rows.append(row)
            print(f"[{now()}] {row}", flush=True)
    meta.update(finished=now(), load_end=loadavg())
    text = (
        f"# Training throughput at {GPU_SIZE} px on GPU\n\n{meta['started']} .. {meta['finished']}; {gpus} GPU(s); "
        f"{args.gpu_images} synthetic images, {epochs} epochs, params.yaml's model and per-replica batch; "
        "last epoch img/s from Keras' per-step time (validation included).\n\n" + md_table(rows)
    )
    write_results("data_scale_gpu", rows, meta, text, args.out)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,2000,10000", help="synthetic data set sizes, comma-separated")
    ap.add_argument("--synth-size", type=int, default=144, help="synthesize.image_size")
    ap.add_argument("--image-size", type=int, default=128, help="preprocess.image_size (a multiple of 16)")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps of the input wait measurement")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segbisect-bench-scale"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--gpu-sweep", action="store_true", help=f"train at {GPU_SIZE} px per precision and strategy")
    ap.add_argument("--gpu-images", type=int, default=400, help="--gpu-sweep: synthetic images")
    ap.add_argument("--gpu-epochs", type=int, default=3, help="--gpu-sweep: epochs per configuration")
    ap.add_argument("--wait-one", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.wait_one:
        print("RESULT " + json.dumps(input_wait(args.wait_one, args.steps)), flush=True)
        return
    if args.gpu_sweep:
        gpu_sweep(args)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.work.exists():
        shutil.rmtree(args.work)
    overlay = deep_merge(
        SCALE_PARAMS, {"synthesize": {"image_size": args.synth_size}, "preprocess": {"image_size": args.image_size}}
    )
    folders = {n: scratch(args.work / f"n{n}", deep_merge(overlay, {"synthesize": {"n_images": n}})) for n in sizes}
    cores = len(os.sched_getaffinity(0))
    meta: dict[str, Any] = {
        "started": now(),
        "machine": machine(),
        "cores_used": cores,
        "load_start": loadavg(),
        "synth_size": args.synth_size,
        "image_size": args.image_size,
        "overlay": overlay,
        "steps": args.steps,
    }
    start = time.perf_counter()
    rows, waits = [], []
    for n in sizes:
        rows += measure_size(folders[n], n, cores)
        waits.append(measure_wait(folders[n], args.steps) | {"images": n})
        print(f"[{now()}] {n} images: input wait {waits[-1]}", flush=True)
    meta.update(finished=now(), load_end=loadavg(), minutes=round((time.perf_counter() - start) / 60, 1))
    per_stage, per_size = summarize(rows, waits)
    meta.update(per_stage=per_stage, per_size=per_size, input_wait=waits)
    text = markdown(per_stage, per_size, rows, meta)
    write_results("data_scale", rows, meta, text, args.out)
    print(text)


if __name__ == "__main__":
    main()

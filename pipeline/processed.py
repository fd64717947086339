"""The preprocess stage's on-disk contract, read by train and evaluate.

`data/processed/spec.json` says how the images were made (size, classes, normalization) and lists each split's
TFRecord shards with their image counts, sizes and checksums. Each record is one `tf.train.Example` holding the
stem and the PNG-encoded image and mask, so a split of any size streams through `tf.data` and no reader ever holds
it whole. `Spec.load` is the one validated way in.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline import normalization
from pipeline.errors import PipelineError
from pipeline.io import file_sha256, read_json
from pipeline.params import SPLITS

SPEC_FILE = "spec.json"
FORMAT = "tfrecord-png"
SHARD_SUFFIX = ".tfrecord"


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str
    images: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Split:
    """A split's shards, and the foreground shares prepare recorded for it (None when it recorded none): the raw
    masks' before the label map, and the prepared masks' after it."""

    images: int
    shards: tuple[Shard, ...]
    raw_foreground_share: float | None = None
    prepared_foreground_share: float | None = None


@dataclasses.dataclass(frozen=True)
class Spec:
    """spec.json as one type: train and evaluate normalize, size and label from it, never from their own params."""

    image_size: int
    num_classes: int
    class_names: list[str]
    ignore_index: int | None
    normalization: dict[str, Any]
    splits: dict[str, Split]
    image_interpolation: str = "bilinear"
    mask_interpolation: str = "nearest"
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def files(self, folder: Path | str, split: str) -> list[str]:
        return [str(Path(folder) / shard.file) for shard in self.splits[split].shards]

    @classmethod
    def load(cls, folder: Path | str) -> Spec:
        """spec.json checked key by key, and every shard it lists checked for presence and size.

        Any problem is a one-line PipelineError naming the file, before a reader starts streaming.
        """
        path = Path(folder) / SPEC_FILE
        raw = read_json(path, "preprocess")
        if not isinstance(raw, dict):
            raise PipelineError(f"{path}: expected a JSON object")
        spec = _parse(raw, path)
        for split in spec.splits.values():
            for shard in split.shards:
                _check_shard(Path(folder) / shard.file, shard)
        return spec


def _parse(raw: dict[str, Any], path: Path) -> Spec:
    for key in ("image_size", "num_classes", "class_names", "ignore_index", "normalization", "splits"):
        if key not in raw:
            raise PipelineError(f"{path}: missing key '{key}'")
    if raw.get("format", FORMAT) != FORMAT:
        raise PipelineError(f"{path}: format {raw['format']!r} is not {FORMAT!r} (re-run the preprocess stage)")
    if not isinstance(raw["image_size"], int) or raw["image_size"] < 1:
        raise PipelineError(f"{path}: image_size must be a positive integer, got {raw['image_size']!r}")
    if not isinstance(raw["num_classes"], int) or raw["num_classes"] < 2:
        raise PipelineError(f"{path}: num_classes must be an integer >= 2, got {raw['num_classes']!r}")
    if not isinstance(raw["class_names"], list) or len(raw["class_names"]) != raw["num_classes"]:
        raise PipelineError(f"{path}: class_names must list {raw['num_classes']} names, got {raw['class_names']!r}")
    if raw["ignore_index"] is not None and not isinstance(raw["ignore_index"], int):
        raise PipelineError(f"{path}: ignore_index must be an integer or null, got {raw['ignore_index']!r}")
    _check_normalization(raw["normalization"], path)
    known = {field.name for field in dataclasses.fields(Spec)}
    values = {key: value for key, value in raw.items() if key in known}
    return Spec(**{**values, "splits": _parse_splits(raw["splits"], path)})


def _check_normalization(norm: Any, path: Path) -> None:
    if not isinstance(norm, dict) or norm.get("method") not in normalization.METHODS:
        raise PipelineError(
            f"{path}: normalization.method must be one of {', '.join(normalization.METHODS)}, got {norm!r}"
        )
    if norm["method"] == "standardize" and not all(len(norm.get(k) or []) == 3 for k in ("mean", "std")):
        raise PipelineError(f"{path}: standardize normalization needs 3-channel 'mean' and 'std'")


def _parse_splits(raw: Any, path: Path) -> dict[str, Split]:
    if not isinstance(raw, dict) or sorted(raw) != sorted(SPLITS):
        raise PipelineError(f"{path}: splits must list exactly {', '.join(SPLITS)}")
    splits = {}
    for name in SPLITS:
        try:
            shards = tuple(Shard(**shard) for shard in raw[name]["shards"])
            split = Split(
                images=int(raw[name]["images"]),
                shards=shards,
                raw_foreground_share=_share(raw[name].get("raw_foreground_share")),
                prepared_foreground_share=_share(raw[name].get("prepared_foreground_share")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: splits.{name} is malformed ({type(exc).__name__}: {exc})") from None
        held = sum(shard.images for shard in shards)
        if held != split.images:
            raise PipelineError(f"{path}: splits.{name} counts {split.images} images, its shards {held}")
        splits[name] = split
    return splits


def _share(value: Any) -> float | None:
    """A recorded share, or None (unknown) for a missing or malformed one: it only informs the diagnosis."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


def _check_shard(path: Path, shard: Shard) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PipelineError(f"{path}: shard not found (re-run the preprocess stage)") from None
    if size != shard.bytes:
        raise PipelineError(f"{path}: {size} bytes, spec.json says {shard.bytes} (re-run the preprocess stage)")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless, and decoded natively by tf.data; level 1 because preprocessing time matters more than disk."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def example(stem: str, image_png: bytes, mask_png: bytes) -> bytes:
    import tensorflow as tf

    def feature(value: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {"stem": feature(stem.encode()), "image": feature(image_png), "mask": feature(mask_png)}
    return bytes(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


class SplitWriter:
    """Writes one split's records in order into shards of at most `shard_bytes` (one record may exceed it alone)."""

    def __init__(self, folder: Path, split: str, shard_bytes: int) -> None:
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.shards: list[Shard] = []
        self._writer: Any = None
        self._file = ""
        self._count = 0
        self._size = 0

    def add(self, record: bytes) -> None:
        import tensorflow as tf

        if self._writer is not None and self._size + len(record) > self.shard_bytes:
            self._close_shard()
        if self._writer is None:
            self._file = f"{self.split}-{len(self.shards):05d}{SHARD_SUFFIX}"
            self._writer = tf.io.TFRecordWriter(str(self.folder / self._file))
        self._writer.write(record)
        self._count += 1
        self._size += len(record)

    def close(self) -> Split:
        if self._writer is not None:
            self._close_shard()
        return Split(images=sum(shard.images for shard in self.shards), shards=tuple(self.shards))

    def _close_shard(self) -> None:
        self._writer.close()
        path = self.folder / self._file
        self.shards.append(Shard(self._file, self._count, path.stat().st_size, file_sha256(path)))
        self._writer, self._count, self._size = None, 0, 0


def decoder(size: int) -> Callable[[Any], tuple[Any, Any, Any]]:
    """Serialized record -> (stem, image uint8 (size, size, 3), mask uint8 (size, size))."""
    import tensorflow as tf

    features = {name: tf.io.FixedLenFeature([], tf.string) for name in ("stem", "image", "mask")}

    def decode(record: Any) -> tuple[Any, Any, Any]:
        parsed = tf.io.parse_single_example(record, features)
        image = tf.ensure_shape(tf.io.decode_png(parsed["image"], channels=3), (size, size, 3))
        mask = tf.ensure_shape(tf.io.decode_png(parsed["mask"], channels=1), (size, size, 1))[..., 0]
        return parsed["stem"], image, mask

    return decode


def read(files: list[str], size: int) -> Any:
    """tf.data stream of decoded records, interleaved over the files in a fixed order."""
    import tensorflow as tf

    return tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 4)).map(
        decoder(size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def batches(spec: Spec, folder: Path | str, split: str, batch_size: int) -> Iterator[tuple[list[str], Any, Any]]:
    """(stems, images, masks) numpy batches of a split, for readers that work in numpy."""
    stream = read(spec.files(folder, split), spec.image_size).batch(batch_size).prefetch(2)
    for stems, images, masks in stream.as_numpy_iterator():
        yield [stem.decode() for stem in stems], images, masks

"""prepare: label mapping, validation with one-line errors naming the file, deterministic split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageFile

from pipeline.errors import PipelineError
from pipeline.params import ClassesParams
from pipeline.prepare import check_label_map, class_frequencies, load_pair, map_labels, split_stems
from pipeline.scratch import ROOT
from support import run_stage, write_params

CLASSES = ClassesParams(num_classes=2, names=["background", "foreground"], ignore_index=255)


def test_map_labels_turns_0_255_masks_into_class_ids() -> None:
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    out = map_labels(mask, {0: 0, 255: 1}, Path("m.png"))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 1], [1, 0]]


def test_map_labels_can_send_a_value_to_ignore() -> None:
    mask = np.array([[0, 128, 255]], np.uint8)
    assert map_labels(mask, {0: 0, 128: 255, 255: 1}, Path("m.png")).tolist() == [[0, 255, 1]]


def test_map_labels_names_file_and_unmapped_value() -> None:
    with pytest.raises(PipelineError, match=r"masks/a\.png: mask value 7 is not covered by prepare\.label_map"):
        map_labels(np.array([[0, 7]], np.uint8), {0: 0, 255: 1}, Path("masks/a.png"))


def test_label_map_target_must_be_class_or_ignore() -> None:
    check_label_map({0: 0, 255: 255}, CLASSES)
    with pytest.raises(PipelineError, match="maps 255 to 2"):
        check_label_map({0: 0, 255: 2}, CLASSES)


def test_split_is_seeded_disjoint_and_complete() -> None:
    stems = [f"s{i:02d}" for i in range(20)]
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = split_stems(stems, fractions, seed=3)
    assert a == split_stems(stems, fractions, seed=3)
    assert a != split_stems(stems, fractions, seed=4)
    assert sorted(stem for split in a.values() for stem in split) == stems
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 3, 3]


@pytest.mark.parametrize(
    ("n", "fractions", "message"),
    [
        (20, {"train": 0.85, "val": 0.15, "test": 0.0}, "the test split empty (20 images, fractions train 0.85, val"),
        (5, {"train": 0.0, "val": 0.5, "test": 0.5}, "the train split empty (5 images, fractions train 0, val 0.5"),
        (2, {"train": 0.5, "val": 0.25, "test": 0.25}, "the train split empty (2 images, fractions train 0.5, val"),
        (1, {"train": 0.8, "val": 0.1, "test": 0.1}, "the train split empty (1 images"),
    ],
)
def test_split_that_would_be_empty_is_a_params_error(n: int, fractions: dict[str, float], message: str) -> None:
    with pytest.raises(PipelineError, match=r"^params\.yaml: prepare\.split leaves ") as info:
        split_stems([f"s{i}" for i in range(n)], fractions, seed=0)
    assert message in str(info.value)


def test_three_images_fill_every_split() -> None:
    splits = split_stems(["a", "b", "c"], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert [len(stems) for stems in splits.values()] == [1, 1, 1]


def test_class_frequencies_count_ignore_separately() -> None:
    freq = class_frequencies(np.bincount([0, 0, 1, 255], minlength=256), CLASSES)
    assert freq == {"background": 0.5, "foreground": 0.25, "ignore": 0.25}


def _noise_file(path: Path, size: int = 144) -> bytes:
    """Noise compresses badly, so the file is long and PIL decodes a JPEG of it that lacks only its end marker."""
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, -12, -2, -1])
@pytest.mark.parametrize("load_truncated", [False, True], ids=["strict", "LOAD_TRUNCATED_IMAGES"])
def test_truncated_image_is_rejected_at_any_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, keep: float, load_truncated: bool
) -> None:
    """Cut anywhere past the header, whether PIL refuses the file, pads it or misses that it ends early."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    image, mask = tmp_path / f"a{suffix}", tmp_path / "a_mask.png"
    data = _noise_file(image)
    Image.fromarray(np.zeros((144, 144), np.uint8), mode="L").save(mask)
    load_pair("a", image, mask, {0: 0})
    image.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)])
    with pytest.raises(PipelineError, match=rf"^{re.escape(str(image))}: unreadable image \(truncated"):
        load_pair("a", image, mask, {0: 0})


def _raw_folder(root: Path, n: int = 4) -> Path:
    raw = root / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(raw / "images" / f"p{i}.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[2:4, 2:4] = 255
        Image.fromarray(mask, mode="L").save(raw / "masks" / f"p{i}.png")
    return raw


@pytest.fixture()
def prepare_dir(tmp_path: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["raw_dir"] = "raw"
    params["prepare"]["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _raw_folder(tmp_path)
    return tmp_path


def test_prepare_writes_class_id_masks_and_summary(prepare_dir: Path) -> None:
    result = run_stage(prepare_dir, "prepare")
    assert result.returncode == 0, result.stderr
    masks = sorted((prepare_dir / "data/prepared").glob("*/masks/*.png"))
    assert len(masks) == 4
    mask = Image.open(masks[0])
    assert mask.mode == "P" and set(np.unique(np.asarray(mask))) == {0, 1}
    assert set(np.unique(np.asarray(mask.convert("L")))) == {0, 255}  # the palette: background black, class 1 white
    summary = yaml.safe_load((prepare_dir / "reports/prepare_summary.json").read_text())
    assert summary["n_images"] == 4
    assert summary["splits"]["train"]["class_pixel_frequency"]["foreground"] == pytest.approx(4 / 64)
    assert (prepare_dir / "data/prepared/prepare_run.json").exists()
    labels = json.loads((prepare_dir / "data/prepared/labels.json").read_text())
    assert labels["test"] == {"raw_foreground_share": pytest.approx(4 / 64), "foreground_share": pytest.approx(4 / 64)}


def test_labels_record_the_raw_foreground_a_label_map_sends_to_ignore(prepare_dir: Path) -> None:
    """255 mapped to ignore: the prepared masks hold no foreground, the raw masks' share still says how much."""
    params = yaml.safe_load((prepare_dir / "params.yaml").read_text())
    params["prepare"]["label_map"] = {0: 0, 255: 255}
    (prepare_dir / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_stage(prepare_dir, "prepare")
    assert result.returncode == 0, result.stderr
    labels = json.loads((prepare_dir / "data/prepared/labels.json").read_text())
    assert labels["train"] == {"raw_foreground_share": pytest.approx(4 / 64), "foreground_share": 0.0}


def _expect_clean_failure(repo: Path, message: str) -> None:
    result = run_stage(repo, "prepare")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not (repo / "data/prepared").exists()
    assert not (repo / "reports/prepare_summary.json").exists()


def test_unreadable_image_is_named(prepare_dir: Path) -> None:
    (prepare_dir / "raw/images/p1.png").write_bytes(b"not a png")
    _expect_clean_failure(prepare_dir, "raw/images/p1.png: unreadable image")


def test_size_mismatch_is_named(prepare_dir: Path) -> None:
    Image.fromarray(np.zeros((9, 8), np.uint8), mode="L").save(prepare_dir / "raw/masks/p2.png")
    _expect_clean_failure(prepare_dir, "raw/masks/p2.png: mask size (8, 9) differs from image size (8, 8)")


def test_unmapped_mask_value_is_named(prepare_dir: Path) -> None:
    Image.fromarray(np.full((8, 8), 3, np.uint8), mode="L").save(prepare_dir / "raw/masks/p3.png")
    _expect_clean_failure(prepare_dir, "raw/masks/p3.png: mask value 3 is not covered by prepare.label_map")


def test_rgb_mask_is_rejected(prepare_dir: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(prepare_dir / "raw/masks/p0.png")
    _expect_clean_failure(prepare_dir, "raw/masks/p0.png: mask must be single-channel")


def test_image_without_mask_is_named(prepare_dir: Path) -> None:
    (prepare_dir / "raw/masks/p0.png").unlink()
    _expect_clean_failure(prepare_dir, "raw/images/p0.png: no mask with the same stem")


def test_bad_params_are_named(prepare_dir: Path) -> None:
    params = yaml.safe_load((prepare_dir / "params.yaml").read_text())
    params["prepare"]["split"] = {"train": 0.9, "val": 0.3, "test": 0.0}
    (prepare_dir / "params.yaml").write_text(yaml.safe_dump(params))
    _expect_clean_failure(prepare_dir, "params.yaml: prepare: split fractions must be non-negative and sum to 1")


def test_failed_run_keeps_previous_output(prepare_dir: Path) -> None:
    assert run_stage(prepare_dir, "prepare").returncode == 0
    before = sorted(p.relative_to(prepare_dir) for p in (prepare_dir / "data/prepared").rglob("*"))
    (prepare_dir / "raw/images/p1.png").write_bytes(b"broken")
    assert run_stage(prepare_dir, "prepare").returncode == 2
    assert sorted(p.relative_to(prepare_dir) for p in (prepare_dir / "data/prepared").rglob("*")) == before


@pytest.mark.parametrize("name", ["p1.png", "p1.jpg"])
def test_truncated_image_is_named(prepare_dir: Path, name: str) -> None:
    (prepare_dir / "raw/images/p1.png").unlink()
    data = _noise_file(prepare_dir / "raw/images" / name, size=8)
    (prepare_dir / "raw/images" / name).write_bytes(data[: len(data) // 2])
    _expect_clean_failure(prepare_dir, f"raw/images/{name}: unreadable image (truncated")


def test_truncated_mask_is_named(prepare_dir: Path) -> None:
    data = (prepare_dir / "raw/masks/p2.png").read_bytes()
    (prepare_dir / "raw/masks/p2.png").write_bytes(data[:-12])
    _expect_clean_failure(prepare_dir, "raw/masks/p2.png: unreadable image (truncated: the PNG end marker is missing)")


def test_zero_fraction_split_is_rejected_at_prepare(prepare_dir: Path) -> None:
    write_params(prepare_dir, {"prepare": {"split": {"train": 0.75, "val": 0.25, "test": 0.0}}})
    _expect_clean_failure(
        prepare_dir, "params.yaml: prepare.split leaves the test split empty (4 images, fractions train 0.75, val 0.25"
    )


def test_too_few_images_for_three_splits_are_rejected(prepare_dir: Path) -> None:
    for path in (*prepare_dir.glob("raw/*/p2.png"), *prepare_dir.glob("raw/*/p3.png")):
        path.unlink()
    _expect_clean_failure(prepare_dir, "params.yaml: prepare.split leaves the train split empty (2 images")


def test_outputs_and_summary_agree_split_by_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts summed pair by pair give the frequencies of the masks written, each split its own."""
    monkeypatch.setenv("SEGBISECT_TRACKING", "off")  # MLflow is not what this checks, and costs seconds
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(raw_dir="raw", split={"train": 0.5, "val": 0.25, "test": 0.25}, seed=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    raw = _raw_folder(tmp_path, n=6)
    for i in range(6):
        mask = np.zeros((8, 8), np.uint8)
        mask.flat[: 3 * i] = 255
        Image.fromarray(mask, mode="L").save(raw / "masks" / f"p{i}.png")
    assert run_stage(tmp_path, "prepare").returncode == 0
    summary = yaml.safe_load((tmp_path / "reports/prepare_summary.json").read_text())
    expected = split_stems([f"p{i}" for i in range(6)], params["prepare"]["split"], seed=5)
    assert summary["n_images"] == 6
    for name, stems in expected.items():
        folder = tmp_path / "data/prepared" / name
        assert sorted(p.stem for p in (folder / "images").glob("*.png")) == stems
        for stem in stems:
            written = np.asarray(Image.open(folder / "images" / f"{stem}.png"))
            assert np.array_equal(written, np.asarray(Image.open(raw / "images" / f"{stem}.png")))
        masks = [np.asarray(Image.open(folder / "masks" / f"{stem}.png")) for stem in stems]
        foreground, total = sum(int(m.sum()) for m in masks), 64 * len(stems)
        assert summary["splits"][name]["n_images"] == len(stems)
        assert summary["splits"][name]["class_pixel_frequency"] == {
            "background": (total - foreground) / total,
            "foreground": foreground / total,
            "ignore": 0.0,
        }

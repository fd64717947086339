"""DeepLabV3+ builder: shapes, real output stride (dilation past it), logits out, and loading without custom objects."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.model import ENCODER_FEATURES, LOW_LEVEL_FEATURES, build_deeplabv3plus

SIZE = 32
TINY = {"aspp_filters": 8, "decoder_filters": 8, "low_level_filters": 8}


def dilation_rates(model: keras.Model) -> set[int]:
    return {layer.dilation_rate[0] for layer in model.layers if hasattr(layer, "dilation_rate")}


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet18"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_shapes_and_real_output_stride(backbone: str, output_stride: int) -> None:
    model = build_deeplabv3plus((SIZE, SIZE, 3), 3, backbone=backbone, output_stride=output_stride, **TINY)
    assert tuple(model.output.shape) == (None, SIZE, SIZE, 3)
    assert model.get_layer(ENCODER_FEATURES).output.shape[1:3] == (SIZE // output_stride, SIZE // output_stride)
    assert model.get_layer(LOW_LEVEL_FEATURES).output.shape[1:3] == (SIZE // 4, SIZE // 4)
    aspp_rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    for rate in aspp_rates:
        assert model.get_layer(f"aspp_rate{rate}_dw").dilation_rate == (rate, rate)
    backbone_rates = {2, 4} if output_stride == 8 else {2}
    assert backbone_rates <= dilation_rates(model), "strides past the output stride must become dilation"
    if output_stride == 16:
        assert 4 not in dilation_rates(model)
    out = model(np.zeros((2, SIZE, SIZE, 3), np.float32), training=False)
    assert np.asarray(out).shape == (2, SIZE, SIZE, 3) and np.asarray(out).dtype == np.float32


def test_resnet50_reaches_output_stride_16() -> None:
    model = build_deeplabv3plus((SIZE, SIZE, 3), 2, backbone="resnet50", output_stride=16, **TINY)
    assert model.get_layer(ENCODER_FEATURES).output.shape[1:] == (SIZE // 16, SIZE // 16, 2048)
    assert model.get_layer(LOW_LEVEL_FEATURES).output.shape[1:] == (SIZE // 4, SIZE // 4, 256)


def test_width_multiplier_changes_mobilenet_size() -> None:
    small = build_deeplabv3plus((SIZE, SIZE, 3), 2, alpha=0.35, **TINY)
    large = build_deeplabv3plus((SIZE, SIZE, 3), 2, alpha=1.0, **TINY)
    assert small.count_params() < large.count_params()
    assert small.get_layer(ENCODER_FEATURES).output.shape[-1] == 112


def test_outputs_are_logits_not_probabilities() -> None:
    keras.utils.set_random_seed(0)  # an untrained model's outputs are ~1e-4: some draws are all positive
    model = build_deeplabv3plus((SIZE, SIZE, 3), 2, **TINY)
    assert model.layers[-1].get_config()["activation"] == "linear"
    x = np.random.default_rng(0).normal(0, 3, (2, SIZE, SIZE, 3)).astype(np.float32)
    out = np.asarray(model(x, training=False))
    assert not np.allclose(out.sum(axis=-1), 1.0, atol=1e-3)
    assert out.min() < 0 or out.max() > 1


def test_save_load_roundtrip_needs_no_custom_objects(tmp_path: Path) -> None:
    model = build_deeplabv3plus((SIZE, SIZE, 3), 2, output_stride=8, **TINY)
    x = np.random.default_rng(1).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"backbone": "vgg16"}, "unknown backbone"), ({"output_stride": 32}, "output_stride")]
)
def test_rejects_unknown_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_deeplabv3plus((SIZE, SIZE, 3), 2, **kwargs)

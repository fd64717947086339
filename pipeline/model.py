"""DeepLabV3+ (Chen et al. 2018) in plain Keras layers, so a saved model loads without custom objects.

keras.applications backbones cannot dilate, and DeepLab needs a real output stride of 8 or 16: past that
stride, later downsampling is replaced by atrous (dilated) convolution. The backbones are therefore
written here, compactly, with random initialization (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

BACKBONES: tuple[str, ...] = ("mobilenetv2", "resnet18", "resnet50")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16)
LOW_LEVEL_STRIDE = 4
ENCODER_FEATURES = "encoder_features"
LOW_LEVEL_FEATURES = "low_level_features"

# MobileNetV2 inverted-residual stages: (expansion, channels, repeats, first stride).
_MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# ResNet stages after the stride-4 stem: (block kind, repeats per stage).
_RESNET_BLOCKS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
_RESNET_WIDTHS = (64, 128, 256, 512)


class _Stride:
    """Tracks the running stride; once `output_stride` is reached, further strides become dilation."""

    def __init__(self, output_stride: int) -> None:
        self.output_stride = output_stride
        self.current = 1
        self.rate = 1

    def step(self, stride: int) -> tuple[int, int]:
        """(stride, dilation rate) for a layer that asks for `stride`, as in the DeepLab reference code."""
        if stride == 1:
            return 1, self.rate
        if self.current * stride > self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.current *= stride
        return stride, self.rate


def _make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: a multiple of `divisor`, never below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(
    x,
    filters: int,
    kernel: int,
    name: str,
    stride: int = 1,
    rate: int = 1,
    activation: str | None = "relu",
    momentum: float = 0.99,
):
    x = layers.Conv2D(
        filters, kernel, strides=stride, dilation_rate=rate, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    if activation == "relu6":
        return layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return layers.Activation(activation, name=f"{name}_{activation}")(x) if activation else x


def _depthwise_bn(x, name: str, stride: int = 1, rate: int = 1, activation: str = "relu", momentum: float = 0.99):
    x = layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=rate, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(x)
    return (
        layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
        if activation == "relu6"
        else layers.Activation(activation, name=f"{name}_dw_relu")(x)
    )


def _separable_conv(x, filters: int, name: str, rate: int = 1, momentum: float = 0.99):
    """Depthwise 3x3 (atrous) + BN + ReLU, then pointwise 1x1 + BN + ReLU: the paper's cheap 3x3 in ASPP and decoder."""
    x = _depthwise_bn(x, name, rate=rate, momentum=momentum)
    return _conv_bn(x, filters, 1, f"{name}_pw", momentum=momentum)


def _mobilenetv2(x, alpha: float, stride: _Stride, momentum: float):
    """MobileNetV2 features: (stride-4 low-level tensor, last tensor at the output stride)."""
    s, _ = stride.step(2)
    x = _conv_bn(x, _make_divisible(32 * alpha), 3, "stem", stride=s, activation="relu6", momentum=momentum)
    low_level = None
    block = 0
    for expansion, channels, repeats, first_stride in _MOBILENETV2_STAGES:
        for i in range(repeats):
            if first_stride > 1 and i == 0 and stride.current == LOW_LEVEL_STRIDE:
                low_level = x
            s, rate = stride.step(first_stride if i == 0 else 1)
            x = _inverted_residual(x, _make_divisible(channels * alpha), expansion, s, rate, f"block{block}", momentum)
            block += 1
    return low_level, x


def _inverted_residual(x, filters: int, expansion: int, stride: int, rate: int, name: str, momentum: float):
    in_channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn(y, in_channels * expansion, 1, f"{name}_expand", activation="relu6", momentum=momentum)
    y = _depthwise_bn(y, name, stride=stride, rate=rate, activation="relu6", momentum=momentum)
    y = _conv_bn(y, filters, 1, f"{name}_project", activation=None, momentum=momentum)
    if stride == 1 and in_channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _resnet(x, depth: str, stride: _Stride, momentum: float):
    """ResNet features: (stride-4 output of the first stage, last tensor at the output stride)."""
    kind, repeats = _RESNET_BLOCKS[depth]
    s, _ = stride.step(2)
    x = _conv_bn(x, 64, 7, "stem", stride=s, momentum=momentum)
    s, _ = stride.step(2)
    x = layers.MaxPooling2D(3, strides=s, padding="same", name="stem_pool")(x)
    unit = _basic_block if kind == "basic" else _bottleneck_block
    low_level = None
    for stage, (width, count) in enumerate(zip(_RESNET_WIDTHS, repeats)):
        for i in range(count):
            s, rate = stride.step(2 if stage > 0 and i == 0 else 1)
            x = unit(x, width, s, rate, f"stage{stage + 1}_block{i}", momentum)
        if stage == 0:
            low_level = x
    return low_level, x


def _shortcut(x, filters: int, stride: int, name: str, momentum: float):
    if stride == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, f"{name}_shortcut", stride=stride, activation=None, momentum=momentum)


def _basic_block(x, width: int, stride: int, rate: int, name: str, momentum: float):
    y = _conv_bn(x, width, 3, f"{name}_1", stride=stride, rate=rate, momentum=momentum)
    y = _conv_bn(y, width, 3, f"{name}_2", rate=rate, activation=None, momentum=momentum)
    y = layers.Add(name=f"{name}_add")([_shortcut(x, width, stride, name, momentum), y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _bottleneck_block(x, width: int, stride: int, rate: int, name: str, momentum: float):
    y = _conv_bn(x, width, 1, f"{name}_1", momentum=momentum)
    y = _conv_bn(y, width, 3, f"{name}_2", stride=stride, rate=rate, momentum=momentum)
    y = _conv_bn(y, 4 * width, 1, f"{name}_3", activation=None, momentum=momentum)
    y = layers.Add(name=f"{name}_add")([_shortcut(x, 4 * width, stride, name, momentum), y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _aspp(x, filters: int, rates: tuple[int, ...], momentum: float):
    """Atrous spatial pyramid pooling: image pooling, a 1x1 branch and one atrous 3x3 branch per rate."""
    height, width = x.shape[1], x.shape[2]
    pool = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pool = _conv_bn(pool, filters, 1, "aspp_pool_proj", momentum=momentum)
    pool = layers.UpSampling2D((height, width), name="aspp_pool_up")(pool)
    branches = [pool, _conv_bn(x, filters, 1, "aspp_1x1", momentum=momentum)]
    branches += [_separable_conv(x, filters, f"aspp_rate{rate}", rate=rate, momentum=momentum) for rate in rates]
    x = layers.Concatenate(name="aspp_concat")(branches)
    return _conv_bn(x, filters, 1, "aspp_proj", momentum=momentum)


def build_deeplabv3plus(
    input_shape: tuple[int, int, int],
    num_classes: int,
    backbone: str = "mobilenetv2",
    alpha: float = 0.35,
    output_stride: int = 16,
    aspp_filters: int = 256,
    decoder_filters: int = 256,
    low_level_filters: int = 48,
    bn_momentum: float = 0.99,
) -> keras.Model:
    """DeepLabV3+ returning float32 LOGITS of shape (N, H, W, num_classes); `alpha` only affects MobileNetV2.

    Layers follow Keras' global dtype policy (mixed_float16 computes in float16) except the logits layer,
    which stays float32 so the loss and the softmax never see float16 rounding or overflow.

    ASPP rates are (6, 12, 18) at output stride 16 and doubled at 8, as in the paper; the decoder fuses
    the stride-4 backbone features reduced to `low_level_filters` channels.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone '{backbone}' (known: {', '.join(BACKBONES)})")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    inputs = keras.Input(shape=input_shape, name="image")
    encoder = _backbone_fn(backbone, alpha)
    low_level, high_level = encoder(inputs, _Stride(output_stride), bn_momentum)
    low_level = layers.Identity(name=LOW_LEVEL_FEATURES)(low_level)
    high_level = layers.Identity(name=ENCODER_FEATURES)(high_level)
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    x = _aspp(high_level, aspp_filters, rates, bn_momentum)
    x = layers.Resizing(low_level.shape[1], low_level.shape[2], interpolation="bilinear", name="decoder_up")(x)
    skip = _conv_bn(low_level, low_level_filters, 1, "decoder_low_level", momentum=bn_momentum)
    x = layers.Concatenate(name="decoder_concat")([x, skip])
    x = _separable_conv(x, decoder_filters, "decoder_sep1", momentum=bn_momentum)
    x = _separable_conv(x, decoder_filters, "decoder_sep2", momentum=bn_momentum)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    x = layers.Resizing(input_shape[0], input_shape[1], interpolation="bilinear", name="logits_up")(x)
    logits = layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=f"deeplabv3plus_{backbone}_os{output_stride}")


def _backbone_fn(backbone: str, alpha: float) -> Callable:
    if backbone == "mobilenetv2":
        return lambda x, stride, momentum: _mobilenetv2(x, alpha, stride, momentum)
    return lambda x, stride, momentum: _resnet(x, backbone, stride, momentum)

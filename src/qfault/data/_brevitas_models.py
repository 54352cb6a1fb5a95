"""Seed 001's Brevitas classifiers as registered demo models: ``quant_cnv`` and ``quant_resnet20``.

Seed 001 (fault-aware training of Brevitas networks) evaluates FINN's CNV topology at w2a2,
w4a4 and w8a8 and a quantized CIFAR ResNet-20. Both builders take the same arguments
(``weight_bit_width``, ``act_bit_width``, ``in_channels``, ``image_size``, ``num_classes``,
``seed``), build deterministically from ``seed`` without touching the global RNG, and train on
the bundled 8x8 digits through :func:`~qfault.data.load_demo_model` (``load_demo_model("quant_cnv")``
fills in the digits' shape), or on any data set through ``qfault train`` (which passes the data
set's shape). Their defaults are CIFAR-10's shapes (3x32x32, 10 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from .._errors import QFaultConfigError, check_range
from ._models import register_model

#: CNV's native input side: its six unpadded 3x3 convs and two 2x2 pools leave 1x1 from 32x32
CNV_NATIVE_SIZE = 32
#: (output channels, max pool after it) of CNV's six convs
CNV_CONVS = ((64, False), (64, True), (128, False), (128, True), (256, False), (256, False))
#: width of CNV's two hidden fully connected layers
CNV_FC = 512
#: weight bits of the first conv (and of ResNet-20's classifier), whatever ``weight_bit_width`` is
FIRST_LAYER_BITS = 8


def _check_common(weight_bit_width, act_bit_width, in_channels, image_size, num_classes, seed,
                  min_size: int) -> None:
    check_range("weight_bit_width", weight_bit_width, 2, 16, integer=True)
    check_range("act_bit_width", act_bit_width, 1, 16, integer=True)
    check_range("in_channels", in_channels, 1, 4096, integer=True)
    check_range("num_classes", num_classes, 2, 100_000, integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise QFaultConfigError("seed", seed, "an integer")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < min_size:
        raise QFaultConfigError("image_size", image_size, f"an integer >= {min_size} (pixels per side)")


def _quantizers():
    """Seed 001's quantizers, built on first use (Brevitas is imported lazily).

    Returns ``(unit_weight, channel_weight, tensor_weight, uint_act, int_act)``: CNV's weights
    (signed, narrow range, a constant scale putting the codes on [-1, 1], per tensor), ResNet's
    weights (signed, narrow range, max-abs scale per output channel / per tensor), unsigned
    activations (learned per-tensor scale, log domain) and signed ones (the ResNet input).
    """
    from brevitas.inject.enum import RestrictValueType, ScalingImplType, ScalingPerOutputType
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat
    from brevitas.quant.base import NarrowIntQuant
    from brevitas.quant.solver import WeightQuantSolver

    class UnitRangeWeightQuant(NarrowIntQuant, WeightQuantSolver):
        # FINN's CNV: a fixed scale of 1 / (2**(b-1) - 1), so b = 2 gives the ternary {-1, 0, 1}
        scaling_impl_type = ScalingImplType.CONST
        scaling_const = 1.0
        restrict_scaling_type = RestrictValueType.FP
        scaling_per_output_type = ScalingPerOutputType.TENSOR
        bit_width = None  # every layer names its own

    class TensorWeightQuant(Int8WeightPerTensorFloat):
        scaling_min_val = 2e-16
        bit_width = None

    class ChannelWeightQuant(TensorWeightQuant):
        scaling_per_output_type = ScalingPerOutputType.CHANNEL

    class UintActQuant(Uint8ActPerTensorFloat):
        scaling_min_val = 2e-16
        restrict_scaling_type = RestrictValueType.LOG_FP
        bit_width = None

    class IntActQuant(Int8ActPerTensorFloat):
        scaling_min_val = 2e-16
        restrict_scaling_type = RestrictValueType.LOG_FP
        bit_width = None

    return UnitRangeWeightQuant, ChannelWeightQuant, TensorWeightQuant, UintActQuant, IntActQuant


class TensorNorm(nn.Module):
    """Batch normalization with one mean and variance over the whole tensor (all samples and
    features) and a scalar affine: FINN's last CNV layer, which keeps the logits' scale stable
    whatever the width of the final weights."""

    def __init__(self, eps: float = 1e-4, momentum: float = 0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("running_mean", torch.zeros(1))
        self.register_buffer("running_var", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one "channel" holding every element: batch_norm's biased/unbiased variance conventions
        flat = nn.functional.batch_norm(x.reshape(1, 1, -1), self.running_mean, self.running_var, self.weight,
                                        self.bias, self.training, self.momentum, self.eps)
        return flat.reshape(x.shape)


def cnv_feature_side(image_size: int) -> int:
    """Side (pixels) of CNV's last feature map for ``image_size`` inputs (below 32 they are
    upsampled to 32 first, which leaves 1x1)."""
    side = max(image_size, CNV_NATIVE_SIZE)
    for _, pool in CNV_CONVS:
        side -= 2  # unpadded 3x3
        if pool:
            side //= 2
    return side


class QuantCNV(nn.Module):
    """FINN's CNV (see :func:`quant_cnv`): ``resize`` (bilinear to 32x32, only for inputs
    smaller than that, else None), ``features`` (6 convs), ``classifier`` (3 linear layers)."""

    def __init__(self, weight_bit_width: int, act_bit_width: int, in_channels: int, image_size: int,
                 num_classes: int):
        super().__init__()
        import brevitas.nn as qnn

        unit_weight, _, _, uint_act, _ = _quantizers()
        self.resize = None
        if image_size < CNV_NATIVE_SIZE:
            self.resize = nn.Upsample(size=(CNV_NATIVE_SIZE, CNV_NATIVE_SIZE), mode="bilinear", align_corners=False)
        layers: list[nn.Module] = []
        channels = in_channels
        for i, (out, pool) in enumerate(CNV_CONVS):
            bits = FIRST_LAYER_BITS if i == 0 else weight_bit_width
            layers += [qnn.QuantConv2d(channels, out, 3, bias=False, weight_quant=unit_weight, weight_bit_width=bits),
                       nn.BatchNorm2d(out, eps=1e-4), qnn.QuantReLU(act_quant=uint_act, bit_width=act_bit_width)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        features = channels * cnv_feature_side(image_size) ** 2
        layers = []
        for width in (features, CNV_FC):
            layers += [qnn.QuantLinear(width, CNV_FC, bias=False, weight_quant=unit_weight,
                                       weight_bit_width=weight_bit_width),
                       nn.BatchNorm1d(CNV_FC, eps=1e-4), qnn.QuantReLU(act_quant=uint_act, bit_width=act_bit_width)]
        layers += [qnn.QuantLinear(CNV_FC, num_classes, bias=False, weight_quant=unit_weight,
                                   weight_bit_width=weight_bit_width),
                   TensorNorm()]
        self.classifier = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (qnn.QuantConv2d, qnn.QuantLinear)):
                nn.init.uniform_(m.weight, -1.0, 1.0)  # the constant-scale codes span [-1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, S, S]`` images to ``[B, num_classes]`` logits."""
        if self.resize is not None:
            x = self.resize(x)
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("quant_cnv", epochs=3, lr=0.02, threads=None)
def quant_cnv(weight_bit_width: int = 2, act_bit_width: int = 2, in_channels: int = 3, image_size: int = 32,
              num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Seed 001's ``quant_cnv``: FINN's CNV with Brevitas layers (w2a2 by default; the seed
    also trains w4a4 and w8a8).

    Three blocks of two unpadded 3x3 ``QuantConv2d`` (64, 64 | 128, 128 | 256, 256 channels, no
    bias), each followed by ``BatchNorm2d`` and an unsigned ``QuantReLU``, with a 2x2 max pool
    after the first two blocks; then two ``QuantLinear`` 512 layers with ``BatchNorm1d`` and
    ``QuantReLU``, a ``QuantLinear`` to ``num_classes`` and a :class:`TensorNorm`. That is 6
    ``QuantConv2d`` and 3 ``QuantLinear`` (9 weight sites) and 8 ``QuantReLU`` (the seed's 8
    activation injection layers, the default ``output`` sites). As in the seed, there is no
    input quantizer (the first conv reads float pixels) and every activation is unsigned.

    Weights are signed narrow-range integers with a constant scale ``1 / (2**(b-1) - 1)`` (codes
    on [-1, 1]; FINN's CNV quantizer), initialized uniformly on [-1, 1]; the first conv always
    has 8-bit weights, the other layers ``weight_bit_width``. Activations have
    ``act_bit_width`` bits and a learned per-tensor scale.

    :func:`~qfault.data.load_demo_model` trains it on the digits (``model_kwargs={"in_channels":
    1, "image_size": 8}``) for 3 epochs, Adam at lr 0.02: about 30 s on 2 cores, about 96 % test
    accuracy at w2a2 (99 % at w4a4 and w8a8).

    Args:
        weight_bit_width: bits of every weight but the first conv's (2 to 16).
        act_bit_width: bits of every ``QuantReLU`` (1 to 16).
        in_channels: input channels (3 for CIFAR, 1 for digits or MNIST).
        image_size: input side in pixels (square images). CNV needs 32: smaller inputs (the 8x8
            digits, 28x28 MNIST) are first resized to 32x32 by a bilinear ``nn.Upsample`` (the
            model's ``resize``), so the network after it is exactly CNV; larger inputs are taken
            as they are and widen the first linear layer to ``256 * side**2`` inputs.
        num_classes: output classes.
        seed: seed of the weight initialization (the global RNG is left untouched).

    Raises:
        QFaultConfigError: an argument out of range (``image_size`` below 1 among them).
    """
    _check_common(weight_bit_width, act_bit_width, in_channels, image_size, num_classes, seed, min_size=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return QuantCNV(weight_bit_width, act_bit_width, in_channels, image_size, num_classes)


class QuantBasicBlock(nn.Module):
    """ResNet basic block: two 3x3 ``QuantConv2d`` + ``BatchNorm2d`` (the first strided), the
    shortcut added before the second ``QuantReLU``. ``downsample`` (a strided 1x1 ``QuantConv2d``
    + ``BatchNorm2d``) replaces the identity shortcut where the shape changes, else None."""

    def __init__(self, in_planes: int, planes: int, stride: int, weight_bit_width: int, act_bit_width: int):
        super().__init__()
        import brevitas.nn as qnn

        _, channel_weight, _, uint_act, _ = _quantizers()

        def conv(cin, cout, k, s):
            return qnn.QuantConv2d(cin, cout, k, stride=s, padding=k // 2, bias=False, weight_quant=channel_weight,
                                   weight_bit_width=weight_bit_width)

        self.conv1 = conv(in_planes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = qnn.QuantReLU(act_quant=uint_act, bit_width=act_bit_width)
        self.conv2 = conv(planes, planes, 3, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = qnn.QuantReLU(act_quant=uint_act, bit_width=act_bit_width)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(conv(in_planes, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class QuantResNet20(nn.Module):
    """The CIFAR ResNet-20 of :func:`quant_resnet20`: ``quant_input``, stem ``conv1``/``bn1``/
    ``relu``, ``layer1``..``layer3`` (3 :class:`QuantBasicBlock` each), ``avgpool``, ``fc``."""

    STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride of the first block)
    BLOCKS = 3

    def __init__(self, weight_bit_width: int, act_bit_width: int, in_channels: int, num_classes: int):
        super().__init__()
        import brevitas.nn as qnn

        _, channel_weight, tensor_weight, uint_act, int_act = _quantizers()
        self.quant_input = qnn.QuantIdentity(act_quant=int_act, bit_width=8)
        self.conv1 = qnn.QuantConv2d(in_channels, 16, 3, padding=1, bias=False, weight_quant=channel_weight,
                                     weight_bit_width=FIRST_LAYER_BITS)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = qnn.QuantReLU(act_quant=uint_act, bit_width=act_bit_width)
        planes = 16
        for i, (width, stride) in enumerate(self.STAGES, start=1):
            blocks = [QuantBasicBlock(planes if b == 0 else width, width, stride if b == 0 else 1,
                                      weight_bit_width, act_bit_width) for b in range(self.BLOCKS)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            planes = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = qnn.QuantLinear(planes, num_classes, bias=True, weight_quant=tensor_weight,
                                  weight_bit_width=FIRST_LAYER_BITS)
        for m in self.modules():
            if isinstance(m, qnn.QuantConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` images to ``[B, num_classes]`` logits."""
        x = self.relu(self.bn1(self.conv1(self.quant_input(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("quant_resnet20", epochs=5, lr=0.01, threads=None)
def quant_resnet20(weight_bit_width: int = 4, act_bit_width: int = 4, in_channels: int = 3, image_size: int = 32,
                   num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Seed 001's ``quant_resnet20``: the CIFAR ResNet-20 (He et al. 2015, section 4.2) with
    Brevitas layers (w4a4 by default, the seed's middle configuration).

    A signed 8-bit ``QuantIdentity`` on the input, a 3x3 16-channel stem conv, three stages of
    three basic blocks (16, 32, 64 channels; the second and third stages start with stride 2),
    global average pooling and a ``QuantLinear`` classifier with bias. Every conv is followed by
    ``BatchNorm2d``; where a block changes the shape, its shortcut is a quantized strided 1x1
    conv + ``BatchNorm2d``. That is 21 ``QuantConv2d`` (19 in the main path, 2 shortcuts) + 1
    ``QuantLinear`` weight sites and 20 activation sites (the input ``QuantIdentity``, the
    stem's and 18 block ``QuantReLU``). Weights: signed narrow-range integers, max-abs scale per
    output channel (per tensor for the classifier); the stem conv and the classifier have 8-bit
    weights, the others ``weight_bit_width``. Activations are unsigned with ``act_bit_width``
    bits (the input quantizer: 8 bits, signed).

    :func:`~qfault.data.load_demo_model` trains it on the digits (``model_kwargs={"in_channels":
    1, "image_size": 8}``) for 5 epochs, Adam at lr 0.01: about 12 s on 2 cores, about 98 % test
    accuracy at w4a4 (92 % at w2a2).

    Args:
        weight_bit_width: bits of the inner convs' weights (2 to 16).
        act_bit_width: bits of every ``QuantReLU`` (1 to 16).
        in_channels: input channels.
        image_size: input side in pixels, 8 or more; only checked: global average pooling makes
            the network independent of it (8x8 digits leave a 2x2 map before pooling).
        num_classes: output classes.
        seed: seed of the weight initialization (the global RNG is left untouched).

    Raises:
        QFaultConfigError: an argument out of range (``image_size`` below 8 among them).
    """
    _check_common(weight_bit_width, act_bit_width, in_channels, image_size, num_classes, seed, min_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return QuantResNet20(weight_bit_width, act_bit_width, in_channels, num_classes)

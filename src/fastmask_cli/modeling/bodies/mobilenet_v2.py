"""MobileNetV2 body (Sandler et al. 2018), as the feature extractor of the TensorFlow Object Detection
API's SSD-MobileNetV2 trained on COCO, whose weights `--init coco-ssd` converts (bodies/coco_ssd.py).

Parameter names follow torchvision's `mobilenet_v2` (`features.0.0.weight`, `features.{i}.conv...`), so a
torchvision checkpoint also loads with `--init FILE`. The network is TensorFlow's, computed exactly:
- input in [-1, 1] (the detector's `Preprocessor`: x / 127.5 - 1), converted here from the
  ImageNet-normalised images every body takes;
- "SAME" padding: a stride-2 3x3 convolution pads (H mod 2, 1) rows and (W mod 2, 1) columns (top,
  bottom; left, right), where PyTorch's padding=1 would pad one on each side and sample a grid one
  pixel off on even sizes;
- BatchNorm epsilon 1e-3.

Cut: `bottom` is the stem and blocks 1-6 (stride 8, 32 channels); `top` blocks 7-13 (stride 16, 96
channels), with its first block's native stride 2 (no pooled stride-1 top, so one stream only: a
stride-24 stream would need the stride-1 top of `Body`, which these weights were not trained for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import IMAGENET_MEAN, IMAGENET_STD, Body, scaled

BN_EPS = 1e-3  # TensorFlow's, which the detector was trained with
# MobileNetV2's inverted residual blocks: (expansion, output channels, repeats, stride); the body stops at
# stride 16 (the first five rows), the SSD detector (modeling/ssd.py) runs them all
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_BLOCKS = BLOCKS[:5]
BOTTOM_BLOCKS = 6  # features.1-6 end at stride 8; features.7-13 are the stride-16 top
# TensorFlow "SAME" input range: the detector's images are x / 127.5 - 1
TF_MEAN, TF_STD = 127.5, 127.5


class SameConv2d(nn.Conv2d):
    """A 3x3 convolution with TensorFlow's "SAME" padding at stride 1 or 2 (`padding` is not used)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return F.conv2d(x, self.weight, self.bias, 1, 1, 1, self.groups)
        height, width = x.shape[-2:]
        # TensorFlow pads max(k - s, 0) = 1 in all for an even side, 2 for an odd one, the extra one after
        return F.conv2d(F.pad(x, (width % 2, 1, height % 2, 1)), self.weight, self.bias, self.stride, 0, 1, self.groups)


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation layout: [conv, BatchNorm, ReLU6]."""
    conv = SameConv2d(cin, cout, 3, stride, groups=groups, bias=False) if kernel == 3 else nn.Conv2d(cin, cout, 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=BN_EPS), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expansion (absent at expansion 1) -> depthwise 3x3 -> linear 1x1 projection, with a shortcut
    when stride and channels allow; `conv` is torchvision's layout, so its parameter names match."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn_relu6(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout, eps=BN_EPS)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2_features(blocks: tuple[tuple[int, int, int, int], ...], width: int = 64) -> nn.Sequential:
    """The stem (32 channels, stride 2), then `blocks` (rows of `BLOCKS`), in torchvision's `features` order."""
    stem = scaled(32, width)
    features: list[nn.Module] = [conv_bn_relu6(3, stem, 3, 2)]
    cin = stem
    for expansion, channels, repeats, stride in blocks:
        cout = scaled(channels, width)
        for r in range(repeats):
            features.append(InvertedResidual(cin, cout, expansion, stride if r == 0 else 1))
            cin = cout
    return nn.Sequential(*features)


class MobileNetV2Body(Body):
    """MobileNetV2 up to stride 16 (`features.0-13`), one stream. `width` 64 is the standard network;
    other values scale every channel by width / 64 (tests)."""

    def __init__(self, arch: str = "mobilenet_v2", width: int = 64, streams: int = 1) -> None:
        if streams != 1:  # the config refuses it first (its streams in registry.BODIES)
            raise ValueError("the mobilenet_v2 body has one stream: its stride-16 top runs at its trained stride 2")
        super().__init__(streams)
        self.features = mobilenet_v2_features(_BLOCKS, width)
        self.stride8_channels = self.features[BOTTOM_BLOCKS].conv[-1].num_features
        self.out_channels = self.features[-1].conv[-1].num_features
        # ImageNet-normalised input -> TensorFlow's [-1, 1]: x * std / 127.5 + (mean / 127.5 - 1)
        self.register_buffer("input_scale", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / TF_STD, persistent=False)
        self.register_buffer("input_shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / TF_STD - TF_MEAN / TF_STD,
                             persistent=False)

    def bottom(self, images: Tensor) -> Tensor:
        return self.features[: BOTTOM_BLOCKS + 1](images * self.input_scale + self.input_shift)

    def top(self, stride8: Tensor) -> Tensor:
        return self.features[BOTTOM_BLOCKS + 1 :](stride8)

    def forward(self, images: Tensor, strides: tuple[int, ...] = (16,)) -> dict[int, Tensor]:
        """Normalised images (N, 3, H, W) -> {8: (N, 32, ceil(H/8), ceil(W/8)), 16: (N, 96, ceil(H/16), ceil(W/16))},
        the strides asked for; the stride-16 map comes from the stride-8 one through the top's own stride 2."""
        stride8 = self.bottom(images)
        features = {8: stride8} if 8 in strides else {}
        if 16 in strides:
            features[16] = self.top(stride8)
        return features

    def stages(self) -> list[nn.Module]:
        """Stem, then the blocks grouped by output channels (16, 24, 32, 64, 96): 6 stages."""
        stages, start = [self.features[0]], 1
        for _, _, repeats, _ in _BLOCKS:
            stages.append(self.features[start : start + repeats])
            start += repeats
        return stages

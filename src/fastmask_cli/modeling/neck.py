"""Neck (paper §4.2, Fig. 4, Table 1): zooms a feature map out by two, applied again and again.

Each application adds one pyramid level (stride 16 -> 32 -> 64 ...). The same module (same weights)
is applied at every level, so the number of levels is chosen at run time, not baked into the weights.
All necks produce ceil(H/2) x ceil(W/2) so that cell k of a level covers cells 2k, 2k+1 below it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _half(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)


class AvgPoolNeck(nn.Module):
    """Non-parametric: keeps the feature mean calibrated but blurs discriminative features."""

    def __init__(self, channels: int, width: int) -> None:  # no parameters: the registry's signature
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return _half(x)


class MaxPoolNeck(nn.Module):
    """Non-parametric: the mean of the features grows with every application."""

    def __init__(self, channels: int, width: int) -> None:  # no parameters: the registry's signature
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, 2, 2, ceil_mode=True)


class FeedForwardNeck(nn.Module):
    """Parametric, no shortcut: conv3x3 (stride 2) -> ReLU -> conv1x1 -> ReLU."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(channels, width, 3, stride=2, padding=1)
        self.conv1x1 = nn.Conv2d(width, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv1x1(F.relu(self.conv3x3(x))))


class ResidualNeck(nn.Module):
    """The paper's neck: avgpool2x2(x) + conv1x1(relu(conv3x3(x))), the convolution at stride 2."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(channels, width, 3, stride=2, padding=1)
        self.conv1x1 = nn.Conv2d(width, channels, 1)
        # Start as the average-pooling neck: the residual branch learns only what pooling loses.
        nn.init.zeros_(self.conv1x1.weight)
        nn.init.zeros_(self.conv1x1.bias)

    def forward(self, x: Tensor) -> Tensor:
        return _half(x) + self.conv1x1(F.relu(self.conv3x3(x)))

"""What every body shares (paper §4.1, §5.1): the cut at stride 16, the two streams, and freezing.

A body is an ImageNet CNN up to stride 8 (`bottom`), then the part that would go from stride 8 to 16
(`top`) run at stride 1. The stride-8 map is average-pooled by 2 before `top` (the stride-16 stream)
and, in the two-stream body (Fig. 7), also by 3 through the *same* `top` (the stride-24 stream).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

# Every body takes images normalised by ImageNet's mean and std, in [0, 255] units (pad_batch pads with the mean)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def scaled(channels: int, width: int, standard: int = 64) -> int:
    """`channels` of the standard body scaled by width / standard, to a multiple of 8 (at least 8)."""
    if width == standard:
        return channels
    return max(8, int(channels * width / standard + 4) // 8 * 8)


class Body(nn.Module):
    """Base of every body: subclasses build `bottom`, `top`, `out_channels` (of `top`) and
    `stride8_channels` (of `bottom`), and list `stages()`."""

    out_channels: int
    stride8_channels: int

    def __init__(self, streams: int) -> None:
        super().__init__()
        self.streams = streams
        self.frozen_stages = 0  # leading stages whose parameters and statistics are fixed
        self.frozen_batchnorm = False  # every BatchNorm of the body fixed (statistics and affine)

    def bottom(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def top(self, stride8: Tensor) -> Tensor:
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """The body's stages in input order, the stem first: the units `freeze` counts."""
        raise NotImplementedError

    def forward(self, images: Tensor, strides: tuple[int, ...] = (16, 24)) -> dict[int, Tensor]:
        """Normalised images (N, 3, H, W) -> {stride: feature (N, C, ceil(H/stride), ceil(W/stride))} for the
        asked strides: 16 (the first stream) and 24 (the second, in a two-stream body only), both
        `out_channels`; 8, the bottom's own map (`stride8_channels`), for a stride-8 level."""
        stride8 = self.bottom(images)
        features = {8: stride8} if 8 in strides else {}
        for stride, factor in ((16, 2), (24, 3))[: self.streams]:
            if stride in strides:
                features[stride] = self.top(F.avg_pool2d(stride8, factor, factor, ceil_mode=True, count_include_pad=False))
        return features

    def freeze(self, stages: int = 0, batchnorm: bool = False) -> None:
        """Fix the first `stages` stages (the stem counts as one) and, with `batchnorm`, every BatchNorm.

        Fine-tuning a pretrained body at a batch of two images: batch statistics of two images are
        noise, so BatchNorm keeps its ImageNet statistics and affine; frozen leading stages also end
        the backward pass early, which is most of a CPU step's time.
        """
        all_stages = self.stages()
        if not 0 <= stages <= len(all_stages):
            raise ValueError(f"this body has {len(all_stages)} stages; cannot freeze {stages}")
        self.frozen_stages, self.frozen_batchnorm = stages, batchnorm
        for index, stage in enumerate(all_stages):
            for p in stage.parameters():
                p.requires_grad_(index >= stages)
        if batchnorm:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Body":
        super().train(mode)
        # frozen parts keep their running statistics: they stay in eval mode while the rest trains
        frozen = [m for s in self.stages()[: self.frozen_stages] for m in s.modules()]
        if self.frozen_batchnorm:
            frozen += [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in frozen:
            m.train(False)
        return self

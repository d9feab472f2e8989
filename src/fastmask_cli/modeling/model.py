"""FastMask (paper Fig. 2): body -> shared neck, applied recursively -> 1x1 reduce -> window norm -> head.

With `config.stride8`, the body's stride-8 map is one more level, below the stride-16 one: its own 1x1
reduce (its channels differ), then the same norm and head. Its 10-cell windows span 80 px, half the
smallest of the paper's pyramid, for objects of 32-64 px (at the input size).

`FastMask.forward` runs the network once (one shot) and returns a `Pyramid`: every level's normalised,
padded feature map and the confidence logit of every window. `FastMask.decode` then cuts out the
features of chosen windows only (the top-k, §5.3) and decodes their masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bodies import build_body
from .bodies.base import IMAGENET_MEAN, IMAGENET_STD
from .config import FastMaskConfig
from .registry import HEADS, NECKS
from .windows import BASE_STRIDES, FINE_STRIDE, Level, WindowGrid, level_strides, stream_and_depth


class WindowNorm(nn.Module):
    """Batch-norm across all windows of all levels (§4.1), so that every level is decoded by the same
    head on the same footing. Statistics are taken over every cell of every level together (windows
    are overlapping crops of those cells)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        if not self.bn.training:  # fixed statistics: a per-channel affine map, no need to concatenate
            bn = self.bn
            return [F.batch_norm(lv, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps) for lv in levels]
        flat = torch.cat([lv.flatten(2) for lv in levels], dim=2)
        normed = self.bn(flat).split([lv.shape[2] * lv.shape[3] for lv in levels], dim=2)
        return [n.view_as(lv) for n, lv in zip(normed, levels)]


@dataclass
class Pyramid:
    """One forward pass: padded level features (N, C, Hp, Wp), window logits (N, gh, gw) per level."""

    features: list[Tensor]
    scores: list[Tensor]
    grid: WindowGrid

    def flat_scores(self) -> Tensor:
        """Window confidence logits of all levels, (N, total windows), in `grid` order."""
        return torch.cat([s.flatten(1) for s in self.scores], dim=1)


class FastMask(nn.Module):
    """The network of `config`. `proposer_options`: the inference settings export chose for these weights
    (ProposerOptions' fields as plain values: inference/options.py checks and applies them), saved and
    loaded with them (modeling/checkpoint.py); empty for a model not shipped."""

    def __init__(self, config: FastMaskConfig) -> None:
        super().__init__()
        self.config = config
        self.proposer_options: dict[str, Any] = {}
        self.body = build_body(config.body, config.body_width, config.streams)
        channels = self.body.out_channels
        self.neck = NECKS.get(config.neck)(channels, config.neck_width)
        self.reduce = nn.Conv2d(channels, config.reduce_channels, 1)
        if config.stride8:
            self.reduce8 = nn.Conv2d(self.body.stride8_channels, config.reduce_channels, 1)
        self.norm = WindowNorm(config.reduce_channels)
        self.head = HEADS.get(config.head)(
            config.reduce_channels, config.window, config.score_hidden, config.mask_hidden, config.mask_size
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def strides(self, scales: int | None = None) -> list[int]:
        return level_strides(self.config.streams, scales or self.config.scales, self.config.stride8)

    def normalize(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) RGB in [0, 255] -> ImageNet-normalised input."""
        # contiguous: a channels-last input (an HWC batch permuted) corrupts memory in CPU backward (torch 2.13)
        return ((images.to(self.mean.dtype) - self.mean) / self.std).contiguous()

    def forward(self, images: Tensor, scales: int | None = None) -> Pyramid:
        """One shot. images: (N, 3, H, W) RGB in [0, 255]; scales: number of pyramid levels (default: config)."""
        strides = self.strides(scales)
        coarse = [s for s in strides if s != FINE_STRIDE]
        depths: dict[int, int] = {}  # body stream base stride -> necks applied on it
        for s in coarse:
            stream, depth = stream_and_depth(s)
            depths[BASE_STRIDES[stream]] = max(depth, depths.get(BASE_STRIDES[stream], 0))
        body = self.body(self.normalize(images), tuple(depths) + ((FINE_STRIDE,) if FINE_STRIDE in strides else ()))
        by_stride = {FINE_STRIDE: self.reduce8(body[FINE_STRIDE])} if FINE_STRIDE in strides else {}
        for base, deepest in depths.items():
            feature = body[base]
            for depth in range(deepest + 1):
                by_stride[base * 2**depth] = self.reduce(feature)
                if depth < deepest:
                    feature = self.neck(feature)  # the same neck weights at every level
        return self.pyramid([by_stride[s] for s in strides], strides)

    def image_pyramid(self, images: Tensor, scales: int | None = None) -> Pyramid:
        """The multi-shot baseline of §6.2 (DeepMask-style): no neck; the body's stride-16 stream runs once
        per level on the image resized by 16 / stride, so each level sees windows of the same image size
        as the one-shot level of that stride. Same reduce, norm and head; same output. A stride-8 level is
        the stride-16 stream on the image up-sampled by 2, through the shared reduce (not `reduce8`)."""
        levels, strides = [], self.strides(scales)
        height, width = images.shape[-2:]
        for stride in strides:
            size = (max(1, round(height * BASE_STRIDES[0] / stride)), max(1, round(width * BASE_STRIDES[0] / stride)))
            # area averaging: anti-aliased at any factor (CUDA's antialiased bilinear fails beyond about 1/64);
            # the stride-8 level's image is up-sampled, by bilinear interpolation
            scaled = images if stride == BASE_STRIDES[0] else F.interpolate(
                images, size=size, mode="area" if stride > BASE_STRIDES[0] else "bilinear", align_corners=None)
            levels.append(self.reduce(self.body(self.normalize(scaled), (BASE_STRIDES[0],))[BASE_STRIDES[0]]))
        return self.pyramid(levels, strides)

    def pyramid(self, levels: list[Tensor], strides: list[int]) -> Pyramid:
        """Reduced level features -> window norm, padding, and the confidence of every window."""
        cfg = self.config
        levels = self.norm(levels)
        grid = WindowGrid([Level(s, lv.shape[2], lv.shape[3], cfg.window_pad, cfg.window) for s, lv in zip(strides, levels)])
        features = [
            F.pad(lv, (cfg.window_pad, g.padded_w - g.feat_w - cfg.window_pad, cfg.window_pad, g.padded_h - g.feat_h - cfg.window_pad))
            for lv, g in zip(levels, grid.levels)
        ]
        return Pyramid(features, [self.head.score(f) for f in features], grid)

    def window_features(self, pyramid: Pyramid, image_index: Tensor, flat: Tensor) -> Tensor:
        """Cut out the (K, C, w, w) features of windows `flat` (grid order) of images `image_index`."""
        w = self.config.window
        level, ys, xs = pyramid.grid.locate(flat)
        offsets = torch.arange(w, device=flat.device)
        out = pyramid.features[0].new_empty((flat.numel(), pyramid.features[0].shape[1], w, w))
        for index, feature in enumerate(pyramid.features):  # a loop over levels, not over windows
            sel = (level == index).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            n, channels, height, width = feature.shape
            # one row per cell (channels last), so that each window cell is one contiguous row to gather
            cells = feature.permute(0, 2, 3, 1).reshape(n * height * width, channels)
            rows = image_index[sel, None, None] * height + ys[sel, None, None] + offsets[:, None]
            cell = rows * width + xs[sel, None, None] + offsets[None, :]  # (K, w, w): the row of each window cell
            out[sel] = cells[cell.reshape(-1)].view(-1, w, w, channels).permute(0, 3, 1, 2)
        return out

    def decode(self, pyramid: Pyramid, image_index: Tensor, flat: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mask logits (K, M, M) and attention logits (K, w, w) or None, for the given windows."""
        return self.head.decode(self.window_features(pyramid, image_index, flat))

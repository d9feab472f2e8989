"""Window geometry (paper §4.1): which image box each sliding window of each pyramid level covers.

This is the one place that maps a window index to image pixels. A level of stride s is a feature map
whose cell (y, x) covers input pixels [x*s, (x+1)*s) x [y*s, (y+1)*s). It is zero-padded by `pad`
cells on each side (and on the bottom/right up to one full window if it is smaller than that), so
that windows can centre on objects at the image border. Window (i, j) of a level spans padded cells
[i, i+w) x [j, j+w), that is the input-pixel box
    x0 = (j - pad) * s,  y0 = (i - pad) * s,  x1 = x0 + w*s,  y1 = y0 + w*s.
Windows are numbered level by level (ascending stride), row-major inside a level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

BASE_STRIDES = (16, 24)  # stride of the first level of each body stream (§5.1)
FINE_STRIDE = 8  # the optional finest level, straight from the body's stride-8 map (no neck)


def level_strides(streams: int, scales: int, stride8: bool = False) -> list[int]:
    """Strides of the first `scales` pyramid levels, ascending.

    One stream gives 16, 32, 64, ...; two streams interleave 16·2^d and 24·2^d:
    16, 24, 32, 48, 64, 96, 128, 192 for 8 scales (7 scales = 4 levels on one stream, 3 on the other).
    With `stride8`, a level of stride 8 comes first and counts as one of the `scales`.
    """
    per_stream = [[base * 2**d for d in range(scales)] for base in BASE_STRIDES[:streams]]
    return ([FINE_STRIDE] if stride8 else []) + sorted(s for strides in per_stream for s in strides)[: scales - stride8]


def stream_and_depth(stride: int) -> tuple[int, int]:
    """Which body stream a level comes from, and how many necks were applied to reach it (not for stride 8)."""
    for stream, base in enumerate(BASE_STRIDES):
        depth = math.log2(stride / base)
        if depth >= 0 and depth == int(depth):
            return stream, int(depth)
    raise ValueError(f"stride {stride} is not 16·2^d or 24·2^d")


def feature_size(pixels: int, stride: int) -> int:
    """Feature cells along one side of an input of `pixels`: every stride step rounds up."""
    return math.ceil(pixels / stride)


@dataclass(frozen=True)
class Level:
    """One pyramid level: its stride and its feature map size (before padding)."""

    stride: int
    feat_h: int
    feat_w: int
    pad: int
    window: int

    @property
    def padded_h(self) -> int:
        return max(self.feat_h + 2 * self.pad, self.window)

    @property
    def padded_w(self) -> int:
        return max(self.feat_w + 2 * self.pad, self.window)

    @property
    def grid_h(self) -> int:
        return self.padded_h - self.window + 1

    @property
    def grid_w(self) -> int:
        return self.padded_w - self.window + 1

    @property
    def num_windows(self) -> int:
        return self.grid_h * self.grid_w


class WindowGrid:
    """All windows of all levels of one pyramid, with flat indices across levels."""

    def __init__(self, levels: list[Level]) -> None:
        self.levels = levels
        counts = torch.tensor([lv.num_windows for lv in levels])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    @classmethod
    def for_input(cls, height: int, width: int, strides: list[int], pad: int, window: int) -> "WindowGrid":
        return cls([Level(s, feature_size(height, s), feature_size(width, s), pad, window) for s in strides])

    @property
    def num_windows(self) -> int:
        return int(self.offsets[-1])

    def locate(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flat window indices -> (level index, row, column)."""
        offsets = self.offsets.to(flat.device)
        level = torch.searchsorted(offsets, flat, right=True) - 1
        local = flat - offsets[level]
        grid_w = torch.tensor([lv.grid_w for lv in self.levels], device=flat.device)[level]
        return level, local // grid_w, local % grid_w

    def boxes(self, flat: Tensor) -> Tensor:
        """Input-pixel boxes (x0, y0, x1, y1) of windows given by flat index, shape (K, 4)."""
        level, ys, xs = self.locate(flat)
        strides = torch.tensor([lv.stride for lv in self.levels], device=flat.device)[level].float()
        pads = torch.tensor([lv.pad for lv in self.levels], device=flat.device)[level]
        windows = torch.tensor([lv.window for lv in self.levels], device=flat.device)[level].float()
        x0 = (xs - pads).float() * strides
        y0 = (ys - pads).float() * strides
        return torch.stack([x0, y0, x0 + windows * strides, y0 + windows * strides], dim=-1)

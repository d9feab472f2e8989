"""Ground truth for sliding windows (paper §5.2): which object each window must find, and its targets.

`assign_windows` labels every window of every pyramid level at once (no loop over windows);
`window_targets` cuts the training targets of the positive windows out of the objects' masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..modeling.windows import WindowGrid

NEGATIVE = -1  # a window that must score low
IGNORE = -2  # a window that is neither: it overlaps a crowd (or a truncated object) and is never sampled
CROWD_OVERLAP = 0.25  # windows sharing this much of themselves or of an ignored region's box are ignored


@dataclass(frozen=True)
class AssignRule:
    """The three conditions of §5.2. The paper's size range is [0.4, 0.8] (the original code: 0.42-0.68);
    [0.4, 0.8] spans a factor 2, so it leaves no object unassigned on a one-stream pyramid either."""

    size_range: tuple[float, float] = (0.4, 0.8)
    centre_fraction: float = 0.2  # the object's centre lies in the central 20% of the window (each axis)


def assign_windows(grid: WindowGrid, boxes: Tensor, ignore: Tensor, rule: AssignRule = AssignRule()) -> Tensor:
    """Ground-truth assignment of paper §5.2: for each window, the index of its object, or NEGATIVE/IGNORE.

    An object (box x0, y0, x1, y1 in input pixels) is assigned to a window when (i) the window fully
    contains it, (ii) its size, the longer side of its box, is within `rule.size_range` of the window's
    side, and (iii) its centre lies in the window's central region. When several objects qualify, the
    window takes the one whose centre is nearest its own. Objects flagged `ignore` (COCO crowds, or
    objects cut by a crop) are never positives, and windows overlapping them are IGNORE, not negatives.

    boxes: (O, 4) float; ignore: (O,) bool. Returns (num_windows,) long, in `grid` order.
    """
    windows = grid.boxes(torch.arange(grid.num_windows, device=boxes.device))  # (W, 4)
    labels = torch.full((windows.shape[0],), NEGATIVE, dtype=torch.long, device=boxes.device)
    if boxes.shape[0] == 0:
        return labels
    w, b = windows[:, None, :], boxes[None, :, :].float()  # (W, 1, 4), (1, O, 4)
    side = w[..., 2] - w[..., 0]
    contains = (b[..., 0] >= w[..., 0]) & (b[..., 1] >= w[..., 1]) & (b[..., 2] <= w[..., 2]) & (b[..., 3] <= w[..., 3])
    size = torch.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]) / side
    fits = (size >= rule.size_range[0]) & (size <= rule.size_range[1])
    dx = ((b[..., 0] + b[..., 2]) - (w[..., 0] + w[..., 2])).abs() / (2 * side)  # centre offset / window side
    dy = ((b[..., 1] + b[..., 3]) - (w[..., 1] + w[..., 3])).abs() / (2 * side)
    central = (dx <= rule.centre_fraction / 2) & (dy <= rule.centre_fraction / 2)
    valid = contains & fits & central & ~ignore[None, :]
    distance = torch.where(valid, dx * dx + dy * dy, torch.full_like(dx, float("inf")))
    nearest = distance.argmin(dim=1)
    positive = valid.any(dim=1)
    labels[positive] = nearest[positive]

    if ignore.any():
        crowd = b[:, ignore]  # (1, C, 4)
        iw = (torch.minimum(w[..., 2], crowd[..., 2]) - torch.maximum(w[..., 0], crowd[..., 0])).clamp(min=0)
        ih = (torch.minimum(w[..., 3], crowd[..., 3]) - torch.maximum(w[..., 1], crowd[..., 1])).clamp(min=0)
        crowd_area = ((crowd[..., 2] - crowd[..., 0]) * (crowd[..., 3] - crowd[..., 1])).clamp(min=1.0)
        overlap = (iw * ih) / torch.minimum(side * side, crowd_area)
        labels[~positive & (overlap >= CROWD_OVERLAP).any(dim=1)] = IGNORE
    return labels


def _coverage(lo: Tensor, hi: Tensor, bins: int, start: Tensor, stop: Tensor) -> Tensor:
    """(K, bins, n): how much of each of `bins` equal bins of window interval [lo, hi) (K of them) the
    intervals [start, stop) cover, as a fraction of the bin width. start/stop broadcast to (K, 1, n)."""
    width = ((hi - lo) / bins)[:, None, None]
    b0 = lo[:, None, None] + width * torch.arange(bins, device=lo.device)[None, :, None]
    return (torch.minimum(b0 + width, stop) - torch.maximum(b0, start)).clamp(min=0) / width


def window_targets(masks: Tensor, boxes: Tensor, objects: Tensor, windows: Tensor, mask_size: int, cells: int,
                   chunk: int = 16) -> tuple[Tensor, Tensor]:
    """Training targets of positive windows (§5.2): each object's mask cropped to its window and
    area-resized to mask_size x mask_size, and its box as a cells x cells attention map.

    masks: (O, H, W) uint8/bool; boxes: (O, 4) float; objects: (K,) object of each window;
    windows: (K, 4) window boxes. Targets are soft (the covered fraction of each target pixel),
    so a window hanging over the image border sees zeros there.
    """
    height, width = masks.shape[-2:]
    pixels_y = torch.arange(height, device=masks.device, dtype=torch.float32)
    pixels_x = torch.arange(width, device=masks.device, dtype=torch.float32)
    segments = []
    for start in range(0, objects.shape[0], chunk):  # bounds memory at chunk x H x W floats
        obj, win = objects[start : start + chunk], windows[start : start + chunk].float()
        rows = _coverage(win[:, 1], win[:, 3], mask_size, pixels_y, pixels_y + 1)  # (k, M, H)
        cols = _coverage(win[:, 0], win[:, 2], mask_size, pixels_x, pixels_x + 1)  # (k, M, W)
        segments.append(rows @ masks[obj].float() @ cols.transpose(1, 2))
    segment = torch.cat(segments) if segments else masks.new_zeros((0, mask_size, mask_size), dtype=torch.float32)
    box, win = boxes[objects].float(), windows.float()
    rows = _coverage(win[:, 1], win[:, 3], cells, box[:, 1, None, None], box[:, 3, None, None])  # (K, w, 1)
    cols = _coverage(win[:, 0], win[:, 2], cells, box[:, 0, None, None], box[:, 2, None, None])
    attention = rows * cols.transpose(1, 2)
    return segment.clamp(0, 1), attention.clamp(0, 1)

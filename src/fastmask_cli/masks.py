"""Masks in image coordinates: paste-back into window boxes, tight boxes, COCO RLE, suppression.

Paste-back is vectorised: resizing a mask to its box and placing it in the image is a bilinear
interpolation that separates into rows and columns, so all K masks are pasted with two batched
matrix products on the model's device, `Ry @ mask @ Rx^T`, with no Python loop per mask.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor


def _resize_weights(lo: Tensor, hi: Tensor, pixels: Tensor, size: int, mask_size: int) -> Tensor:
    """(K, n, mask_size) bilinear weights mapping a mask spanning [lo, hi) onto pixels `pixels` (K, n).

    A pixel takes its value at its centre; pixels whose centre falls outside [lo, hi), or outside the
    image (0..size-1), get zero, which is how a window hanging over the image border is clipped.
    """
    centres = pixels.float() + 0.5
    lo, hi = lo[:, None].float(), hi[:, None].float()
    # align_corners=False convention: mask pixel m covers [m, m+1) in mask coordinates
    u = (centres - lo) / (hi - lo) * mask_size - 0.5
    inside = (centres >= lo) & (centres < hi) & (pixels < size)
    u = u.clamp(0, mask_size - 1)
    i0 = u.floor().long()
    frac = u - i0
    i1 = (i0 + 1).clamp(max=mask_size - 1)
    weights = torch.zeros(*pixels.shape, mask_size, device=lo.device)
    weights.scatter_add_(2, i0[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, i1[..., None], frac[..., None])
    return weights * inside[..., None]


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Resize each (M, M) mask to its box (x0, y0, x1, y1, image pixels) inside a height x width image.

    masks: (K, M, M) probabilities; returns (K, height, width), zero outside each box.
    """
    mask_size, k = masks.shape[-1], masks.shape[0]
    rows = _resize_weights(boxes[:, 1], boxes[:, 3], torch.arange(height, device=masks.device).expand(k, -1), height, mask_size)
    cols = _resize_weights(boxes[:, 0], boxes[:, 2], torch.arange(width, device=masks.device).expand(k, -1), width, mask_size)
    return rows @ masks.float() @ cols.transpose(1, 2)  # (K, H, M) @ (K, M, M) @ (K, M, W)


def paste_binary(masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float, chunk: int = 16) -> tuple[Tensor, Tensor]:
    """`paste_masks(...) >= threshold` as (K, H, W) bool, computing only inside each box; and the
    masks' tight (x, y, w, h) boxes (zero for an empty mask), found from the crops.

    Masks are sorted by box size and pasted in chunks of similar size, each over the largest crop of
    its chunk rather than the whole image: most proposals cover a small part of it.
    """
    k, mask_size = masks.shape[0], masks.shape[-1]
    # stored column-major per mask, (K, W, H), which is the layout COCO's RLE encoder reads: no copy later
    out = torch.zeros((k, width, height), dtype=torch.bool, device=masks.device)
    tight = torch.zeros((k, 4), device=masks.device)
    limits = torch.tensor([width, height, width, height], device=boxes.device, dtype=torch.float32)
    crop = torch.stack([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1).flatten(1).clamp(min=0).minimum(limits).long()
    extent = (crop[:, 2:] - crop[:, :2]).clamp(min=0)  # (K, 2) crop width, height
    order = torch.argsort(extent[:, 0] * extent[:, 1])
    for start in range(0, k, chunk):
        idx = order[start : start + chunk]
        crop_w, crop_h = int(extent[idx, 0].max()), int(extent[idx, 1].max())
        if crop_w == 0 or crop_h == 0:
            continue
        ys = crop[idx, 1, None] + torch.arange(crop_h, device=masks.device)  # (k, h) image rows of each crop
        xs = crop[idx, 0, None] + torch.arange(crop_w, device=masks.device)
        rows = _resize_weights(boxes[idx, 1], boxes[idx, 3], ys, height, mask_size)
        cols = _resize_weights(boxes[idx, 0], boxes[idx, 2], xs, width, mask_size)
        # transposed, (k, w, h): the crops come out in the output's column-major layout
        binary = (cols @ masks[idx].float().transpose(1, 2) @ rows.transpose(1, 2)) >= threshold
        found, nonempty = mask_boxes(binary)  # (y, x, h, w) in crop coordinates; a crop is zero outside its box
        found = found[:, [1, 0, 3, 2]]
        found[:, :2] += crop[idx, :2].float() * nonempty[:, None]
        tight[idx] = found
        for j, i in enumerate(idx.tolist()):  # place each crop: K small copies, no per-pixel work
            x0, y0, w, h = int(crop[i, 0]), int(crop[i, 1]), int(extent[i, 0]), int(extent[i, 1])
            out[i, x0 : x0 + w, y0 : y0 + h] = binary[j, :w, :h]
    return out.transpose(1, 2), tight


def mask_boxes(binary: Tensor) -> tuple[Tensor, Tensor]:
    """Tight (x, y, w, h) boxes of (K, H, W) binary masks, and which masks are non-empty."""
    cols = binary.any(dim=1)  # (K, W)
    rows = binary.any(dim=2)  # (K, H)
    nonempty = cols.any(dim=1)
    x0 = cols.float().argmax(dim=1)
    y0 = rows.float().argmax(dim=1)
    x1 = cols.shape[1] - cols.flip(1).float().argmax(dim=1)
    y1 = rows.shape[1] - rows.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1).float()
    return boxes * nonempty[:, None], nonempty


def encode_masks(binary: Tensor) -> list[dict]:
    """(K, H, W) binary masks -> COCO RLEs with `counts` as str (JSON-ready)."""
    if binary.shape[0] == 0:
        return []
    # pycocotools wants (H, W, K) in Fortran order, which is (K, W, H) in C order (what paste_binary stores)
    column_major = binary.transpose(1, 2).contiguous().cpu()
    column_major = column_major.view(torch.uint8) if column_major.dtype == torch.bool else column_major.to(torch.uint8)
    fortran = column_major.numpy().transpose(2, 1, 0)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_masks(rles: list[dict]) -> np.ndarray:
    """COCO RLEs (counts as str or bytes; pycocotools takes both) -> (K, H, W) bool array."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (x, y, w, h) boxes."""
    ax1, ay1 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-9)


def greedy_nms(iou: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy suppression; items must be sorted by descending score."""
    suppressed = np.zeros(len(iou), dtype=bool)
    keep = []
    for i in range(len(iou)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > threshold
    return np.asarray(keep, dtype=np.int64)


def mask_iou(rles: list[dict]) -> np.ndarray:
    """IoU matrix of COCO RLE masks."""
    return np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))

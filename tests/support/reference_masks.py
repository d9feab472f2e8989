"""The dense post-processing of fastmask 0.1 (before masks were kept as crops), verbatim in what it
computes, kept as the reference that `postprocess.paste_crops`, `encode_crops` and `mask_nms` must equal byte
for byte: every mask placed into a full (W, H) image, encoded by `pycocotools.mask.encode`, and
duplicates found on the full mask-IoU matrix."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from fastmask_cli.inference.postprocess import _resize_weights, greedy_nms

PASTE_CHUNK = 64  # candidates pasted at once by Proposer._finish


def mask_boxes(binary: Tensor) -> tuple[Tensor, Tensor]:
    """Tight (x, y, w, h) boxes of (K, H, W) binary masks, and which masks are non-empty."""
    cols = binary.any(dim=1)
    rows = binary.any(dim=2)
    nonempty = cols.any(dim=1)
    x0 = cols.float().argmax(dim=1)
    y0 = rows.float().argmax(dim=1)
    x1 = cols.shape[1] - cols.flip(1).float().argmax(dim=1)
    y1 = rows.shape[1] - rows.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1).float()
    return boxes * nonempty[:, None], nonempty


def paste_binary(masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float, chunk: int = 16) -> tuple[Tensor, Tensor]:
    """(K, H, W) bool masks pasted into the full image, and their tight (x, y, w, h) boxes."""
    k, mask_size = masks.shape[0], masks.shape[-1]
    out = torch.zeros((k, width, height), dtype=torch.bool, device=masks.device)
    tight = torch.zeros((k, 4), device=masks.device)
    limits = torch.tensor([width, height, width, height], device=boxes.device, dtype=torch.float32)
    crop = torch.stack([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1).flatten(1).clamp(min=0).minimum(limits).long()
    extent = (crop[:, 2:] - crop[:, :2]).clamp(min=0)
    order = torch.argsort(extent[:, 0] * extent[:, 1])
    for start in range(0, k, chunk):
        idx = order[start : start + chunk]
        crop_w, crop_h = int(extent[idx, 0].max()), int(extent[idx, 1].max())
        if crop_w == 0 or crop_h == 0:
            continue
        ys = crop[idx, 1, None] + torch.arange(crop_h, device=masks.device)
        xs = crop[idx, 0, None] + torch.arange(crop_w, device=masks.device)
        rows = _resize_weights(boxes[idx, 1], boxes[idx, 3], ys, height, mask_size)
        cols = _resize_weights(boxes[idx, 0], boxes[idx, 2], xs, width, mask_size)
        binary = (cols @ masks[idx].float().transpose(1, 2) @ rows.transpose(1, 2)) >= threshold
        found, nonempty = mask_boxes(binary)
        found = found[:, [1, 0, 3, 2]]
        found[:, :2] += crop[idx, :2].float() * nonempty[:, None]
        tight[idx] = found
        for j, i in enumerate(idx.tolist()):
            x0, y0, w, h = int(crop[i, 0]), int(crop[i, 1]), int(extent[i, 0]), int(extent[i, 1])
            out[i, x0 : x0 + w, y0 : y0 + h] = binary[j, :w, :h]
    return out.transpose(1, 2), tight


def encode_masks(binary: Tensor) -> list[dict]:
    """(K, H, W) binary masks -> COCO RLEs with `counts` as str."""
    if binary.shape[0] == 0:
        return []
    column_major = binary.transpose(1, 2).contiguous().cpu().view(torch.uint8)
    rles = mask_utils.encode(column_major.numpy().transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def dense_finish(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """RLEs, tight boxes and candidate indices of the non-empty masks, in candidate order."""
    rles, tight, kept = [], [], []
    for start in range(0, probs.shape[0], PASTE_CHUNK):
        binary, chunk_boxes = paste_binary(probs[start : start + PASTE_CHUNK], boxes[start : start + PASTE_CHUNK],
                                           height, width, threshold)
        nonempty = chunk_boxes[:, 2] > 0
        rles += encode_masks(binary[nonempty])
        tight.append(chunk_boxes[nonempty])
        kept.append(torch.nonzero(nonempty).squeeze(1) + start)
    return rles, torch.cat(tight).numpy(), torch.cat(kept).numpy()


def dense_mask_nms(rles: list[dict], threshold: float) -> np.ndarray:
    """Greedy suppression on the full mask-IoU matrix."""
    iou = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)), dtype=np.float64).reshape(len(rles), len(rles))
    return greedy_nms(iou, threshold)

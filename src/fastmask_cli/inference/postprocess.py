"""Masks in image coordinates: paste-back into window boxes, tight boxes, COCO RLE, suppression.

A decoded mask (M x M probabilities over its window) is resized to its window's box by bilinear
interpolation, which separates into rows and columns: `Rx @ mask^T @ Ry^T` (column-major, the order of
COCO's RLE), with `_resize_weights` giving Rx and Ry. The pipeline never pastes a full image: each mask is computed only over its crop (its box, clipped to the image and
to where its cells come near the threshold), crops of similar size batched on the model's device
(`paste_crops`); COCO's run lengths are found from the crops on that device and only they cross to the
host (`encode_crops`); duplicates are suppressed measuring only the mask pairs whose boxes and areas
allow an IoU above the threshold (`mask_nms`). The output is byte for byte what pasting, thresholding
and encoding the full masks gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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


@dataclass
class MaskCrops:
    """Binary masks that are zero outside their crops: mask `index[i]` is `binary[i]`, column-major
    ((width, height) of the crop), with its corner at image pixel `origin[i]` = (x, y). Crops of one
    chunk share the size of its largest; each is zero past its own extent."""

    binary: Tensor  # (k, w, h) bool
    origin: Tensor  # (k, 2) long
    index: Tensor  # (k,) long, position of each mask among those pasted


# A pasted pixel is a convex combination of the mask cells around it: where all of them are below the
# threshold by this much, it is below the threshold whatever the rounding, and need not be computed.
REACH_MARGIN = 1e-4


def _reach(masks: Tensor, lo: Tensor, hi: Tensor, threshold: float, dim: int) -> tuple[Tensor, Tensor]:
    """Image pixel range [start, end) along one axis (rows for dim=1, columns for dim=2) outside of which
    the pasted mask is surely below `threshold`; empty where no cell comes near it.

    A pixel at u (mask coordinates, `_resize_weights`) reads cells floor(u) and floor(u) + 1, so it can
    reach the threshold only if r0 - 1 <= u < r1 + 1, r0..r1 being the cells that come near it; one
    pixel more on each side absorbs rounding.
    """
    mask_size = masks.shape[-1]
    near = (masks >= threshold - REACH_MARGIN).any(dim=3 - dim)  # (K, M) along the axis
    found = near.any(dim=1)
    first = near.float().argmax(dim=1).float()
    last = (mask_size - 1 - near.flip(1).float().argmax(dim=1)).float()
    scale = (hi - lo) / mask_size
    start = ((first - 0.5) * scale + lo - 0.5).floor() - 1
    end = ((last + 1.5) * scale + lo - 0.5).ceil() + 1
    return start, torch.where(found, end, start)


def _chunks(extents: list[list[int]], most: int, pixels: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop, width, height) of consecutive chunks of crops of `extents` (w, h), sorted by longer
    side: at most `most` crops, and at most `pixels` once padded to the chunk's widest and tallest (the
    memory of one batched product), but at least one crop."""
    start = 0
    while start < len(extents):
        width, height = extents[start]
        stop = start + 1
        while stop < len(extents) and stop - start < most:
            w, h = max(width, extents[stop][0]), max(height, extents[stop][1])
            if (stop - start + 1) * w * h > pixels:
                break
            width, height, stop = w, h, stop + 1
        yield start, stop, width, height
        start = stop


def paste_crops(masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float,
                chunk: int = 16, pixels: int = 8_000_000) -> list[MaskCrops]:
    """Masks resized to their boxes in a height x width image and thresholded (`>= threshold`), computed and
    kept only where they can be on.

    masks: (K, M, M) probabilities; boxes: (K, 4) window boxes (x0, y0, x1, y1) in image pixels, which may
    hang over the border. Each mask is pasted over a crop: its box, clipped to the image and to the part
    its cells near the threshold can reach (`_reach`). Crops are sorted by their longer side and pasted in
    chunks of at most `chunk` crops and `pixels` padded pixels (`_chunks`), each padded to the largest
    crop of its chunk; nothing is written or read outside a crop (as
    segment-anything's `amg.py` keeps mask batches cropped), on the masks' device. A pixel's value does not
    depend on the crop or chunk it is computed in, so the result is that of pasting every mask over the
    whole image.
    """
    mask_size = masks.shape[-1]
    device = masks.device
    limits = torch.tensor([width, height, width, height], device=boxes.device, dtype=torch.float32)
    crop = torch.stack([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1).flatten(1).clamp(min=0).minimum(limits)
    if threshold > REACH_MARGIN:
        x_start, x_end = _reach(masks, boxes[:, 0], boxes[:, 2], threshold, dim=2)
        y_start, y_end = _reach(masks, boxes[:, 1], boxes[:, 3], threshold, dim=1)
        crop = torch.cat([crop[:, :2].maximum(torch.stack([x_start, y_start], 1)),
                          crop[:, 2:].minimum(torch.stack([x_end, y_end], 1))], dim=1)
    crop = crop.long()
    extent = (crop[:, 2:] - crop[:, :2]).clamp(min=0)  # (K, 2) crop width, height
    # by longer side: a chunk is padded to its widest and its tallest crop, and on COCO windows this
    # wastes less than sorting by area (31 against 44 Mpx at top-1000 on a val photo, for 19 Mpx of crops)
    side = extent.max(dim=1).values
    order = torch.argsort(side, stable=True)
    order = order[extent[order].min(dim=1).values > 0]  # nothing to paste: an empty mask
    out = []
    for start, stop, crop_w, crop_h in _chunks(extent[order].cpu().tolist(), chunk, pixels):
        idx = order[start:stop]
        ys = crop[idx, 1, None] + torch.arange(crop_h, device=device)  # (k, h) image rows of each crop
        xs = crop[idx, 0, None] + torch.arange(crop_w, device=device)
        rows = _resize_weights(boxes[idx, 1], boxes[idx, 3], ys, height, mask_size)
        cols = _resize_weights(boxes[idx, 0], boxes[idx, 2], xs, width, mask_size)
        # past a crop's own extent (the chunk's padding) rows and columns are zeroed, so nothing comes out there
        rows *= (torch.arange(crop_h, device=device) < extent[idx, 1, None])[..., None]
        cols *= (torch.arange(crop_w, device=device) < extent[idx, 0, None])[..., None]
        # transposed, (k, w, h): crops come out column-major, the order of COCO's RLE
        binary = (cols @ masks[idx].float().transpose(1, 2) @ rows.transpose(1, 2)) >= threshold
        if threshold <= 0:  # zero pastes to "on": keep the padding out
            binary &= (torch.arange(crop_w, device=device) < extent[idx, 0, None])[:, :, None]
            binary &= (torch.arange(crop_h, device=device) < extent[idx, 1, None])[:, None, :]
        out.append(MaskCrops(binary, crop[idx, :2], idx))
    return out


def _sparse_nonzero(flags: Tensor) -> Tensor:
    """Flat indices of the True entries of a contiguous bool tensor whose length is a multiple of 8, where
    few are True: found eight bytes at a time, then within the words that hold any (on the CPU,
    `nonzero` on every byte was the slowest step of encoding)."""
    bytes_ = flags.reshape(-1).view(torch.uint8)
    words = (bytes_.view(torch.int64) != 0).nonzero().squeeze(1)
    within = bytes_.view(-1, 8)[words].nonzero()
    return words[within[:, 0]] * 8 + within[:, 1]


def encode_crops(chunks: list[MaskCrops], count: int, height: int, width: int) -> tuple[list[dict | None], Tensor, np.ndarray]:
    """COCO RLEs (`counts` as str), tight (x, y, w, h) boxes (on the crops' device) and areas (pixels) of
    `count` masks pasted by `paste_crops`, in their pasted order; None, a zero box and area 0 for an
    empty mask.

    The run lengths are found on the crops' device from the crops alone: every run boundary of a mask
    lies in its crop, where a crop column's value changes or where it ends (the zeros below it). A crop
    spanning the full image height ends one column where the next begins; those two changes cancel.
    Only the run lengths (column-major, starting with a run of zeros) cross to the host, where
    `pycocotools.mask.frPyObjects` compresses them into the string `pycocotools.mask.encode` gives for
    the full mask.
    """
    device = chunks[0].binary.device if chunks else torch.device("cpu")
    tight = torch.zeros((count, 4), device=device)
    changes = _changes(chunks) if chunks else None
    if changes is None:  # no chunk, or cells came near the threshold but no pixel reached it
        return [None] * count, tight, np.zeros(count, dtype=np.int64)
    mask, x, y = changes
    # tight boxes: the first change of a column is where its first run of ones starts, the last where one ends
    nonempty = torch.zeros(count, dtype=torch.bool, device=device)
    nonempty[mask] = True
    lows = torch.full((count, 2), height + width, dtype=torch.long, device=device)
    highs = torch.zeros((count, 2), dtype=torch.long, device=device)
    lows.scatter_reduce_(0, mask[:, None].expand(-1, 2), torch.stack([x, y], 1), "amin")
    highs.scatter_reduce_(0, mask[:, None].expand(-1, 2), torch.stack([x + 1, y], 1), "amax")
    tight[nonempty] = torch.cat([lows, highs - lows], dim=1)[nonempty].float()
    rles, areas = _encode_changes(mask, x * height + y, count, height, width)
    return rles, tight, areas


def _changes(chunks: list[MaskCrops]) -> tuple[Tensor, Tensor, Tensor] | None:
    """Where a crop column's value changes, in image pixels: (mask index, x, y) of each change, grouped by
    mask and sorted by column then row; None where no pixel is set."""
    device = chunks[0].binary.device
    # changes[m, x, j] of every chunk, one after the other in one buffer: the value at crop row j differs
    # from the one above it (rows -1 and h are zero)
    sizes = [c.binary.shape[0] * c.binary.shape[1] * (c.binary.shape[2] + 1) for c in chunks]
    total = sum(sizes)
    buffer = torch.zeros(total + (-total) % 8, dtype=torch.bool, device=device)
    start = 0
    for crops, size in zip(chunks, sizes):
        k, w, h = crops.binary.shape
        changes = buffer[start : start + size].view(k, w, h + 1)
        changes[:, :, 0] = crops.binary[:, :, 0]
        torch.ne(crops.binary[:, :, 1:], crops.binary[:, :, :-1], out=changes[:, :, 1:h])
        changes[:, :, h] = crops.binary[:, :, h - 1]
        start += size
    flat = _sparse_nonzero(buffer)  # sorted: chunk by chunk, mask by mask, column by column
    if flat.numel() == 0:
        return None
    # back to (chunk, mask, column x, row j)
    shapes = torch.tensor([c.binary.shape for c in chunks], device=device)  # (chunks, 3): k, w, h
    chunk_start = torch.tensor([0] + sizes, device=device).cumsum(0)[:-1]
    mask_base = F.pad(shapes[:, 0].cumsum(0)[:-1], (1, 0))
    which = torch.searchsorted(chunk_start, flat, right=True) - 1
    local = flat - chunk_start[which]
    column = shapes[which, 2] + 1
    m, rest = local // (shapes[which, 1] * column), local % (shapes[which, 1] * column)
    x, j = rest // column, rest % column
    entry = mask_base[which] + m
    origin = torch.cat([c.origin for c in chunks])[entry]
    return torch.cat([c.index for c in chunks])[entry], origin[:, 0] + x, origin[:, 1] + j


def _encode_changes(mask: Tensor, position: Tensor, count: int, height: int, width: int) -> tuple[list[dict | None], np.ndarray]:
    """COCO RLEs and areas of `count` masks from their changes (`_changes`) at column-major `position`s."""
    device = mask.device
    # run lengths. The changes come grouped by mask (one chunk each) and sorted by position within it.
    pixels = height * width
    same = (position[1:] == position[:-1]) & (mask[1:] == mask[:-1])
    keep = ~(F.pad(same, (0, 1)) | F.pad(same, (1, 0))) & (position < pixels)
    mask, position = mask[keep], position[keep]
    first = F.pad(mask[1:] != mask[:-1], (1, 0), value=True)
    last = F.pad(mask[1:] != mask[:-1], (0, 1), value=True)
    runs = position - F.pad(position[:-1], (1, 0)).masked_fill(first, 0)
    # each mask's counts end with the run up to the last pixel: one slot more after each mask's changes
    slot = torch.arange(mask.numel(), device=device) + first.cumsum(0) - 1
    counts = torch.empty(mask.numel() + int(first.sum()), dtype=torch.long, device=device)
    counts[slot] = runs
    counts[slot[last] + 1] = pixels - position[last]
    starts = slot[first].cpu().numpy()
    owners = mask[first].cpu().numpy()
    counts = counts.cpu().numpy().astype(np.uint32)
    segments = np.split(counts, starts[1:])
    # a mask's area: its runs of ones, every second run from the second
    within = np.arange(counts.size) - np.repeat(starts, np.diff(starts, append=counts.size))
    ones = np.add.reduceat(counts.astype(np.int64) * (within % 2), starts)
    encoded = mask_utils.frPyObjects([{"size": [height, width], "counts": c} for c in segments], height, width)
    rles: list[dict | None] = [None] * count
    areas = np.zeros(count, dtype=np.int64)
    areas[owners] = ones
    for i, rle in zip(owners.tolist(), encoded):
        rle["counts"] = rle["counts"].decode("ascii")
        rles[i] = rle
    return rles, areas


def decode_masks(rles: list[dict]) -> np.ndarray:
    """COCO RLEs (counts as str or bytes; pycocotools takes both) -> (K, H, W) bool array."""
    if not rles:
        return np.zeros((0, 0, 0), dtype=bool)
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection areas of (x, y, w, h) boxes, float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.minimum((a[:, 0] + a[:, 2])[:, None], (b[:, 0] + b[:, 2])[None]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum((a[:, 1] + a[:, 3])[:, None], (b[:, 1] + b[:, 3])[None]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (x, y, w, h) boxes."""
    inter = box_intersection(a, b)
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


def mask_nms(rles: list[dict], boxes: np.ndarray, areas: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy suppression of masks whose IoU exceeds `threshold` (items sorted by
    descending score), with their tight (x, y, w, h) boxes and areas (pixels): what `greedy_nms` keeps
    on the full mask-IoU matrix, computing few of its entries.

    Two masks can overlap no more than their boxes do, so their IoU is at most
    min(box intersection, area a, area b) / max(area a, area b). Only pairs whose bound exceeds the
    threshold, and only rows of kept masks, are measured exactly (`pycocotools.mask.iou` on the RLEs).
    """
    count = len(rles)
    area = np.asarray(areas, dtype=np.float64)
    bound = np.minimum(box_intersection(boxes, boxes), np.minimum(area[:, None], area[None]))
    bound /= np.maximum(np.maximum(area[:, None], area[None]), 1)
    # pairs let through by the margin are only measured, not suppressed
    rows, cols = np.nonzero(np.triu(bound > threshold - 1e-5, k=1))
    first = np.searchsorted(rows, np.arange(count + 1))  # suspects of row i: cols[first[i]:first[i + 1]]
    suppressed = np.zeros(count, dtype=bool)
    # only a mask with suspects can suppress: the others are kept or not by the masks before them
    for i in np.unique(rows).tolist():
        if suppressed[i]:
            continue
        later = cols[first[i] : first[i + 1]]
        later = later[~suppressed[later]]
        if later.size:
            iou = np.asarray(mask_utils.iou([rles[j] for j in later], [rles[i]], [0])).reshape(-1)
            suppressed[later[iou > threshold]] = True
    return np.flatnonzero(~suppressed)

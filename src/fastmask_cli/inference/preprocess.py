"""Images as the network takes them (paper §5.3): resized so the longer side is the network's size,
then batched, padded bottom/right with the mean colour."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from ..modeling.model import IMAGENET_MEAN


def pad_batch(images: list[np.ndarray], device: torch.device) -> Tensor:
    """(N, 3, H, W) float batch of RGB uint8 images padded bottom/right to a common size with the mean
    colour, which is zero after the model normalises it. For a GPU the batch is put together in pinned
    memory and copied without blocking the host."""
    height, width = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    pinned = device.type == "cuda"
    batch = torch.empty((len(images), height, width, 3), dtype=torch.uint8, pin_memory=pinned)
    batch[:] = torch.tensor([round(c) for c in IMAGENET_MEAN], dtype=torch.uint8)
    for i, im in enumerate(images):
        batch[i, : im.shape[0], : im.shape[1]] = torch.from_numpy(im)
    return batch.to(device, non_blocking=pinned).permute(0, 3, 1, 2).float()


def resize_longer_side(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longer side is `size` pixels; returns the image and the scale factor."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation), scale


@dataclass
class Prepared:
    """An image as the network takes it: resized so its longer side is the network's size (done by
    `prepare`, in a DataLoader worker or in turn), with the original size that masks are pasted into."""

    image: np.ndarray  # (h, w, 3) uint8 RGB, resized
    scale: float  # resized / original
    height: int  # of the original image
    width: int


def prepare(image: np.ndarray, size: int) -> Prepared:
    """`image` (H, W, 3) uint8 RGB resized for a network of input size `size` (its longer side)."""
    resized, scale = resize_longer_side(image, size)
    return Prepared(resized, scale, image.shape[0], image.shape[1])

"""Finding and reading images, with one clear reason for every file that cannot be used.

Pixels are taken as stored (EXIF orientation is not applied), which is how COCO's annotations and
image sizes are defined.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import FastMaskError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
MIN_SIDE = 8  # pixels; smaller images hold nothing a 160-px window could propose
MAX_PIXELS = 64_000_000  # larger images would need gigabytes for 1000 full-resolution masks


class ImageError(FastMaskError):
    """One image cannot be used; the run skips it and lists it in the summary."""


def list_images(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under `folder` (recursively, as sorted relative POSIX paths), and the other files."""
    if not folder.exists():
        raise FastMaskError(f"images folder not found: {folder}")
    if not folder.is_dir():
        raise FastMaskError(f"not a folder: {folder}")
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(rel.as_posix())
    return images, others


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read any common image as (H, W, 3) uint8 RGB; raise ImageError saying why it cannot be used."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    if data.size == 0:
        raise ImageError("empty file (0 bytes)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("not a decodable image (corrupt or not an image format)")
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"too small ({width}x{height} px; at least {MIN_SIDE} px per side needed)")
    if height * width > max_pixels:
        raise ImageError(f"too large ({width}x{height} px = {height * width / 1e6:.0f} MP; limit {max_pixels / 1e6:.0f} MP)")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype} (8- or 16-bit images only)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:  # transparency carries no object evidence here: drop it
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"unsupported number of channels ({channels})")

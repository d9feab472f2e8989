"""Overlay pictures of proposals, for a quick look at what the model found."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..io.files import room_for
from .proposer import Proposals


def draw_proposals(image: np.ndarray, proposals: Proposals, top: int = 10) -> np.ndarray:
    """RGB image with the `top` best masks tinted in distinct colours, their boxes and scores."""
    canvas = image.astype(np.float32)
    rng = np.random.default_rng(0)  # same colours for the same rank in every picture
    colours = rng.integers(64, 256, size=(top, 3)).astype(np.float32)
    masks = proposals.masks()[:top]
    for mask, colour in zip(masks[::-1], colours[: len(masks)][::-1]):  # best drawn last, on top
        canvas[mask] = 0.45 * canvas[mask] + 0.55 * colour
    canvas = canvas.clip(0, 255).astype(np.uint8)
    for (x, y, w, h), score, colour in zip(proposals.boxes[:top], proposals.scores[:top], colours):
        pt0, pt1 = (int(x), int(y)), (int(x + w) - 1, int(y + h) - 1)
        cv2.rectangle(canvas, pt0, pt1, colour.tolist(), 2)
        cv2.putText(canvas, f"{score:.2f}", (pt0[0] + 2, pt0[1] + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour.tolist(), 1, cv2.LINE_AA)
    return canvas


def save_overlay(path: str, image: np.ndarray, proposals: Proposals, top: int = 10) -> None:
    """Write the overlay as PNG; encoded here and written by Python, which takes any file name (OpenCV's
    imwrite crashes on a name that is not valid UTF-8)."""
    png = cv2.imencode(".png", cv2.cvtColor(draw_proposals(image, proposals, top), cv2.COLOR_RGB2BGR))[1]
    with room_for(Path(path)):
        Path(path).write_bytes(png)

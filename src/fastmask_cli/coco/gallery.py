"""The report's pictures: an image with every ground-truth object outlined by what happened to it in the
top 100 (green: found at IoU >= 0.75, amber: found at 0.5-0.75, red: missed, grey: crowd), and beside it
the best proposal for each missed object, tinted, with its IoU and rank (detectron2's visualizer and
FiftyOne's evaluation patches show misses the same way).
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .ground_truth import GroundTruth
from .matches import FOUND, LOOSE, MISSED, Matches

# BGR, for OpenCV
FATE_COLOURS = {FOUND: (60, 170, 40), LOOSE: (0, 170, 255), MISSED: (40, 40, 230)}
CROWD_COLOUR = (160, 160, 160)
PROPOSAL_COLOUR = (230, 90, 200)
MAX_SIDE = 1024  # pixels: full-size pictures are at most this large


def _mask(truth: GroundTruth, a: int, height: int, width: int) -> np.ndarray | None:
    """Annotation a's mask (H, W) uint8, or None for a box-only object."""
    rle = truth.mask_rle(a, (width, height))
    return None if rle is None else mask_utils.decode(rle)


def _outline(canvas: np.ndarray, mask: np.ndarray | None, box: np.ndarray, colour: tuple[int, int, int], scale: float,
             thickness: int = 2) -> None:
    """The mask's contour (or the box, for an object without a mask), drawn at `scale`."""
    if mask is not None:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contours = [np.round(c * scale).astype(np.int32) for c in contours]
        cv2.drawContours(canvas, contours, -1, colour, thickness, cv2.LINE_AA)
    else:
        x, y, w, h = (np.asarray(box, dtype=np.float64) * scale).round().astype(int)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness, cv2.LINE_AA)


def _label(canvas: np.ndarray, text: str, at: tuple[float, float], colour: tuple[int, int, int]) -> None:
    x, y = int(at[0]), max(int(at[1]), 14)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w, h), _ = cv2.getTextSize(text, font, 0.45, 1)
    cv2.rectangle(canvas, (x, y - h - 4), (x + w + 4, y + 2), (255, 255, 255), -1)
    cv2.putText(canvas, text, (x + 2, y - 2), font, 0.45, colour, 1, cv2.LINE_AA)


def _proposal_mask(record: dict, height: int, width: int) -> tuple[np.ndarray | None, np.ndarray]:
    """A result record's mask (None for a box result) and box (x, y, w, h)."""
    segmentation = record.get("segmentation")
    if isinstance(segmentation, dict) and "counts" in segmentation:
        mask = mask_utils.decode(segmentation)
        if mask.shape == (height, width):
            return mask, np.asarray(mask_utils.toBbox(segmentation))
    return None, np.asarray(record.get("bbox", [0, 0, 0, 0]), dtype=np.float64)


def draw_fates(image: np.ndarray, truth: GroundTruth, matches: Matches, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two BGR pictures of one image (RGB `image`, its objects' `rows` in `matches`), at most `MAX_SIDE`
    on a side: every object outlined by its fate, and each missed object's best proposal beside it."""
    height, width = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    base = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if scale < 1.0:
        base = cv2.resize(base, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    fates, misses = base.copy(), (base * 0.55 + 255 * 0.45).astype(np.uint8)  # misses: a faded copy under the tints
    status = matches.status()
    for row in rows:
        a = int(matches.annotation[row])
        mask = _mask(truth, a, height, width)
        colour = CROWD_COLOUR if matches.crowd[row] else FATE_COLOURS[int(status[row])]
        _outline(fates, mask, truth.bbox[a] if mask is None else None, colour, scale)
        if matches.crowd[row] or status[row] != MISSED:
            continue
        _outline(misses, mask, truth.bbox[a] if mask is None else None, FATE_COLOURS[MISSED], scale)
        record = matches.proposals.get(int(row))
        if record is None:
            continue
        proposal, box = _proposal_mask(record, height, width)
        if proposal is not None:
            small = cv2.resize(proposal, (misses.shape[1], misses.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
            misses[small] = (0.5 * misses[small] + 0.5 * np.array(PROPOSAL_COLOUR)).astype(np.uint8)
        _outline(misses, proposal, box, PROPOSAL_COLOUR, scale, 1)
        _label(misses, f"IoU {matches.best_iou[row]:.2f} #{int(matches.rank[row]) + 1}", (box[0] * scale, box[1] * scale),
               PROPOSAL_COLOUR)
    return fates, misses


def encode_jpeg(picture: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()

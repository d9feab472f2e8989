"""Recall against IoU threshold (paper Fig. 8), drawn with OpenCV: one panel per IoU type."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..io.files import atomic_path
from .evaluate import Evaluation

PANEL_W, PANEL_H, MARGIN = 420, 340, 50
COLOURS = {10: (200, 120, 30), 100: (40, 160, 40), 1000: (30, 30, 210)}  # BGR
TITLES = {"segm": "segment proposals", "bbox": "box proposals"}


def _panel(recall, title: str) -> np.ndarray:
    panel = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = MARGIN, 30, PANEL_W - 20, PANEL_H - MARGIN

    def to_px(iou: float, r: float) -> tuple[int, int]:
        return int(x0 + (iou - 0.5) / 0.5 * (x1 - x0)), int(y1 - r * (y1 - y0))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for tick in np.linspace(0, 1, 6):
        cv2.line(panel, to_px(0.5, tick), to_px(1.0, tick), (225, 225, 225), 1)
        cv2.putText(panel, f"{tick:.1f}", (8, to_px(0.5, tick)[1] + 4), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for iou in np.linspace(0.5, 1.0, 6):
        cv2.putText(panel, f"{iou:.1f}", (to_px(iou, 0)[0] - 10, y1 + 18), font, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(panel, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(panel, "IoU", ((x0 + x1) // 2 - 10, PANEL_H - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, f"recall: {title}", (x0, 20), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for row, (n, curve) in enumerate(sorted(recall.curves.items())):
        points = np.array([to_px(t, r) for t, r in zip(recall.iou_thresholds, curve)], np.int32)
        cv2.polylines(panel, [points], False, COLOURS[n], 2, cv2.LINE_AA)
        label = f"N={n}  AR={recall.metrics[f'AR@{n}'] * 100:.1f}"
        cv2.putText(panel, label, (x1 - 150, y0 + 18 + 16 * row), font, 0.42, COLOURS[n], 1, cv2.LINE_AA)
    return panel


def plot_recall(evaluation: Evaluation, path: Path) -> None:
    """Write a PNG with one recall-vs-IoU panel per evaluated IoU type (atomically)."""
    panels = [_panel(r, TITLES[t]) for t, r in evaluation.results.items()]
    image = np.hstack(panels) if panels else np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    with atomic_path(Path(path)) as tmp:
        ok, data = cv2.imencode(".png", image)
        tmp.write_bytes(data.tobytes())

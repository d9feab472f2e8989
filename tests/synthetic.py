"""Synthetic COCO data the tests draw: rectangles and ellipses on noise, with polygon annotations."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def _shape_polygon(rng: np.random.Generator, cx: float, cy: float, half: float, kind: str) -> np.ndarray:
    if kind == "rect":
        hw, hh = half, half * rng.uniform(0.6, 1.0)
        return np.array([[cx - hw, cy - hh], [cx + hw, cy - hh], [cx + hw, cy + hh], [cx - hw, cy + hh]])
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ry = half * rng.uniform(0.6, 1.0)
    return np.stack([cx + half * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def write_shapes_dataset(folder: Path, images: int = 8, size: tuple[int, int] = (160, 192), objects: int = 2,
                         seed: int = 0, object_side: tuple[int, int] = (70, 120)) -> tuple[Path, Path]:
    """Write `images` PNGs of bright shapes on noise and their COCO ground truth; returns (gt, images dir)."""
    rng = np.random.default_rng(seed)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    height, width = size
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    for index in range(images):
        image = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
        placed: list[tuple[float, float, float]] = []
        for _ in range(objects):
            for _attempt in range(50):
                half = rng.uniform(*object_side) / 2
                cx, cy = rng.uniform(half, width - half), rng.uniform(half * 0.8, height - half * 0.8)
                if all(abs(cx - x) > h + half or abs(cy - y) > h + half for x, y, h in placed):
                    break
            else:
                continue
            placed.append((cx, cy, half))
            polygon = _shape_polygon(rng, cx, cy, half, "rect" if rng.random() < 0.5 else "ellipse")
            colour = tuple(int(c) for c in rng.integers(150, 255, size=3))
            cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], colour)
            x0, y0 = polygon.min(axis=0)
            x1, y1 = polygon.max(axis=0)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0,
                "segmentation": [polygon.ravel().round(2).tolist()], "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": float(cv2.contourArea(polygon.astype(np.float32))),
            })
        name = f"shapes_{index:03d}.png"
        cv2.imwrite(str(image_dir / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        coco["images"].append({"id": index + 1, "file_name": name, "height": height, "width": width})
    gt = folder / "instances.json"
    gt.write_text(json.dumps(coco))
    return gt, image_dir

"""Draw the example images shipped in examples/images and their COCO ground truth.

The scenes are synthetic (shapes on textured backgrounds), drawn by this script, so the project can
ship them freely. Run from the repository root:  python examples/make_examples.py
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

HERE = Path(__file__).parent
SIZE = (480, 640)  # height, width


def background(rng: np.random.Generator) -> np.ndarray:
    h, w = SIZE
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, size=3)
    tilt = rng.uniform(-0.08, 0.08, size=(2, 3))
    image = base + xs[..., None] * tilt[0] + ys[..., None] * tilt[1]
    image += cv2.GaussianBlur(rng.normal(0, 25, size=(h, w, 3)).astype(np.float32), (0, 0), 3)
    return image


def draw_shape(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A binary mask of one random object of the given kind."""
    h, w = SIZE
    mask = np.zeros(SIZE, dtype=np.uint8)
    size = rng.uniform(30, 200)
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    if kind == "ellipse":
        axes = (int(size / 2), int(size / 2 * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    elif kind == "rectangle":
        rect = ((cx, cy), (size, size * rng.uniform(0.3, 1.0)), rng.uniform(0, 90))
        cv2.fillPoly(mask, [cv2.boxPoints(rect).astype(np.int32)], 1)
    else:  # star-like polygon
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radii = size / 2 * rng.uniform(0.5, 1.0, 7)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    return mask.astype(bool)


def make_scene(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    image = background(rng)
    masks: list[np.ndarray] = []
    for _ in range(count):
        mask = draw_shape(rng, rng.choice(["ellipse", "rectangle", "polygon"]))
        colour = rng.uniform(0, 255, size=3)
        shade = np.linspace(0.75, 1.15, SIZE[1], dtype=np.float32)[None, :, None]
        image = np.where(mask[..., None], colour * shade, image)
        masks = [m & ~mask for m in masks] + [mask]  # later shapes occlude earlier ones
    return image.clip(0, 255).astype(np.uint8), [m for m in masks if m.sum() >= 64]


def main() -> None:
    rng = np.random.default_rng(2017)
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    images, annotations = [], []
    for index in range(4):
        image, masks = make_scene(rng, count=int(rng.integers(3, 7)))
        name = f"scene_{index + 1}.jpg"
        cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": index + 1, "file_name": name, "height": SIZE[0], "width": SIZE[1]})
        for mask in masks:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "iscrowd": 0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })
    gt = {"info": {"description": "fastmask example scenes, drawn by examples/make_examples.py"},
          "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    (HERE / "annotations.json").write_text(json.dumps(gt))
    print(f"wrote {len(images)} images and {len(annotations)} objects to {out}")


if __name__ == "__main__":
    main()

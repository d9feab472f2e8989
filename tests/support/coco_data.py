"""Synthetic COCO data the tests draw: one builder of COCO instances (`CocoData`), and a shapes
dataset of rectangles and ellipses on noise with polygon annotations."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def cocoeval_ar(gt: Path | dict, results: list[dict], iou_type: str) -> dict[str, float | None]:
    """Class-agnostic AR straight from pycocotools' COCOeval, on a clean file (a path or the COCO dict):
    the reference `evaluate` is held to. AR@10/100/1000 and AR S/M/L@100, None where no object of that size."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        coco = COCO()
        coco.dataset = copy.deepcopy(gt) if isinstance(gt, dict) else json.loads(Path(gt).read_text())
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([{**r, "category_id": 1} for r in copy.deepcopy(results)]), iou_type)
        ev.params.useCats, ev.params.maxDets = 0, [10, 100, 1000]
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"]  # (IoU thresholds, 1 category, area ranges, maxDets); -1: no objects
    cut = {"AR@10": recall[:, 0, 0, 0], "AR@100": recall[:, 0, 0, 1], "AR@1000": recall[:, 0, 0, 2],
           "AR_S@100": recall[:, 0, 1, 1], "AR_M@100": recall[:, 0, 2, 1], "AR_L@100": recall[:, 0, 3, 1]}
    return {k: None if np.all(v == -1) else float(v[v > -1].mean()) for k, v in cut.items()}


class CocoData:
    """COCO instances built by a test, image by image and object by object, then written as JSON.
    `data` is the plain dict: a test may damage it before writing, as a user's file would be."""

    def __init__(self, categories: tuple[tuple[int, str], ...] = ((1, "object"),)) -> None:
        self.data: dict = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in categories]}

    def image(self, file_name: str, width: int, height: int, image_id: int | None = None) -> int:
        image_id = len(self.data["images"]) + 1 if image_id is None else image_id
        self.data["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        return image_id

    def annotation(self, image_id: int, segmentation=None, bbox=None, area=None, iscrowd: int = 0, category_id: int = 1) -> dict:
        """One object; `segmentation` polygons (a list of rings) or RLE; `bbox`, `area` as given (None: left out)."""
        entry = {"id": len(self.data["annotations"]) + 1, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd}
        for key, value in (("segmentation", segmentation), ("area", area), ("bbox", bbox)):
            if value is not None:
                entry[key] = value
        self.data["annotations"].append(entry)
        return entry

    def mask(self, image_id: int, mask: np.ndarray, polygon: bool = True, iscrowd: int = 0, category_id: int = 1) -> dict:
        """One object from a binary mask: its outer contour as a polygon (or its RLE), its area and box."""
        x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
        if polygon:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            segmentation = [contours[0].reshape(-1).astype(float).tolist()]
        else:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        return self.annotation(image_id, segmentation, [x, y, w, h], float(mask.sum()), iscrowd, category_id)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.data))
        return path


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
    coco = CocoData(((1, "shape"),))
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
            coco.annotation(index + 1, [polygon.ravel().round(2).tolist()], [x0, y0, x1 - x0, y1 - y0],
                            float(cv2.contourArea(polygon.astype(np.float32))))
        name = f"shapes_{index:03d}.png"
        cv2.imwrite(str(image_dir / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        coco.image(name, width, height, image_id=index + 1)
    return coco.write(folder / "instances.json"), image_dir

"""Class-agnostic average recall (paper §6), exactly as pycocotools' COCOeval measures it.

AR@N is recall averaged over IoU thresholds 0.50:0.05:0.95 with at most N proposals per image,
read from COCOeval's recall array (`useCats = 0`, `maxDets = [10, 100, 1000]`); the fixed slots of
COCOeval's printed summary assume other maxDets and are not used. Any COCO results file works,
ours or another tool's: masks are evaluated as masks, and as boxes through each mask's tight box.

The per-image loop is COCOeval.evaluate's own, unrolled so that it can report progress and drop
each image's IoU matrix once used: memory stays below what COCOeval.evaluate itself needs.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .errors import FastMaskError
from .files import read_json
from .results_file import read_results

MAX_DETS = (10, 100, 1000)
AREAS = ("all", "small", "medium", "large")  # COCOeval's default area ranges, in this order
IOU_TYPES = ("segm", "bbox")

# Paper, Table 3: FastMask two-stream ResNet-39 on the first 5k COCO val images.
PAPER = {
    "segm": {"AR@10": 16.9, "AR@100": 31.3, "AR@1000": 40.6},
    "bbox": {"AR@10": 22.6, "AR@100": 43.1, "AR@1000": 57.4},
}


@dataclass
class Recall:
    """AR of one IoU type: metrics in [0, 1], and recall per IoU threshold for each N (area all)."""

    iou_type: str
    metrics: dict[str, float | None]  # None: no ground-truth object of that size
    iou_thresholds: list[float]
    curves: dict[int, list[float]]  # N -> recall at each IoU threshold
    images: int
    proposals: int


@dataclass
class Evaluation:
    results: dict[str, Recall] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was skipped and why

    def to_dict(self) -> dict[str, Any]:
        return {"notes": self.notes, **{t: {"metrics": r.metrics, "iou_thresholds": r.iou_thresholds,
                                              "recall": {str(n): c for n, c in r.curves.items()},
                                              "images": r.images, "proposals": r.proposals}
                                          for t, r in self.results.items()}}


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints as it goes


def load_ground_truth(path: Path) -> COCO:
    data = read_json(path, "ground truth")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise FastMaskError(f"ground truth {path} is not COCO (needs 'images' and 'annotations' lists)")
    data.setdefault("categories", [{"id": 1, "name": "object"}])
    gt = COCO()
    gt.dataset = data
    with _quiet():
        gt.createIndex()
    return gt


def _check_results(results: list[dict], gt: COCO, allow_missing: bool, notes: list[str]) -> list[dict]:
    if not all(isinstance(r, dict) for r in results):
        raise FastMaskError("results entries must be JSON objects")
    no_score = sum(1 for r in results if not isinstance(r.get("score"), (int, float)))
    if no_score:
        raise FastMaskError(f"{no_score} of {len(results)} results have no numeric 'score': proposals must be ranked")
    no_id = sum(1 for r in results if "image_id" not in r)
    if no_id:
        raise FastMaskError(f"{no_id} of {len(results)} results have no 'image_id'")
    unusable = sum(1 for r in results if "segmentation" not in r and "bbox" not in r)
    if unusable:
        raise FastMaskError(f"{unusable} of {len(results)} results have neither 'segmentation' nor 'bbox'")
    _refuse_corruption(results, gt)
    known = set(gt.getImgIds())
    missing = {r["image_id"] for r in results} - known
    if missing:
        count = sum(1 for r in results if r["image_id"] in missing)
        if not allow_missing:
            raise FastMaskError(
                f"{count} results refer to {len(missing)} image ids not in the ground truth "
                "(use --allow-missing to evaluate on the images they share)"
            )
        results = [r for r in results if r["image_id"] in known]
        notes.append(f"ignored {count} results on {len(missing)} image ids not in the ground truth")
    # class-agnostic: one category; masks as compressed RLE whatever form another tool wrote them in.
    # Entries are updated in place, as COCO.loadRes does: a copy of millions of results would double memory.
    for r in results:
        r["category_id"] = 1
        if "segmentation" in r:
            r["segmentation"] = _as_rle(r["segmentation"], gt.imgs[r["image_id"]])
    return results


def _refuse_corruption(results: list[dict], gt: COCO) -> None:
    """Stop at the first result that COCOeval would score silently but wrongly: a score that is not a
    finite number (it cannot be ranked), or an RLE mask of another size than its image in the ground
    truth (pycocotools compares it with masks of another grid)."""
    for n, r in enumerate(results):
        if not math.isfinite(r["score"]):
            raise FastMaskError(f"result {n} (image_id {r['image_id']}) has score {r['score']}: scores must be finite numbers")
        segmentation, image = r.get("segmentation"), gt.imgs.get(r["image_id"])
        if not isinstance(segmentation, dict) or image is None or "height" not in image or "width" not in image:
            continue
        size = segmentation.get("size")
        if not isinstance(size, list) or len(size) != 2 or size != [image["height"], image["width"]]:
            shown = f"{size[1]}x{size[0]}" if isinstance(size, list) and len(size) == 2 else repr(size)
            raise FastMaskError(f"result {n} (image_id {r['image_id']}) has a {shown} RLE mask (width x height), "
                                f"but image {r['image_id']} is {image['width']}x{image['height']} in the ground truth")


def _recall(gt: COCO, results: list[dict], iou_type: str, image_ids: list[int],
            on_image: Callable[[], None] | None) -> np.ndarray:
    """COCOeval recall array (T, 1, A, M) for these results, class-agnostic."""
    with _quiet():
        dt = gt.loadRes(results) if results else COCO()
    ev = COCOeval(gt, dt, iou_type)
    ev.params.useCats = 0
    ev.params.maxDets = list(MAX_DETS)
    ev.params.imgIds = image_ids
    p = ev.params
    with _quiet():
        ev._prepare()
    ev.ious = {}
    ev.evalImgs = [None] * (len(p.areaRng) * len(image_ids))
    for i, image_id in enumerate(image_ids):
        ev.ious[image_id, -1] = ev.computeIoU(image_id, -1)
        for a, area in enumerate(p.areaRng):
            ev.evalImgs[a * len(image_ids) + i] = ev.evaluateImg(image_id, -1, area, p.maxDets[-1])
        del ev.ious[image_id, -1]  # COCOeval keeps them all; they are not needed again
        if on_image:
            on_image()
    ev._paramsEval = copy.deepcopy(p)
    with _quiet():
        ev.accumulate()
    return ev.eval["recall"]


def _mean_recall(recall: np.ndarray) -> float | None:
    """Mean over IoU thresholds; None where COCOeval marks -1 (no ground-truth object in that range)."""
    valid = recall[recall > -1]
    return float(valid.mean()) if valid.size else None


def evaluate(
    gt_path: Path,
    results: Path | list[dict],
    iou_types: tuple[str, ...] = IOU_TYPES,
    allow_missing: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> Evaluation:
    """AR@10/100/1000 and AR S/M/L @100 for masks and/or boxes. on_start(total steps), on_image().

    A results list passed in is normalised in place (category, RLE, tight boxes), as COCO.loadRes does.
    """
    gt = load_ground_truth(gt_path)
    evaluation = Evaluation()
    raw = read_results(results) if isinstance(results, (str, Path)) else results
    raw = _check_results(raw, gt, allow_missing, evaluation.notes)
    image_ids = sorted(gt.getImgIds())
    if allow_missing and raw:
        image_ids = sorted({r["image_id"] for r in raw})
        evaluation.notes.append(f"evaluated on the {len(image_ids)} images the results cover")
    iou_types = tuple(iou_types)
    with_masks = [r for r in raw if "segmentation" in r]
    if "segm" in iou_types:
        if raw and len(with_masks) < len(raw):
            if iou_types == ("segm",):
                raise FastMaskError(f"{len(raw) - len(with_masks)} results have no 'segmentation': use --iou-type bbox")
            evaluation.notes.append("masks skipped: the results hold boxes only (no 'segmentation'), boxes evaluated")
            iou_types = tuple(t for t in iou_types if t != "segm")
        elif any("segmentation" not in a for a in gt.dataset["annotations"]):
            raise FastMaskError("the ground truth has annotations without 'segmentation': mask AR needs masks (use --iou-type bbox)")
    if on_start:
        on_start(len(image_ids) * len(iou_types))
    for iou_type in iou_types:
        if iou_type == "bbox":  # a mask is scored as a box through its tight box (set in place, no copy)
            for r in raw:
                if "segmentation" in r:
                    r["bbox"] = [float(v) for v in mask_utils.toBbox(r["segmentation"])]
        recall = _recall(gt, raw, iou_type, image_ids, on_image)
        metrics = {f"AR@{n}": _mean_recall(recall[:, 0, 0, m]) for m, n in enumerate(MAX_DETS)}
        for a, area in enumerate(AREAS[1:], start=1):
            metrics[f"AR_{area[0].upper()}@100"] = _mean_recall(recall[:, 0, a, MAX_DETS.index(100)])
        thresholds = [round(float(t), 2) for t in np.linspace(0.5, 0.95, recall.shape[0])]
        curves = {n: [max(float(v), 0.0) for v in recall[:, 0, 0, m]] for m, n in enumerate(MAX_DETS)}
        evaluation.results[iou_type] = Recall(iou_type, metrics, thresholds, curves, len(image_ids), len(raw))
    if not raw:
        evaluation.notes.append("the results list is empty: every AR is 0")
    return evaluation


def _as_rle(segmentation: Any, image: dict) -> dict:
    """A result's mask as compressed RLE with str counts, from polygons, uncompressed or compressed RLE."""
    try:
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, image["height"], image["width"]))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        else:
            return segmentation
    except (TypeError, ValueError, KeyError, AttributeError, IndexError):
        raise FastMaskError(f"a result for image {image.get('id')} has a malformed 'segmentation'") from None
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}

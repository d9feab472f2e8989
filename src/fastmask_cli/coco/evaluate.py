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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import FastMaskError, ParameterError
from ..io.results_file import read_results
from .ground_truth import BOX_ONLY, GroundTruth, read_ground_truth
from .matches import MatchCollector, Matches
from .results import check_results

MAX_DETS = (10, 100, 1000)
AREAS = ("all", "small", "medium", "large")  # COCOeval's default area ranges, in this order
IOU_TYPES = ("segm", "bbox")

# Paper, Table 3: FastMask two-stream ResNet-39 on the first 5k COCO val images.
PAPER = {
    "segm": {"AR@10": 16.9, "AR@100": 31.3, "AR@1000": 40.6},
    "bbox": {"AR@10": 22.6, "AR@100": 43.1, "AR@1000": 57.4},
}
PAPER_SOURCE = "Paper: FastMask two-stream ResNet-39, 80k COCO training images, first 5k COCO val images (Table 3)."


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
    """AR per IoU type, what happened to each object (`matches`, for reports), the notes, and the ground
    truth it was measured against (`truth`: file names, masks and category names for reports)."""

    results: dict[str, Recall] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    matches: dict[str, Matches] = field(default_factory=dict, repr=False)
    truth: GroundTruth | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"notes": self.notes, **{t: {"metrics": r.metrics, "iou_thresholds": r.iou_thresholds,
                                              "recall": {str(n): c for n, c in r.curves.items()},
                                              "images": r.images, "proposals": r.proposals}
                                          for t, r in self.results.items()}}


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints as it goes


def _recall(gt: COCO, results: list[dict], iou_type: str, image_ids: list[int],
            on_image: Callable[[], None] | None, collect: MatchCollector | None = None) -> np.ndarray:
    """COCOeval recall array (T, 1, A, M) for these results, class-agnostic; `collect` gathers each
    object's matches as the images go by."""
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
        if collect is not None:
            collect.add(ev, image_id, ev.evalImgs[i])  # area "all" comes first
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


def _mask_notes(iou_types: tuple[str, ...], raw: list[dict], truth: GroundTruth, notes: list[str]) -> tuple[str, ...]:
    """The IoU types that can be measured, with a note for each part left out of mask AR: results and
    ground-truth objects that are boxes only are counted in box AR alone (one odd record must not take
    a whole file's mask figure away); masks are not evaluated where no result, or no object, has one.
    Raises ParameterError where masks alone were asked for and cannot be."""
    if "segm" not in iou_types:
        return iou_types
    with_masks = sum(1 for r in raw if "segmentation" in r)
    objects, box_only = len(truth.kind), int((truth.kind == BOX_ONLY).sum())
    why = None
    if raw and not with_masks:
        why = f"all {len(raw)} results are boxes only (no 'segmentation')"
    elif objects and box_only == objects:
        why = f"all {box_only} ground-truth objects are boxes only (no mask)"
    if why:
        if iou_types == ("segm",):
            raise ParameterError("iou_types", f"mask AR needs masks, but {why} (use {{}} bbox)")
        notes.append(f"masks not evaluated: {why}; boxes evaluated")
        return tuple(t for t in iou_types if t != "segm")
    if with_masks < len(raw):
        notes.append(f"mask AR from the {with_masks} results with a mask: {len(raw) - with_masks} are boxes only "
                     "(no 'segmentation'), counted in box AR only")
    if box_only:
        notes.append(f"mask AR over the {objects - box_only} ground-truth objects with a mask: {box_only} are boxes "
                     "only, counted in box AR only")
    return iou_types


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
    truth = read_ground_truth(gt_path)
    evaluation = Evaluation(notes=list(truth.notes), truth=truth)
    raw = read_results(results) if isinstance(results, (str, Path)) else results
    if not isinstance(raw, list):
        raise FastMaskError(f"results are a {type(raw).__name__}, not a COCO results list")
    raw = check_results(raw, truth, allow_missing, evaluation.notes)
    image_ids = list(range(1, len(truth) + 1))
    if allow_missing and raw:
        image_ids = sorted({r["image_id"] for r in raw})
        evaluation.notes.append(f"evaluated on the {len(image_ids)} images the results cover")
    iou_types = _mask_notes(tuple(iou_types), raw, truth, evaluation.notes)
    most = max(Counter(r["image_id"] for r in raw).values(), default=0)
    if 0 < most < MAX_DETS[-1]:  # AR@1000 would silently read as AR@most
        evaluation.notes.append(f"at most {most} results per image: AR@{MAX_DETS[-1]} counts those "
                                f"(propose with --top-k {MAX_DETS[-1]} to measure it)")
    if (truth.kind == BOX_ONLY).any():  # left out of mask AR, as COCO leaves crowds out: an index for each
        gts = {t: truth.to_coco(masks=t == "segm", box_only=t == "bbox") for t in iou_types}
    else:  # one index serves both
        gts = dict.fromkeys(iou_types, truth.to_coco(masks="segm" in iou_types))
    if on_start:
        on_start(len(image_ids) * len(iou_types))
    # masks first: scoring boxes sets each mask result's box, and pycocotools reads a list with boxes as boxes
    for iou_type in sorted(iou_types, key=IOU_TYPES.index):
        scored = raw
        if iou_type == "segm":
            scored = [r for r in raw if "segmentation" in r]
        else:  # a mask is scored as a box through its tight box (set in place, no copy)
            for r in raw:
                if "segmentation" in r:
                    r["bbox"] = [float(v) for v in mask_utils.toBbox(r["segmentation"])]
        collect = MatchCollector(iou_type, scored)
        recall = _recall(gts[iou_type], scored, iou_type, image_ids, on_image, collect)
        metrics = {f"AR@{n}": _mean_recall(recall[:, 0, 0, m]) for m, n in enumerate(MAX_DETS)}
        for a, area in enumerate(AREAS[1:], start=1):
            metrics[f"AR_{area[0].upper()}@100"] = _mean_recall(recall[:, 0, a, MAX_DETS.index(100)])
        thresholds = [round(float(t), 2) for t in np.linspace(0.5, 0.95, recall.shape[0])]
        curves = {n: [max(float(v), 0.0) for v in recall[:, 0, 0, m]] for m, n in enumerate(MAX_DETS)}
        evaluation.results[iou_type] = Recall(iou_type, metrics, thresholds, curves, len(image_ids), len(scored))
        evaluation.matches[iou_type] = collect.matches(np.asarray(thresholds))
    if not raw:
        evaluation.notes.append("the results list is empty: every AR is 0")
    return evaluation


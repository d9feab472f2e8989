"""What happened to each ground-truth object in an evaluation: the proposal COCOeval matched to it at
each IoU threshold, and the best proposal for it, gathered while `evaluate` runs (from COCOeval's own
IoU matrices and `evaluateImg` output, area "all"), not in a second pass.

From these rows come the figures of Hosang et al. (TPAMI 2016) and the paper's Fig. 8 for any N, and
the report's found/missed colouring:

    matches = evaluation.matches["segm"]
    matches.recall(100)          # (T,) recall at each IoU threshold with 100 proposals: COCOeval's own
    matches.status()             # per object: FOUND (IoU >= 0.75 in the top 100), LOOSE (0.5-0.75), MISSED
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FOUND, LOOSE, MISSED = 2, 1, 0  # an object's fate within the top `TOP` proposals
TOP = 100
FOUND_IOU, LOOSE_IOU = 0.75, 0.5


@dataclass
class Matches:
    """One row per ground-truth object COCOeval scored (crowds included, flagged), image by image.

    `image`, `annotation`: indexes into the GroundTruth; `crowd`: ignored by COCOeval (a crowd region);
    `area`: the area COCOeval used (pixels); `best_iou_top`, `rank_top`: the best IoU with any of the
    first `TOP` proposals of its image and that proposal's rank (0-based; -1: none overlaps it); `best_iou`,
    `rank`: the same over every proposal kept; `matched` (T, objects): rank of the proposal COCOeval
    matched to it at each IoU threshold (-1: none), so recall at N is the share of objects with a
    match ranked below N, as COCOeval's recall array counts it. `proposals[row]`: the result record
    (segmentation or box, score) of the best proposal of each object not found in the top `TOP`, where
    one overlaps it at all."""

    iou_type: str
    iou_thresholds: np.ndarray
    image: np.ndarray
    annotation: np.ndarray
    crowd: np.ndarray
    area: np.ndarray
    best_iou_top: np.ndarray
    rank_top: np.ndarray
    best_iou: np.ndarray
    rank: np.ndarray
    matched: np.ndarray
    proposals: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image)

    def recall(self, n: int | np.ndarray) -> np.ndarray:
        """Recall at each IoU threshold with at most `n` proposals per image: (T,), or (len(n), T) for an
        array of n. Crowds are left out, as COCOeval leaves them out; 0 where no object counts."""
        counted = self.matched[:, ~self.crowd]
        ns = np.atleast_1d(np.asarray(n))
        if counted.shape[1] == 0:
            out = np.zeros((len(ns), len(self.iou_thresholds)))
        else:
            found = counted >= 0
            out = np.stack([(found & (counted < k)).mean(axis=1) for k in ns])
        return out[0] if np.ndim(n) == 0 else out

    def status(self) -> np.ndarray:
        """Each object's fate in the top `TOP`: FOUND (best IoU >= 0.75), LOOSE (0.5-0.75) or MISSED."""
        return np.where(self.best_iou_top >= FOUND_IOU, FOUND, np.where(self.best_iou_top >= LOOSE_IOU, LOOSE, MISSED))

    def image_recall(self, n: int = TOP) -> dict[int, float]:
        """Per image (GroundTruth index) with an object that counts: its recall at `n` proposals averaged
        over IoU thresholds (the image's own AR@n)."""
        counted = ~self.crowd
        hit = ((self.matched >= 0) & (self.matched < n)).mean(axis=0)
        images = self.image[counted]
        totals = np.bincount(images, minlength=int(self.image.max(initial=-1)) + 1)
        sums = np.bincount(images, weights=hit[counted], minlength=len(totals))
        return {int(i): float(sums[i] / totals[i]) for i in np.flatnonzero(totals)}


class MatchCollector:
    """Gathers `Matches` image by image inside `evaluate`'s loop, while each IoU matrix still exists."""

    def __init__(self, iou_type: str, scored: list[dict[str, Any]], top: int = TOP) -> None:
        self.iou_type, self.scored, self.top = iou_type, scored, top
        self.rows: dict[str, list] = {k: [] for k in ("image", "annotation", "crowd", "area", "best_iou_top", "rank_top",
                                                       "best_iou", "rank", "matched")}
        self.proposals: dict[int, dict[str, Any]] = {}

    def add(self, ev: Any, image_id: int, evaluated: dict | None) -> None:
        """Image `image_id` (GroundTruth index + 1) of COCOeval `ev`, whose IoU matrix is still held, and
        its `evaluateImg` output for area "all" (None: no object and no proposal)."""
        gts = [g for c in ev.params.catIds for g in ev._gts[image_id, c]]
        if not gts or evaluated is None:
            return
        ious = np.asarray(ev.ious[image_id, -1], dtype=np.float64).reshape(-1, len(gts))  # (proposals by score, objects)
        ranks = {d: r for r, d in enumerate(evaluated["dtIds"])}
        column = {g: j for j, g in enumerate(evaluated["gtIds"])}  # evaluateImg orders objects crowds last
        for g, gt in enumerate(gts):
            j = column[gt["id"]]
            row = len(self.rows["image"])
            top = ious[: self.top, g]
            best_top, best = (int(top.argmax()), int(ious[:, g].argmax())) if len(top) else (-1, -1)
            best_top, best = (best_top if best_top >= 0 and top[best_top] > 0 else -1,  # no overlap: no best proposal
                              best if best >= 0 and ious[best, g] > 0 else -1)
            values = {"image": image_id - 1, "annotation": gt["id"] - 1, "crowd": bool(evaluated["gtIgnore"][j]),
                      "area": float(gt["area"]), "best_iou_top": float(top[best_top]) if best_top >= 0 else 0.0,
                      "rank_top": best_top, "best_iou": float(ious[best, g]) if best >= 0 else 0.0, "rank": best,
                      "matched": [ranks.get(int(d), -1) for d in evaluated["gtMatches"][:, j]]}
            for key, value in values.items():
                self.rows[key].append(value)
            if best >= 0 and values["best_iou_top"] < LOOSE_IOU and not values["crowd"]:
                self.proposals[row] = self.scored[int(evaluated["dtIds"][best]) - 1]  # loadRes numbers results 1..n

    def matches(self, iou_thresholds: np.ndarray) -> Matches:
        r = self.rows
        t = len(iou_thresholds)
        return Matches(self.iou_type, np.asarray(iou_thresholds), np.asarray(r["image"], dtype=np.int64),
                       np.asarray(r["annotation"], dtype=np.int64), np.asarray(r["crowd"], dtype=bool),
                       np.asarray(r["area"], dtype=np.float64), np.asarray(r["best_iou_top"], dtype=np.float64),
                       np.asarray(r["rank_top"], dtype=np.int64), np.asarray(r["best_iou"], dtype=np.float64),
                       np.asarray(r["rank"], dtype=np.int64),
                       np.asarray(r["matched"], dtype=np.int64).reshape(-1, t).T.copy(), self.proposals)

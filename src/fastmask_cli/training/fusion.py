"""The fused ranker's weights, fitted on the training images (inference/detector.fuse).

Every candidate of the fused ranker (the top windows and the windows of the detector's best boxes, before
suppression) is one sample: its features are its window score and detector prior (`Proposals.parts`), its
target the IoU of its mask with the training object it overlaps most (COCO's crowds left out). The fused
score's four weights minimise its cross-entropy against those soft targets (L-BFGS): it estimates a
candidate's mask IoU, which is what AR at every threshold from 0.5 to 0.95 rewards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from ..coco.ground_truth import read_ground_truth
from ..inference.detector import logit
from ..inference.options import DEFAULT_FUSION, MEASURE_TOP_K
from ..inference.proposer import Proposer
from ..io.images import ImageError, read_image
from ..modeling.model import FastMask


def fusion_samples(model: FastMask, gt_path: Path, images_dir: Path, top_k: int = MEASURE_TOP_K, device: str = "cpu",
                   limit: int | None = None, on_image: Callable[[], None] | None = None,
                   mask_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) window score and detector prior of the fused ranker's candidates on the COCO set `gt_path`
    (images under `images_dir`; the first `limit` with objects), and (N,) the best mask IoU of each with a
    non-crowd object, its masks cut at `mask_threshold` (None: the model's). Unreadable images are passed
    over. The candidates are those of the unfitted fusion (DEFAULT_FUSION), whatever the model carries."""
    gt = read_ground_truth(Path(gt_path), "training ground truth")
    proposer = Proposer(model, top_k=top_k, nms="none", ranker="fused", fusion=DEFAULT_FUSION, device=device,
                        mask_threshold=mask_threshold)
    parts, targets = [], []
    indices = [i for i in range(len(gt)) if gt.file_names[i] is not None and len(gt.annotations_of(i))]
    for i in indices[:limit]:
        try:
            image = read_image(Path(images_dir) / gt.file_names[i], frame=gt.frame(i))
        except ImageError:
            continue
        proposals = proposer.propose(image)
        frame = (image.shape[1], image.shape[0])
        truth = [rle for a in gt.annotations_of(i) if not gt.crowd[a] and (rle := gt.mask_rle(a, frame)) is not None]
        if len(proposals) and truth:
            iou = np.asarray(mask_utils.iou(proposals.rles, truth, [0] * len(truth))).reshape(len(proposals), len(truth))
            parts.append(proposals.parts)
            targets.append(iou.max(axis=1))
        if on_image:
            on_image()
    if not parts:
        return np.zeros((0, 2)), np.zeros(0)
    return np.concatenate(parts), np.concatenate(targets)


def fit_fusion(parts: np.ndarray, targets: np.ndarray) -> tuple[float, ...]:
    """Weights of `detector.fuse` minimising the cross-entropy of the fused score against `targets` (the
    candidates' mask IoU), from (N, 2) window scores and priors. ValueError with no samples."""
    if len(parts) == 0:
        raise ValueError("no candidates to fit the fusion on")
    ours, theirs = (torch.from_numpy(logit(parts[:, i])) for i in (0, 1))
    target = torch.from_numpy(np.asarray(targets, dtype=np.float64))
    weights = torch.tensor(DEFAULT_FUSION, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        miss = torch.sigmoid(-(weights[0] * ours + weights[1])) * torch.sigmoid(-(weights[2] * theirs + weights[3]))
        loss = F.binary_cross_entropy((1 - miss).clamp(1e-7, 1 - 1e-7), target)
        loss.backward()
        return loss

    with torch.inference_mode(False), torch.enable_grad():
        optimiser.step(closure)
    return tuple(round(float(w), 4) for w in weights.detach())

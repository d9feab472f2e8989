"""Training objective (paper §5.2, Eq. 1-5): window confidence, and mask and attention for positives.

    L = 1/N Σ_k BCE(c_k, ĉ_k) + 1/P Σ_k 1(c_k) · (mean_ij BCE(s_k, ŝ_k) + mean_ij BCE(a_k, â_k))

over the N windows sampled in the batch (positives and negatives about 1:1), P of them positive.
Mask and attention losses are averaged over each window's pixels and taken on positive windows only.
Departure from the paper: it divides the mask and attention terms by N too, so their weight falls
as more negatives are sampled (or fewer positives exist); dividing them by P keeps a mask's weight
fixed whatever the sampling (measured: 1024 windows per image then fit as well as 128; see docs/accuracy.md).
`FastMaskLoss` wraps the model so that one forward call is one training step's loss, which is what
DistributedDataParallel needs to see.

Objectness "iou" (an option; "binary" is the paper's): a positive window's confidence target is the IoU
of its own predicted mask with its object's, not 1 (negatives stay 0), so that the score leans towards
how well the window cuts its object out. Inspired by OLN (Kim et al. 2022), which learns such a
localisation quality, on positives only, instead of an object-vs-background class. The target comes
from the network's own masks, so start it from a trained network: from scratch they begin near 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.model import FastMask
from .assign import NEGATIVE, AssignRule, assign_windows, window_targets


@dataclass
class Target:
    """Ground truth of one training image, on the model's device."""

    masks: Tensor  # (O, H, W) uint8, in input pixels
    boxes: Tensor  # (O, 4) float x0, y0, x1, y1
    ignore: Tensor  # (O,) bool


def sample_windows(labels: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Up to count/2 positives (labels >= 0) and count/2 negatives, drawn uniformly; IGNORE never.

    With few positives the batch is mostly negatives, as in the original code's sampling.
    """
    positives = (labels >= 0).nonzero().squeeze(1)
    negatives = (labels == NEGATIVE).nonzero().squeeze(1)
    positives = positives[torch.randperm(positives.numel(), device=labels.device)[: count // 2]]
    negatives = negatives[torch.randperm(negatives.numel(), device=labels.device)[: count - count // 2]]
    return positives, negatives


OBJECTNESS = ("binary", "iou")


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """(K,) IoU of predicted masks (logits (K, M, M) above 0) with soft targets (K, M, M) taken at 0.5;
    0 where both are empty."""
    predicted, target = logits > 0, targets >= 0.5
    union = (predicted | target).sum((1, 2))
    return (predicted & target).sum((1, 2)) / union.clamp(min=1)


class FastMaskLoss(nn.Module):
    """The model plus its objective: forward(images, targets) -> loss and its components."""

    def __init__(self, model: FastMask, windows_per_image: int = 64, rule: AssignRule = AssignRule(),
                 objectness: str = "binary") -> None:
        super().__init__()
        if objectness not in OBJECTNESS:
            raise ValueError(f"objectness must be one of {', '.join(OBJECTNESS)}, not {objectness!r}")
        self.model = model
        self.windows_per_image = windows_per_image
        self.rule = rule
        self.objectness = objectness

    def forward(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        model = self.model
        cfg = model.config
        pyramid = model(images, cfg.train_scales)
        grid = pyramid.grid
        scores = pyramid.flat_scores().float()
        windows = grid.boxes(torch.arange(grid.num_windows, device=images.device))

        pos_logits, neg_logits, pos_image, pos_flat, seg_targets, att_targets = [], [], [], [], [], []
        for i, target in enumerate(targets):
            labels = assign_windows(grid, target.boxes, target.ignore, self.rule)
            positives, negatives = sample_windows(labels, self.windows_per_image)
            pos_logits.append(scores[i, positives])
            neg_logits.append(scores[i, negatives])
            if positives.numel():
                seg, att = window_targets(target.masks, target.boxes, labels[positives], windows[positives], cfg.mask_size, cfg.window)
                pos_image.append(torch.full_like(positives, i))
                pos_flat.append(positives)
                seg_targets.append(seg)
                att_targets.append(att)
        pos_logits, neg_logits = torch.cat(pos_logits), torch.cat(neg_logits)
        count = max(pos_logits.numel() + neg_logits.numel(), 1)
        positive_count = pos_logits.numel()
        positives = max(positive_count, 1)
        conf = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="sum")
        pos_labels = torch.ones_like(pos_logits)

        if pos_flat:
            mask_logits, att_logits = model.decode(pyramid, torch.cat(pos_image), torch.cat(pos_flat))
            if self.objectness == "iou":
                pos_labels = mask_iou(mask_logits.detach().float(), torch.cat(seg_targets))
            seg = F.binary_cross_entropy_with_logits(mask_logits.float(), torch.cat(seg_targets), reduction="none").mean((1, 2)).sum()
            att = (F.binary_cross_entropy_with_logits(att_logits.float(), torch.cat(att_targets), reduction="none").mean((1, 2)).sum()
                   if att_logits is not None else scores.new_zeros(()))
        else:  # no positive anywhere: decode one window at zero weight, so every parameter still gets a gradient
            zero = torch.zeros(1, dtype=torch.long, device=images.device)
            mask_logits, att_logits = model.decode(pyramid, zero, zero)
            seg = mask_logits.float().sum() * 0.0
            att = att_logits.float().sum() * 0.0 if att_logits is not None else scores.new_zeros(())
        conf = conf + F.binary_cross_entropy_with_logits(pos_logits, pos_labels, reduction="sum")
        return {
            "loss": conf / count + (seg + att) / positives,
            "conf": conf.detach() / count,
            "seg": seg.detach() / positives,
            "att": att.detach() / positives,
            "positives": torch.tensor(float(positive_count), device=images.device),
            "windows": torch.tensor(float(count), device=images.device),
        }

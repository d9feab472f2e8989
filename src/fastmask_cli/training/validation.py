"""What a trained network measures (paper §6): AR through `evaluate`, and precise BN (BatchNorm running
statistics recomputed with the final weights) before it is measured or shipped."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from ..coco.evaluate import Evaluation, evaluate
from ..coco.ground_truth import read_ground_truth
from ..device import resolve_device
from ..inference.options import ProposerOptions
from ..inference.preprocess import pad_batch, prepare
from ..inference.proposer import Proposer
from ..io.images import ImageError, read_image
from ..modeling.model import FastMask
from .dataset import CocoInstances
from .precise_bn import BatchStatistics, recompute_batchnorm, training_batchnorms
from .settings import TrainSettings


def validate(model: FastMask, gt_path: Path, images_dir: Path, options: ProposerOptions, limit: int | None = None,
             batch_statistics: bool = False) -> Evaluation:
    """Mask and box AR of `model`'s proposals made with `options` on the COCO set `gt_path` (images under
    `images_dir`), through `evaluate`; with `limit`, on its first `limit` images by id only (a fixed sample).
    `batch_statistics`: its training BatchNorms normalise each image with its own statistics, as in
    training (to see what the weights can do whatever the running statistics say)."""
    gt = read_ground_truth(gt_path, "validation ground truth")
    proposer = Proposer(model, options)
    results = []
    context = BatchStatistics(model) if batch_statistics else contextlib.nullcontext()
    with context:
        for i in [i for i in range(len(gt)) if gt.file_names[i] is not None][:limit]:
            try:
                image = read_image(Path(images_dir) / gt.file_names[i], frame=gt.frame(i))
            except ImageError:  # missing or unreadable: training reports these itself; AR covers the rest
                continue
            results += proposer.propose(image).to_coco(gt.ids[i])
    return evaluate(Path(gt_path), results, allow_missing=True)


def precise_bn(model: FastMask, dataset: CocoInstances, count: int, device: torch.device | str = "cpu",
               rank: int = 0, world: int = 1) -> int:
    """Recompute the running statistics of `model`'s training BatchNorms (`precise_bn.recompute_batchnorm`)
    over the first `count` images of `dataset`, unaugmented, each resized as inference resizes it (the
    model's size and scales); under torchrun every process takes its share and the statistics are
    averaged. Returns the images used (unreadable ones are passed over)."""
    cfg, device = model.config, torch.device(device)

    def batches():
        for index in range(rank, min(count, len(dataset)), world):
            try:
                image, _ = dataset.load(index)
            except ImageError:
                continue
            yield pad_batch([prepare(image, cfg.size).image], device), cfg.scales

    return recompute_batchnorm(model, batches(), distributed=world > 1)


def precise_bn_of_run(model: FastMask, meta: dict[str, Any], count: int | None = None, device: str = "cpu") -> int | None:
    """`precise_bn` for a model loaded from a run's checkpoint, whose `meta` names its training data and
    settings: what the run froze stays frozen (a loaded model does not know), `count` defaults to the
    run's `bn_images`. Returns the images used (0 when nothing trains or `count` is 0), or None when
    the training data is not here. The model comes back on the CPU."""
    settings = meta.get("settings", {})
    count = settings.get("bn_images", TrainSettings.bn_images) if count is None else count
    model.body.freeze(settings.get("freeze_stages", 0), bool(settings.get("freeze_bn")))
    if count <= 0 or not training_batchnorms(model):
        return 0
    gt, images = meta.get("trained_on"), meta.get("images")
    if not gt or not images or not Path(gt).is_file() or not Path(images).is_dir():
        return None
    target = resolve_device(device)
    try:
        return precise_bn(model.to(target), CocoInstances(Path(gt), Path(images)), count, target)
    finally:
        model.cpu()


def flat_metrics(evaluation: Evaluation) -> dict[str, float | None]:
    return {f"{'mask' if t == 'segm' else 'box'} {k}": v for t, r in evaluation.results.items() for k, v in r.metrics.items()}

"""BatchNorm statistics that describe the weights a model ended with ("precise BN").

During training, a BatchNorm's running mean and variance are an exponential average of batch
statistics taken while the weights were moving. With a small momentum (EfficientNet-Lite's 0.01,
TensorFlow's 0.99 decay, right for fine-tuning ImageNet statistics) and a short schedule from
scratch they lag far behind the final weights, and the model that fitted its training set in
training mode finds nothing in eval mode. `recompute_batchnorm` runs the final weights over a fixed
set of unaugmented training images and replaces the running statistics of every BatchNorm that
trains with their plain average over those batches, as detectron2's `PreciseBN` hook does
(Wu and He, "Rethinking BatchNorm", 2021); frozen BatchNorms keep theirs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def training_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorms whose statistics training updates: those in training mode once `model.train()`
    has run (a body keeps its frozen ones in eval mode)."""
    was_training = model.training
    model.train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    model.train(was_training)
    return norms


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[tuple[Tensor, ...]], distributed: bool = False) -> int:
    """Set the running statistics of every training BatchNorm of `model` to their average over `batches`
    (each the positional arguments of one `model(...)` call, e.g. (images, scales)); returns the batches
    run. Under torch.distributed with `distributed`, the averages are averaged over processes (every
    process must call this). Gradients are not computed; the model's mode is restored.
    """
    norms = training_batchnorms(model)
    if not norms:
        return 0
    was_training = model.training
    saved = [(m.momentum, copy.deepcopy(m.state_dict())) for m in norms]
    model.train()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    count = 0
    try:
        for args in batches:
            model(*args)
            count += 1
    finally:
        for m, (momentum, state) in zip(norms, saved):
            m.momentum = momentum
            if count == 0:
                m.load_state_dict(state)  # nothing ran: keep what there was
        model.train(was_training)
    if distributed and dist.is_initialized() and dist.get_world_size() > 1:
        weight = torch.tensor([float(count)], device=norms[0].running_mean.device)
        total = weight.clone()
        dist.all_reduce(total)
        if total.item() == 0:  # no process ran a batch: every one kept its statistics
            return count
        for m in norms:  # weighted by the batches each process ran
            for stat in (m.running_mean, m.running_var):
                stat.mul_(weight / total.clamp(min=1))
                dist.all_reduce(stat)
    return count


class BatchStatistics:
    """Context in which `model`'s training BatchNorms normalise with batch statistics (as in training)
    while everything else is in eval mode; the running statistics are not touched. Used to measure
    how far eval mode is from what the weights can do."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.norms = training_batchnorms(model)

    def __enter__(self) -> nn.Module:
        self.saved = [(m.momentum, m.training, m.num_batches_tracked.clone()) for m in self.norms]
        for m in self.norms:
            m.train()
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, (momentum, training, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            m.train(training)
            m.num_batches_tracked.copy_(tracked)

"""A training run, set up (`engine.setup`): the state the loop and its hooks share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from ..modeling.model import FastMask
from .dataset import CocoInstances
from .preemption import StopSignals
from .settings import TrainSettings


@dataclass
class Run:
    """A training run, set up: what it trains, with what, on which data, and where it stands."""

    out: Path
    settings: TrainSettings
    model: FastMask
    runner: torch.nn.Module  # the model and its loss, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    precision: str  # fp32, bf16 or fp16 (autocast)
    dataset: CocoInstances
    sampler: DistributedSampler
    device: torch.device
    rank: int
    world: int
    init: str | None  # what the body started from (a file, or "imagenet (package version)")
    start_epoch: int = 0
    iteration: int = 0
    best: dict | None = None
    midway: dict | None = None  # where the interrupted epoch `start_epoch` stood: steps, this rank's rng, totals
    last_record: dict | None = None  # log.jsonl's line of the last finished epoch (checkpoint.pt keeps it too)
    stop: StopSignals = field(default_factory=StopSignals)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.settings.batch_size)

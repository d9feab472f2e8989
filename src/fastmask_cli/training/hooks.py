"""What the training loop calls at the end of each epoch, as detectron2 puts hooks around a plain loop:
precise BatchNorm statistics, validation (and best.pt), then the epoch's checkpoint and log line. Each
hook's `after_epoch` sees the run and the epoch's `EpochEnd`; the engine calls them in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..modeling.checkpoint import save_checkpoint
from .checkpoint import BEST, CHECKPOINT, MODEL, save_training_state
from .events import TrainEvents
from .precise_bn import training_batchnorms
from .run import Run
from .validation import flat_metrics, precise_bn, validate


@dataclass
class EpochEnd:
    """An epoch just trained: its record (what log.jsonl gets), whether it is the last, and whether it is
    measured (every `val_every` epochs with a val set, and the last)."""

    record: dict[str, Any]
    last: bool
    validating: bool


class Hook:
    """Called by the loop after each epoch, on every process (a hook that writes checks `run.main`)."""

    def after_epoch(self, run: Run, end: EpochEnd) -> None:
        pass


class PreciseBN(Hook):
    """Before measuring: every BatchNorm that trained gets statistics recomputed over `bn_images` training
    images (every process: they are averaged over them)."""

    def after_epoch(self, run: Run, end: EpochEnd) -> None:
        if end.validating and run.settings.bn_images > 0:
            end.record["bn_images"] = precise_bn(run.model, run.dataset, run.settings.bn_images, run.device, run.rank,
                                                 run.world)


class Validation(Hook):
    """AR on val and on the training sample into the record (`evaluate_epoch`); best.pt kept."""

    def __init__(self, gt_path: Path, images_dir: Path, val: tuple[Path, Path] | None, events: TrainEvents) -> None:
        self.gt_path, self.images_dir, self.val, self.events = gt_path, images_dir, val, events

    def after_epoch(self, run: Run, end: EpochEnd) -> None:
        if run.main and end.validating:
            evaluate_epoch(run, end.record, self.gt_path, self.images_dir, self.val, check_bn=end.last)
            if end.record.get("bn_warning"):
                self.events.note(end.record["bn_warning"])


class Checkpointer(Hook):
    """model.pt and checkpoint.pt after each epoch (`save_epoch`), and the epoch's line in log.jsonl."""

    def __init__(self, gt_path: Path, images_dir: Path, log: IO[str] | None) -> None:
        self.gt_path, self.images_dir, self.log = gt_path, images_dir, log

    def after_epoch(self, run: Run, end: EpochEnd) -> None:
        if run.main:
            save_epoch(run, end.record, self.gt_path, self.images_dir)
            self.log.write(json.dumps(end.record) + "\n")
            self.log.flush()


# Eval-mode AR on the training sample below this fraction of its AR with batch statistics: the running
# statistics do not describe the weights (seen at 0.0 against 87 on a two-image fit before precise BN).
BN_GAP = 0.5


def evaluate_epoch(run: Run, record: dict[str, Any], gt_path: Path, images_dir: Path, val: tuple[Path, Path] | None,
                   check_bn: bool = False) -> None:
    """AR on val and on a fixed sample of the training images (unaugmented), into `record`; keeps best.pt.
    With `check_bn`, the training sample is measured again with batch statistics, and a large gap
    between the two is recorded as `bn_warning`."""
    settings, model = run.settings, run.model
    options = settings.validation(str(run.device))
    if settings.train_sample > 0:
        record["train"] = flat_metrics(validate(model, gt_path, images_dir, options, settings.train_sample))
        if check_bn and training_batchnorms(model):
            batch = flat_metrics(validate(model, gt_path, images_dir, options, settings.train_sample, batch_statistics=True))
            record["train_batch_statistics"] = batch
            eval_ar, batch_ar = record["train"]["mask AR@100"] or 0.0, batch["mask AR@100"] or 0.0
            if batch_ar >= 0.05 and eval_ar < BN_GAP * batch_ar:
                record["bn_warning"] = (
                    f"on the training sample, mask AR@100 is {eval_ar * 100:.1f} in eval mode but {batch_ar * 100:.1f} with "
                    "batch statistics: the BatchNorm running statistics do not describe the weights"
                    + (" (--bn-images 0 kept the running averages; give it images)" if settings.bn_images == 0 else
                       " even after recomputing them; raise --bn-images"))
    if val is not None:
        record["val"] = flat_metrics(validate(model, val[0], val[1], options))
        if run.best is None or (record["val"]["mask AR@100"] or 0.0) > (run.best["val"]["mask AR@100"] or 0.0):
            run.best = {"epoch": record["epoch"], "val": record["val"], "train": record.get("train")}
            save_checkpoint(run.out / BEST, model, {**trained_meta(run, gt_path, images_dir, record), "val_set": str(val[0])})
            record["best"] = True
    model.train()


def trained_meta(run: Run, gt_path: Path, images_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What a saved model records of how it was trained."""
    return {"trained_on": str(gt_path), "images": str(images_dir), "epochs": record["epoch"], "iterations": run.iteration,
            "init": run.init or "scratch", "settings": run.settings.to_dict(),
            **{k: record[k] for k in ("val", "train") if k in record}}


def save_epoch(run: Run, record: dict[str, Any], gt_path: Path, images_dir: Path) -> None:
    """model.pt (for --weights) and checkpoint.pt (for --resume) after an epoch, both atomic."""
    save_checkpoint(run.out / MODEL, run.model, trained_meta(run, gt_path, images_dir, record))
    run.last_record = record
    save_training_state(run.out / CHECKPOINT, run.model, run.optimizer, run.scaler, run.settings, record["epoch"],
                         run.iteration, run.best, run.init, last_record=record)

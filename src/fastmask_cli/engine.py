"""Training engine (paper §5.2): SGD with warm-up, multi-scale augmented batches, per-epoch checkpoints
that resume exactly, validation AR through `evaluate`, and DistributedDataParallel under torchrun.

    from fastmask_cli.engine import TrainSettings, train
    summary = train("instances_train.json", "train/", "runs/x", config=preset("fast"),
                    settings=TrainSettings(epochs=12), val=("instances_val.json", "val/"))

A run folder holds `checkpoint.pt` (everything needed to resume), `model.pt` (the latest weights, in
the format `fastmask propose --weights` loads), `best.pt` (the best by validation mask AR@100) and
`log.jsonl` (one JSON object per logged step, epoch and validation).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .assign import AssignRule
from .body import load_imagenet
from .config import FastMaskConfig
from .dataset import Augment, CocoInstances, Sample
from .errors import FastMaskError
from .evaluate import Evaluation, evaluate
from .files import atomic_path, read_json
from .images import read_image
from .inference import Proposer, pad_batch, resolve_device
from .loss import FastMaskLoss, Target
from .model import FastMask
from .weights import save_checkpoint

TRAIN_FORMAT = "fastmask-train"
CHECKPOINT, MODEL, BEST, LOG = "checkpoint.pt", "model.pt", "best.pt", "log.jsonl"


@dataclass(frozen=True)
class TrainSettings:
    """Everything about a training run except the architecture (that is the FastMaskConfig)."""

    epochs: int = 30
    batch_size: int = 2  # images per step and per process
    lr: float = 0.05
    momentum: float = 0.9  # paper §5.2
    weight_decay: float = 5e-5  # paper §5.2
    warmup_iters: int = 300  # linear warm-up from lr/10, then cosine decay to lr/20
    clip_grad: float = 10.0  # gradient-norm clip: training from scratch with SGD needs it early on
    size: int = 800  # training scale: longer side before jitter (the paper's 800)
    jitter: tuple[float, float] = (0.5, 1.25)
    crop: int | None = None  # largest side after scaling (default: size)
    flip: bool = True
    copy_paste: float = 0.5
    windows_per_image: int = 128  # sampled per image: up to half positives (the original sampled 64)
    size_range: tuple[float, float] = (0.4, 0.8)
    centre_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    precision: str = "auto"  # fp32 on the CPU; bf16 autocast on CUDA (fp16 with a grad scaler on request)
    val_every: int = 1  # epochs between validations (the last epoch is always validated)
    val_top_k: int = 100
    log_every: int = 10  # iterations between log lines

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.size >= 64, "--size must be at least 64"),
            (0 < self.jitter[0] <= self.jitter[1], "--jitter must be LOW,HIGH with 0 < LOW <= HIGH"),
            (self.windows_per_image >= 2, "--windows-per-image must be at least 2"),
            (0 < self.size_range[0] < self.size_range[1] <= 1, "size range must be 0 < LOW < HIGH <= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "--precision must be auto, fp32, bf16 or fp16"),
            (self.workers >= 0 and self.val_every >= 1 and self.log_every >= 1, "workers, val-every and log-every must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastMaskError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


class TrainEvents:
    """Hooks the CLI uses to show progress; the defaults do nothing."""

    def note(self, message: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None: ...
    def step(self, metrics: dict[str, float]) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainSummary:
    out: str
    epochs: int = 0
    iterations: int = 0
    seconds_per_iteration: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    best: dict[str, Any] | None = None  # epoch and validation metrics of best.pt
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable images and why


def _distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun, joins the process group (NCCL on GPUs, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(local)
        target = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return dist.get_rank(), world, target


def _lr_factor(iteration: int, total: int, warmup: int) -> float:
    """Linear warm-up from 1/10, then cosine decay to 1/20 of the base learning rate."""
    if iteration < warmup:
        return 0.1 + 0.9 * iteration / warmup
    progress = (iteration - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _to_batch(samples: list[Sample], device: torch.device) -> tuple[torch.Tensor, list[Target]]:
    """The padded image batch (as inference pads it) and each image's targets."""
    targets = [Target(torch.from_numpy(s.masks).to(device), torch.from_numpy(s.boxes()).to(device),
                      torch.from_numpy(s.ignore).to(device)) for s in samples]
    return pad_batch([s.image for s in samples], device), targets


def _collate(samples: list[Sample]) -> list[Sample]:
    return samples


def validate(model: FastMask, gt_path: Path, images_dir: Path, top_k: int = 100, device: str = "cpu") -> Evaluation:
    """Mask and box AR of `model` on the COCO set `gt_path` (images under `images_dir`), through `evaluate`."""
    gt = read_json(gt_path, "validation ground truth")
    proposer = Proposer(model, device=device, top_k=top_k)
    results = []
    for image in gt.get("images", []):
        path = Path(images_dir) / image["file_name"]
        if path.is_file():
            results += proposer.propose(read_image(path)).to_coco(image["id"])
    return evaluate(Path(gt_path), results, allow_missing=True)


def _flat(evaluation: Evaluation) -> dict[str, float | None]:
    return {f"{'mask' if t == 'segm' else 'box'} {k}": v for t, r in evaluation.results.items() for k, v in r.metrics.items()}


def _save_training_state(path: Path, model: FastMask, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                         settings: TrainSettings, epoch: int, iteration: int, best: dict | None, init: str | None) -> None:
    payload = {"format": TRAIN_FORMAT, "version": 1, "config": model.config.to_dict(), "settings": settings.to_dict(),
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scaler": scaler.state_dict() if scaler is not None else None,
               "epoch": epoch, "iteration": iteration, "best": best, "init": init}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_training_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the same failure for the user
        raise FastMaskError(f"{path} is not a readable training checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise FastMaskError(f"{path} is not a fastmask training checkpoint")
    return state


def train(
    gt_path: Path,
    images_dir: Path,
    out: Path,
    *,
    config: FastMaskConfig,
    settings: TrainSettings = TrainSettings(),
    init: Path | None = None,
    val: tuple[Path, Path] | None = None,
    resume: bool = False,
    device: str = "auto",
    events: TrainEvents | None = None,
) -> TrainSummary:
    """Train FastMask on COCO-format data; see the module docstring for what lands in `out`.

    With `resume`, the architecture and settings come from `out/checkpoint.pt` (only `epochs` may
    grow), and training goes on from the last finished epoch with the same data order and sampling
    as an unbroken run.
    """
    events = events or TrainEvents()
    out = Path(out)
    rank, world, dev = _distributed(device)
    main = rank == 0
    state = None
    if (out / CHECKPOINT).exists():
        if not resume:
            raise FastMaskError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
        state = _load_training_state(out / CHECKPOINT)
        stored = TrainSettings.from_dict(state["settings"])
        config = FastMaskConfig.from_dict(state["config"])
        given, settings = settings, replace(stored, epochs=settings.epochs, workers=settings.workers)
        differ = [f"{k} {v!r} (given {getattr(given, k)!r})" for k, v in asdict(settings).items()
                  if v != getattr(given, k) and k not in ("epochs", "workers")]
        if differ and given != TrainSettings(epochs=given.epochs, workers=given.workers):
            events.note("the run's own settings are kept: " + ", ".join(differ))
        init = Path(state["init"]) if state.get("init") else None
        events.note(f"resuming {out} after epoch {state['epoch']} (iteration {state['iteration']})")
    elif resume:
        events.note(f"nothing to resume in {out}: starting a new run")
    if main:
        out.mkdir(parents=True, exist_ok=True)

    augment = Augment(settings.size, settings.jitter, settings.crop, settings.flip, settings.copy_paste)
    dataset = CocoInstances(gt_path, images_dir, augment, seed=settings.seed)
    if main:
        for message in dataset.report.notes:
            events.note(message)
    if val is not None:
        read_json(val[0], "validation ground truth")  # fail now, not after the first epoch
        if not Path(val[1]).is_dir():
            raise FastMaskError(f"validation images folder not found: {val[1]}")

    torch.manual_seed(settings.seed)
    model = FastMask(config)
    if init is not None and state is None:
        report = load_imagenet(model.body, init)
        events.note(f"body initialised: {report.summary()}")
    model.to(dev).train()
    objective = FastMaskLoss(model, settings.windows_per_image, AssignRule(settings.size_range, settings.centre_fraction))
    runner = DistributedDataParallel(objective, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else objective

    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    precision = settings.precision if settings.precision != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    if precision == "fp16" and dev.type != "cuda":
        raise FastMaskError("fp16 training needs a CUDA device; on the CPU use fp32 or bf16")
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    autocast = (lambda: contextlib.nullcontext()) if precision == "fp32" else \
        (lambda: torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16))

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed)
    iterations_per_epoch = math.ceil(len(sampler) / settings.batch_size)
    total = iterations_per_epoch * settings.epochs
    start_epoch, iteration, best = 0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, iteration, best = state["epoch"], state["iteration"], state.get("best")

    summary = TrainSummary(str(out), epochs=start_epoch, iterations=iteration, best=best)
    log = open(out / LOG, "a") if main else None
    step_seconds = []
    try:
        for epoch in range(start_epoch, settings.epochs):
            torch.manual_seed(_epoch_seed(settings.seed, epoch))  # window sampling: same per epoch on resume
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.workers,
                                collate_fn=_collate, persistent_workers=False)
            events.epoch_start(epoch + 1, settings.epochs, iterations_per_epoch)
            totals: dict[str, float] = {}
            steps = 0
            for samples in loader:
                good = [s for s in samples if s.error is None]
                for s in samples:
                    if s.error is not None and s.file not in summary.skipped:
                        summary.skipped[s.file] = s.error
                        events.note(f"skipped {s.file}: {s.error}")
                if not good:
                    if world == 1:
                        continue
                    # every process must step together: train on a blank image (negatives only)
                    good = [Sample(np.full((64, 64, 3), 124, np.uint8), np.zeros((0, 64, 64), np.uint8), np.zeros(0, bool))]
                started = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * _lr_factor(iteration, total, settings.warmup_iters)
                images, targets = _to_batch(good, dev)
                with autocast():
                    losses = runner(images, targets)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(losses["loss"]).backward()
                    scaler.unscale_(optimizer)
                else:
                    losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                iteration += 1
                steps += 1
                values = {k: float(v.detach()) for k, v in losses.items()}
                if not math.isfinite(values["loss"]):
                    raise FastMaskError(f"the loss became {values['loss']} at iteration {iteration}; lower --lr")
                step_seconds.append(time.perf_counter() - started)
                for k, v in values.items():
                    totals[k] = totals.get(k, 0.0) + v
                if summary.first_loss is None:
                    summary.first_loss = values["loss"]
                metrics = {"epoch": epoch + 1, "iteration": iteration, "lr": optimizer.param_groups[0]["lr"],
                           "seconds": step_seconds[-1], **values}
                events.step(metrics)
                if log is not None and iteration % settings.log_every == 0:
                    log.write(json.dumps({"type": "step", **metrics}) + "\n")
                    log.flush()

            record: dict[str, Any] = {"type": "epoch", "epoch": epoch + 1, "iteration": iteration,
                                      **{k: v / max(steps, 1) for k, v in totals.items()}}
            summary.last_loss = record.get("loss", summary.last_loss)
            if main:
                meta = {"trained_on": str(gt_path), "images": str(images_dir), "epochs": epoch + 1, "iterations": iteration,
                        "init": str(init) if init else "scratch", "settings": settings.to_dict()}
                if val is not None and ((epoch + 1) % settings.val_every == 0 or epoch + 1 == settings.epochs):
                    metrics = _flat(validate(model, val[0], val[1], settings.val_top_k, device=str(dev)))
                    model.train()
                    record["val"] = metrics
                    if best is None or (metrics["mask AR@100"] or 0.0) > (best["val"]["mask AR@100"] or 0.0):
                        best = {"epoch": epoch + 1, "val": metrics}
                        save_checkpoint(out / BEST, model, {**meta, "val": metrics, "val_set": str(val[0])})
                        record["best"] = True
                save_checkpoint(out / MODEL, model, {**meta, **({"val": record["val"]} if "val" in record else {})})
                _save_training_state(out / CHECKPOINT, model, optimizer, scaler, settings, epoch + 1, iteration, best,
                                     str(init) if init else None)
                log.write(json.dumps(record) + "\n")
                log.flush()
            if world > 1:
                dist.barrier()
            summary.epochs, summary.iterations, summary.best = epoch + 1, iteration, best
            events.epoch_end(record)
    finally:
        if log is not None:
            log.close()
    summary.seconds_per_iteration = float(np.median(step_seconds)) if step_seconds else 0.0
    return summary

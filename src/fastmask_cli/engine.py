"""Training engine (paper §5.2): SGD with warm-up, multi-scale augmented batches, per-epoch checkpoints
that resume exactly, validation AR through `evaluate`, and DistributedDataParallel under torchrun.

    from fastmask_cli.engine import TrainSettings, train
    summary = train("instances_train.json", "train/", "runs/x", config=preset("fast"),
                    settings=TrainSettings(epochs=12), val=("instances_val.json", "val/"))

A run folder holds `checkpoint.pt` (everything needed to resume), `model.pt` (the latest weights, in
the format `fastmask propose --weights` loads), `best.pt` (the best by validation mask AR@100) and
`log.jsonl` (one JSON object per logged step, epoch and validation).

Preemption: `checkpoint.pt` is also written every `checkpoint_every` iterations, and when SIGTERM or
SIGUSR1 arrives (what Slurm sends before preempting or at the time limit): every process stops at the
same iteration, rank 0 writes the checkpoint, and `train` returns with `summary.stopped_by` set.
A resumed run continues mid-epoch with the data order, window sampling and weights an unbroken run
would have had (bit-identical on the same number of processes).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import math
import os
import signal
import threading
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
from .bodies import initialise, resolve_init
from .config import FastMaskConfig
from .coco import read_ground_truth
from .dataset import Augment, CocoInstances, Sample
from .errors import FastMaskError
from .evaluate import Evaluation, evaluate
from .files import atomic_path, writable_folder
from .images import ImageError, read_image
from .inference import Proposer, pad_batch, prepare, resolve_device
from .loss import OBJECTNESS, FastMaskLoss, Target
from .model import FastMask
from .precise_bn import BatchStatistics, recompute_batchnorm, training_batchnorms
from .weights import TRAINING_FORMAT, load_network, save_checkpoint, starting_checkpoint

CHECKPOINT, MODEL, BEST, LOG = "checkpoint.pt", "model.pt", "best.pt", "log.jsonl"
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}


@dataclass(frozen=True)
class TrainSettings:
    """Everything about a training run except the architecture (that is the FastMaskConfig)."""

    epochs: int = 30
    batch_size: int = 2  # images per step and per process
    optimizer: str = "adamw"  # the paper's SGD fits the fully connected head far slower (see README)
    lr: float | None = None  # default: DEFAULT_LR of the optimizer
    momentum: float = 0.9  # SGD only (paper §5.2)
    weight_decay: float = 5e-5  # paper §5.2
    warmup_iters: int = 300  # linear warm-up from lr/10, then cosine decay to lr/20
    clip_grad: float = 10.0  # gradient-norm clip: training from scratch needs it early on
    freeze_stages: int = 0  # leading body stages fixed (the stem counts as one)
    freeze_bn: bool | None = None  # every body BatchNorm fixed; default: yes with --init, no from scratch
    size: int = 800  # training scale: longer side before jitter (the paper's 800)
    jitter: tuple[float, float] = (0.5, 1.25)
    crop: int | None = None  # largest side after scaling (default: size)
    flip: bool = True
    copy_paste: float = 0.5
    windows_per_image: int = 128  # sampled per image: up to half positives (the original sampled 64)
    objectness: str = "binary"  # confidence target of a positive window: 1, or its mask's IoU ("iou", OLN; loss.py)
    size_range: tuple[float, float] = (0.4, 0.8)
    centre_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    precision: str = "auto"  # fp32 on the CPU; bf16 autocast on CUDA (fp16 with a grad scaler on request)
    val_every: int = 1  # epochs between validations (the last epoch is always validated)
    val_top_k: int = 100
    train_sample: int = 8  # training images (unaugmented) evaluated beside val, to see under- or over-fitting
    bn_images: int = 64  # training images (unaugmented) that recompute BatchNorm statistics before validating
    log_every: int = 10  # iterations between log lines
    checkpoint_every: int = 1000  # iterations between mid-epoch checkpoints (0: at epoch ends only)

    def __post_init__(self) -> None:
        if self.lr is None and self.optimizer in DEFAULT_LR:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.optimizer in DEFAULT_LR, f"--optimizer must be one of {', '.join(DEFAULT_LR)}"),
            (self.lr is not None and self.lr > 0, "--lr must be positive"),
            (self.freeze_stages >= 0, "--freeze-stages must be at least 0"),
            (self.size >= 64, "--size must be at least 64"),
            (0 < self.jitter[0] <= self.jitter[1], "--jitter must be LOW,HIGH with 0 < LOW <= HIGH"),
            (self.windows_per_image >= 2, "--windows-per-image must be at least 2"),
            (self.objectness in OBJECTNESS, f"--objectness must be one of {', '.join(OBJECTNESS)}"),
            (0 < self.size_range[0] < self.size_range[1] <= 1, "size range must be 0 < LOW < HIGH <= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "--precision must be auto, fp32, bf16 or fp16"),
            (self.workers >= 0 and self.val_every >= 1 and self.log_every >= 1, "workers, val-every and log-every must be positive"),
            (self.bn_images >= 0, "--bn-images must be at least 0"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be at least 0"),
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
        values.setdefault("optimizer", "sgd")  # runs stored before --optimizer existed used SGD ...
        values.setdefault("freeze_bn", False)  # ... and trained every BatchNorm
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
    last_val: dict[str, Any] | None = None  # AR on val at the last evaluated epoch
    last_train: dict[str, Any] | None = None  # AR on the fixed training sample at the last evaluated epoch
    last_train_batch_statistics: dict[str, Any] | None = None  # the same with batch statistics (at the end)
    bn_warning: str | None = None  # eval mode far below batch statistics on the training sample
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable images and why
    stopped_by: str | None = None  # "SIGTERM" or "SIGUSR1": checkpointed mid-run, resume to go on
    step_seconds: list[float] = field(default_factory=list, repr=False)


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


def validate(model: FastMask, gt_path: Path, images_dir: Path, top_k: int = 100, device: str = "cpu",
             limit: int | None = None, backend: str = "torch", batch_statistics: bool = False) -> Evaluation:
    """Mask and box AR of `model` on the COCO set `gt_path` (images under `images_dir`), through `evaluate`;
    with `limit`, on its first `limit` images by id only (a fixed sample). PyTorch by default: during
    training the weights change between validations, and an exported graph would serve one of them.
    `batch_statistics`: its training BatchNorms normalise each image with its own statistics, as in
    training (to see what the weights can do whatever the running statistics say)."""
    gt = read_ground_truth(gt_path, "validation ground truth")
    proposer = Proposer(model, device=device, top_k=top_k, backend=backend)
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


def _flat(evaluation: Evaluation) -> dict[str, float | None]:
    return {f"{'mask' if t == 'segm' else 'box'} {k}": v for t, r in evaluation.results.items() for k, v in r.metrics.items()}


def _save_training_state(path: Path, model: FastMask, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                         settings: TrainSettings, epoch: int, iteration: int, best: dict | None, init: str | None,
                         midway: dict | None = None) -> None:
    """`epoch` epochs finished; `midway` (steps, world, rng per rank, loss totals) where the next one is under way."""
    payload = {"format": TRAINING_FORMAT, "version": 1, "config": model.config.to_dict(), "settings": settings.to_dict(),
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scaler": scaler.state_dict() if scaler is not None else None,
               "epoch": epoch, "iteration": iteration, "best": best, "init": init, "midway": midway}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


class StopSignals:
    """SIGTERM and SIGUSR1 noted, not obeyed at once: the loop stops at the next step that every process
    agrees on, after writing a checkpoint. Installed only from the main thread (signals go there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _worker_init(worker_id: int) -> None:
    """DataLoader workers leave stopping to the main process (a worker killed by Slurm's SIGTERM would
    fail the main process before it checkpoints), and die with it however it ends (PR_SET_PDEATHSIG)."""
    for sig in (*StopSignals.SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)


class _SkipBatches(torch.utils.data.Sampler):
    """`sampler` without its first `skip` indices: the rest of an epoch that a checkpoint interrupted."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_training_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the same failure for the user
        raise FastMaskError(f"{path} is not a readable training checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_FORMAT:
        raise FastMaskError(f"{path} is not a fastmask training checkpoint")
    return state


@dataclass
class Run:
    """A training run, set up: what it trains, with what, on which data, and where it stands."""

    out: Path
    settings: TrainSettings
    model: FastMask
    runner: torch.nn.Module  # the model and its loss, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Any  # () -> context manager
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
    stop: StopSignals = field(default_factory=StopSignals)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(len(self.sampler) / self.settings.batch_size)


def setup(gt_path: Path, images_dir: Path, out: Path, config: FastMaskConfig, settings: TrainSettings,
          init: str | Path | None, resume: bool, device: str, events: TrainEvents) -> Run:
    """Build (or restore from `out/checkpoint.pt`) the model, optimiser and data of a run."""
    rank, world, dev = _distributed(device)
    state = None
    if (out / CHECKPOINT).exists():
        if not resume:
            raise FastMaskError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
        state = _load_training_state(out / CHECKPOINT)
        stored = TrainSettings.from_dict(state["settings"])
        config = FastMaskConfig.from_dict(state["config"])
        free = ("epochs", "workers", "checkpoint_every")  # may change on resume: they do not change the result
        given, settings = settings, replace(stored, **{k: getattr(settings, k) for k in free})
        differ = [f"{k} {v!r} (given {getattr(given, k)!r})" for k, v in asdict(settings).items()
                  if v != getattr(given, k) and k not in free]
        if differ and given != TrainSettings(**{k: getattr(given, k) for k in free}):
            events.note("the run's own settings are kept: " + ", ".join(differ))
        init = state.get("init")
        midway = state.get("midway")
        if midway and midway["world"] != world:
            events.note(f"the run was stopped in epoch {state['epoch'] + 1} on {midway['world']} processes, now {world}: "
                        "that epoch starts again from its beginning")
            state["midway"] = None
        where = f"in epoch {state['epoch'] + 1}" if state.get("midway") else f"after epoch {state['epoch']}"
        events.note(f"resuming {out} {where} (iteration {state['iteration']})")
    elif resume:
        events.note(f"nothing to resume in {out}: starting a new run")
    if rank == 0:
        writable_folder(out, "the training run")

    augment = Augment(settings.size, settings.jitter, settings.crop, settings.flip, settings.copy_paste)
    dataset = CocoInstances(gt_path, images_dir, augment, seed=settings.seed)
    if rank == 0:
        for message in dataset.report.notes:
            events.note(message)

    torch.manual_seed(settings.seed)
    model = FastMask(config)
    if state is None:
        init, note = resolve_init(config.body, init)
        if note and rank == 0:
            events.note(note)
    if init is not None and state is None:
        start = starting_checkpoint(init)
        if start is not None:  # fine-tuning a whole trained network
            path, digest, _, weights = start
            fresh = load_network(model, weights, path)
            # a shipped name stays a name (the manifest's provenance); a folder is shown as the file taken from it
            init = f"{path if Path(str(init)).exists() else init} (sha256 {digest[:12]})"
            events.note(f"network initialised from {init}" + (f"; starting fresh: {', '.join(fresh)}" if fresh else ""))
        else:
            report, init = initialise(model.body, config.body, init)
            events.note(f"body initialised: {report.summary()}")
    if settings.freeze_bn is None:  # a pretrained body keeps its ImageNet statistics; batch-2 statistics are noise
        settings = replace(settings, freeze_bn=init is not None)
    try:
        model.body.freeze(settings.freeze_stages, settings.freeze_bn)
    except ValueError as exc:
        raise FastMaskError(f"--freeze-stages: {exc}") from None
    model.to(dev).train()
    objective = FastMaskLoss(model, settings.windows_per_image, AssignRule(settings.size_range, settings.centre_fraction),
                             settings.objectness)
    runner = DistributedDataParallel(objective, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else objective

    trainable = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    precision = settings.precision if settings.precision != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    if precision == "fp16" and dev.type != "cuda":
        raise FastMaskError("fp16 training needs a CUDA device; on the CPU use fp32 or bf16")
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    autocast = (lambda: contextlib.nullcontext()) if precision == "fp32" else \
        (lambda: torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed)
    run = Run(out, settings, model, runner, optimizer, scaler, autocast, dataset, sampler, dev, rank, world,
              str(init) if init is not None else None)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        run.start_epoch, run.iteration, run.best = state["epoch"], state["iteration"], state.get("best")
        if state.get("midway"):
            midway = state["midway"]
            run.midway = {"batches": midway["batches"], "steps": midway["steps"], "rng": midway["rng"][rank],
                          "totals": midway["totals"][rank]}
    return run


def train_step(run: Run, samples: list[Sample]) -> dict[str, float]:
    """One optimiser step on a batch; returns the loss and its terms."""
    settings, optimizer = run.settings, run.optimizer
    total = run.iterations_per_epoch * settings.epochs
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * _lr_factor(run.iteration, total, settings.warmup_iters)
    images, targets = _to_batch(samples, run.device)
    with run.autocast():
        losses = run.runner(images, targets)
    optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(losses["loss"]).backward()
        run.scaler.unscale_(optimizer)
    else:
        losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], settings.clip_grad)
    if run.scaler is not None:
        run.scaler.step(optimizer)
        run.scaler.update()
    else:
        optimizer.step()
    run.iteration += 1
    values = {k: float(v.detach()) for k, v in losses.items()}
    if not math.isfinite(values["loss"]):
        raise FastMaskError(f"the loss became {values['loss']} at iteration {run.iteration}; lower --lr")
    return values


def _stop_agreed(run: Run) -> bool:
    """Whether any process has been asked to stop; every process gets the same answer at the same step."""
    asked = run.stop.received is not None
    if run.world == 1:
        return asked
    flag = torch.tensor([float(asked)], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and run.stop.received is None:
        run.stop.received = "another process's signal"
    return bool(flag.item())


def save_midway(run: Run, epoch: int, batches: int, steps: int, totals: dict[str, float]) -> None:
    """checkpoint.pt in the middle of epoch `epoch` (0-based), `batches` of it read and `steps` taken:
    every process sends its random state (window sampling differs per process), rank 0 writes."""
    mine = {"rng": {k: v.cpu() for k, v in _rng_state(run.device).items()}, "totals": totals}
    gathered = [mine]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, mine)
    if run.main:
        midway = {"batches": batches, "steps": steps, "world": run.world,
                  "rng": [g["rng"] for g in gathered], "totals": [g["totals"] for g in gathered]}
        _save_training_state(run.out / CHECKPOINT, run.model, run.optimizer, run.scaler, run.settings, epoch,
                             run.iteration, run.best, run.init, midway)
    if run.world > 1:
        dist.barrier()


def train_one_epoch(run: Run, epoch: int, events: TrainEvents, summary: TrainSummary, log: Any) -> dict[str, Any] | None:
    """One pass over this process's share of the data; returns the epoch's mean losses, or None when a
    stop signal ended it (after a checkpoint). An epoch that a checkpoint interrupted goes on from there."""
    settings = run.settings
    torch.manual_seed(_epoch_seed(settings.seed, epoch))  # window sampling: same per epoch on resume
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    midway, run.midway = run.midway, None
    batches, steps, totals = (midway["batches"], midway["steps"], dict(midway["totals"])) if midway else (0, 0, {})
    sampler = _SkipBatches(run.sampler, batches * settings.batch_size) if batches else run.sampler
    loader = iter(DataLoader(run.dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.workers,
                             collate_fn=_collate, persistent_workers=False, worker_init_fn=_worker_init))
    if midway:  # after the loader has drawn its seed from the same generator, as it had when the state was saved
        _set_rng_state(midway["rng"], run.device)
    events.epoch_start(epoch + 1, settings.epochs, run.iterations_per_epoch)
    for samples in loader:
        batches += 1
        good = [s for s in samples if s.error is None]
        for s in samples:
            if s.error is not None and s.file not in summary.skipped:
                summary.skipped[s.file] = s.error
                events.note(f"skipped {s.file}: {s.error}")
        if not good:
            if run.world == 1:
                continue
            # every process must step together: train on a blank image (negatives only)
            good = [Sample(np.full((64, 64, 3), 124, np.uint8), np.zeros((0, 64, 64), np.uint8), np.zeros(0, bool))]
        started = time.perf_counter()
        values = train_step(run, good)
        summary.step_seconds.append(time.perf_counter() - started)
        steps += 1
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v
        if summary.first_loss is None:
            summary.first_loss = values["loss"]
        metrics = {"epoch": epoch + 1, "iteration": run.iteration, "lr": run.optimizer.param_groups[0]["lr"],
                   "seconds": summary.step_seconds[-1], **values}
        events.step(metrics)
        if log is not None and run.iteration % settings.log_every == 0:
            log.write(json.dumps({"type": "step", **metrics}) + "\n")
            log.flush()
        stopping = _stop_agreed(run)
        ending = batches == run.iterations_per_epoch  # the epoch's end writes its own checkpoint
        if stopping or (settings.checkpoint_every and run.iteration % settings.checkpoint_every == 0 and not ending):
            save_midway(run, epoch, batches, steps, totals)
        if stopping:
            return None
    return {"type": "epoch", "epoch": epoch + 1, "iteration": run.iteration, **{k: v / max(steps, 1) for k, v in totals.items()}}


# Eval-mode AR on the training sample below this fraction of its AR with batch statistics: the running
# statistics do not describe the weights (seen at 0.0 against 87 on a two-image fit before precise BN).
BN_GAP = 0.5


def evaluate_epoch(run: Run, record: dict[str, Any], gt_path: Path, images_dir: Path, val: tuple[Path, Path] | None,
                   check_bn: bool = False) -> None:
    """AR on val and on a fixed sample of the training images (unaugmented), into `record`; keeps best.pt.
    With `check_bn`, the training sample is measured again with batch statistics, and a large gap
    between the two is recorded as `bn_warning`."""
    settings, model = run.settings, run.model
    if settings.train_sample > 0:
        record["train"] = _flat(validate(model, gt_path, images_dir, settings.val_top_k, str(run.device), settings.train_sample))
        if check_bn and training_batchnorms(model):
            batch = _flat(validate(model, gt_path, images_dir, settings.val_top_k, str(run.device), settings.train_sample,
                                   batch_statistics=True))
            record["train_batch_statistics"] = batch
            eval_ar, batch_ar = record["train"]["mask AR@100"] or 0.0, batch["mask AR@100"] or 0.0
            if batch_ar >= 0.05 and eval_ar < BN_GAP * batch_ar:
                record["bn_warning"] = (
                    f"on the training sample, mask AR@100 is {eval_ar * 100:.1f} in eval mode but {batch_ar * 100:.1f} with "
                    "batch statistics: the BatchNorm running statistics do not describe the weights"
                    + (" (--bn-images 0 kept the running averages; give it images)" if settings.bn_images == 0 else
                       " even after recomputing them; raise --bn-images"))
    if val is not None:
        record["val"] = _flat(validate(model, val[0], val[1], settings.val_top_k, device=str(run.device)))
        if run.best is None or (record["val"]["mask AR@100"] or 0.0) > (run.best["val"]["mask AR@100"] or 0.0):
            run.best = {"epoch": record["epoch"], "val": record["val"], "train": record.get("train")}
            save_checkpoint(run.out / BEST, model, {**_meta(run, gt_path, images_dir, record), "val_set": str(val[0])})
            record["best"] = True
    model.train()


def _meta(run: Run, gt_path: Path, images_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """What a saved model records of how it was trained."""
    return {"trained_on": str(gt_path), "images": str(images_dir), "epochs": record["epoch"], "iterations": run.iteration,
            "init": run.init or "scratch", "settings": run.settings.to_dict(),
            **{k: record[k] for k in ("val", "train") if k in record}}


def save_epoch(run: Run, record: dict[str, Any], gt_path: Path, images_dir: Path) -> None:
    """model.pt (for --weights) and checkpoint.pt (for --resume) after an epoch, both atomic."""
    save_checkpoint(run.out / MODEL, run.model, _meta(run, gt_path, images_dir, record))
    _save_training_state(run.out / CHECKPOINT, run.model, run.optimizer, run.scaler, run.settings, record["epoch"],
                         run.iteration, run.best, run.init)


def train(
    gt_path: Path,
    images_dir: Path,
    out: Path,
    *,
    config: FastMaskConfig,
    settings: TrainSettings = TrainSettings(),
    init: str | Path | None = "auto",
    val: tuple[Path, Path] | None = None,
    resume: bool = False,
    device: str = "auto",
    events: TrainEvents | None = None,
) -> TrainSummary:
    """Train FastMask on COCO-format data; see the module docstring for what lands in `out`.

    `init` is "auto" (ImageNet weights where the body's pip package is installed, else scratch), "imagenet"
    (the body's weights from its pip package), a state-dict file for the body, None / "none" (scratch),
    or a trained network to fine-tune (a shipped name, a run folder or a checkpoint file: `config` must
    match it, and may add parts such as `stride8`, which start fresh).
    With `resume`, the architecture and settings come from `out/checkpoint.pt` (only `epochs` may
    grow), and training goes on from the last finished epoch with the same data order and sampling
    as an unbroken run.
    """
    events = events or TrainEvents()
    out = Path(out)
    if val is not None:
        read_ground_truth(val[0], "validation ground truth")  # fail now, not after the first epoch
        if not Path(val[1]).is_dir():
            raise FastMaskError(f"validation images folder not found: {val[1]}")
    run = setup(gt_path, images_dir, out, config, settings, init, resume, device, events)
    settings = run.settings
    summary = TrainSummary(str(out), epochs=run.start_epoch, iterations=run.iteration, best=run.best)
    log = open(out / LOG, "a") if run.main else None
    try:
        with run.stop:
            _train_epochs(run, gt_path, images_dir, val, events, summary, log)
    finally:
        if log is not None:
            log.close()
    summary.stopped_by = run.stop.received
    summary.seconds_per_iteration = float(np.median(summary.step_seconds)) if summary.step_seconds else 0.0
    return summary


def _train_epochs(run: Run, gt_path: Path, images_dir: Path, val: tuple[Path, Path] | None, events: TrainEvents,
                  summary: TrainSummary, log: Any) -> None:
    """The epochs from where the run stands; returns early (checkpoint written) when asked to stop."""
    settings = run.settings
    for epoch in range(run.start_epoch, settings.epochs):
        if _stop_agreed(run):  # asked between epochs: the last epoch's checkpoint is already written
            return
        record = train_one_epoch(run, epoch, events, summary, log)
        if record is None:
            summary.iterations = run.iteration
            return
        summary.last_loss = record.get("loss", summary.last_loss)
        last = epoch + 1 == settings.epochs
        # without val, the training sample is measured at the end only: it is there to compare with val
        validating = last or (val is not None and (epoch + 1) % settings.val_every == 0)
        if validating and settings.bn_images > 0:  # every process: statistics are averaged over them
            record["bn_images"] = precise_bn(run.model, run.dataset, settings.bn_images, run.device, run.rank, run.world)
        if run.main:
            if validating:
                evaluate_epoch(run, record, gt_path, images_dir, val, check_bn=last)
                if record.get("bn_warning"):
                    events.note(record["bn_warning"])
            save_epoch(run, record, gt_path, images_dir)
            log.write(json.dumps(record) + "\n")
            log.flush()
        if run.world > 1:
            dist.barrier()
        summary.epochs, summary.iterations, summary.best = epoch + 1, run.iteration, run.best
        summary.last_val, summary.last_train = record.get("val", summary.last_val), record.get("train", summary.last_train)
        summary.last_train_batch_statistics = record.get("train_batch_statistics", summary.last_train_batch_statistics)
        summary.bn_warning = record.get("bn_warning", summary.bn_warning)
        events.epoch_end(record)

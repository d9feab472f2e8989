"""The `fastmask` command: a thin layer over the Python API (`fastmask_cli.propose_folder` and friends)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .config import PRESETS
from .errors import FastMaskError
from .files import write_json_atomic
from .images import MAX_PIXELS
from .inference import Proposer
from .propose import partial_path, propose_folder
from .weights import ModelInfo, load_model, read_manifest

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
            console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Finished work is kept; rerun with --resume to continue.")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            if os.environ.get("FASTMASK_DEBUG"):
                raise
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
                "Train with `fastmask train`, or pass --weights with a trained checkpoint.",
                title="untrained model",
                border_style="bold red",
            )
        )
    else:
        console.print(f"weights: {info.describe()}", highlight=False)
    if info.body_init:
        console.print(f"body: {info.body_init.summary()}", highlight=False)


@app.command()
@friendly_errors
def propose(
    images_dir: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="COCO results file to write (JSON list)."),
    weights: Optional[str] = typer.Option(None, help="Shipped weights name, checkpoint path, or 'fast'/'accurate' for an untrained preset. Default: the best shipped."),
    ann: Optional[Path] = typer.Option(None, help="COCO ground truth whose file_name -> id mapping gives the image ids."),
    top_k: int = typer.Option(100, "--top-k", help="Proposals per image (1000 for AR@1k)."),
    scales: Optional[int] = typer.Option(None, help="Pyramid levels (necks are weight-shared). Default: the model's."),
    size: Optional[int] = typer.Option(None, help="Longer image side the network sees, in pixels. Default: the model's."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (CUDA) or bf16."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per forward pass."),
    vis: Optional[Path] = typer.Option(None, help="Folder for overlay PNGs of the top 10 proposals."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUT.partial."),
    nms: str = typer.Option("none", help="Suppress near-duplicates: none, box or mask."),
    nms_iou: float = typer.Option(0.8, "--nms-iou", help="IoU above which a lower-scored proposal is suppressed."),
    mask_threshold: Optional[float] = typer.Option(None, "--mask-threshold", help="Mask probability threshold. Default: the model's (0.2)."),
    init: Optional[Path] = typer.Option(None, help="torchvision ImageNet checkpoint for the body of an untrained preset."),
    max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", help="Skip images with more pixels than this."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the run summary as JSON here."),
) -> None:
    """Segment proposals for every image in IMAGES_DIR, written as COCO results (RLE masks, boxes, scores)."""
    model, info = load_model(weights, init)
    proposer = Proposer(model, device=device, precision=precision, top_k=top_k, scales=scales, size=size,
                        mask_threshold=mask_threshold, nms=nms, nms_iou=nms_iou)
    if not resume and partial_path(out).exists():
        console.print(f"[yellow]Found an interrupted run ({partial_path(out)}); starting over. Use --resume to continue it.[/]")

    def start(total: int) -> None:  # inputs are valid by now: say what model runs, then show progress
        warn_if_untrained(info)
        progress.add_task("proposing", total=total)

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        summary = propose_folder(
            proposer, images_dir, out, weights_id=info.sha256 or f"untrained:{info.name}", ann=ann, resume=resume,
            vis_dir=vis, batch_size=batch_size, max_pixels=max_pixels,
            on_start=start,
            on_image=lambda rel: progress.advance(progress.task_ids[0]),
        )
    table = Table(title="fastmask propose", show_header=False)
    table.add_row("images", f"{summary.images}" + (f" ({summary.resumed} from the interrupted run)" if summary.resumed else ""))
    table.add_row("proposals", f"{summary.proposals} (top-{top_k}, {proposer.scales} scales, size {proposer.size}, {proposer.device})")
    table.add_row("seconds per image", f"{summary.seconds_per_image:.3f}")
    table.add_row("skipped", str(len(summary.skipped)))
    if summary.ignored:
        table.add_row("ignored (not images)", str(len(summary.ignored)))
    table.add_row("results", summary.out)
    if summary.file_list:
        table.add_row("image ids", summary.file_list)
    if vis:
        table.add_row("overlays", str(vis))
    console.print(table)
    for rel, reason in summary.skipped[:20]:
        console.print(f"  skipped {rel}: {reason}", highlight=False)
    if len(summary.skipped) > 20:
        console.print(f"  ... and {len(summary.skipped) - 20} more (see --json)")
    if json_out:
        write_json_atomic(json_out, {**summary.to_dict(), "weights": info.describe(), "settings": proposer.settings()})
    if not info.trained:
        console.print("[bold red]Reminder: these proposals come from an UNTRAINED model.[/]")


@app.command("weights")
@friendly_errors
def list_weights(
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """What weights are shipped, how they were trained, and what they measured."""
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
                      str(m.get("config", {}).get("streams", "?")), str(metrics.get("segm", {}).get("AR@100", "?")),
                      str(metrics.get("bbox", {}).get("AR@100", "?")), m["sha256"][:12])
    console.print(table)

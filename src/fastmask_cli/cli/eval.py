"""`fastmask eval`: class-agnostic average recall of a results file, proposing first with --images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..coco.evaluate import IOU_TYPES, PAPER, evaluate
from ..coco.plot import plot_recall
from ..errors import FastMaskError
from ..io.files import writable_file, write_json_atomic
from .common import (
    BACKEND,
    BATCH_SIZE,
    DEVICE,
    INIT,
    JOBS,
    PRECISION,
    SCALES,
    SIZE,
    WEIGHTS,
    WORKERS,
    console,
    friendly_errors,
    load_proposer,
    make_progress,
    progress_columns,
    say_note,
)
from .propose import run_propose


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
    jobs: str = JOBS,
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
        run_propose(proposer, info, images, results, ann=gt, batch_size=batch_size, workers=workers, jobs=jobs)
    with make_progress(*progress_columns("evaluating {task.description}", remaining=False),
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
        say_note(note)
    if json_out:
        write_json_atomic(json_out, evaluation.to_dict())
        console.print(f"metrics: {json_out}", highlight=False)
    if plot:
        plot_recall(evaluation, plot)
        console.print(f"recall plot: {plot}", highlight=False)

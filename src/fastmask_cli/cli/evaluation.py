"""What `eval` and `propose --ann --report` share: the AR table a measured run prints, and the report
folder (`--report DIR`) it may write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from ..coco.evaluate import PAPER, PAPER_SOURCE, evaluate
from ..errors import FastMaskError
from ..io.files import read_json, writable_folder
from .common import console, make_progress, progress_columns, say_note
from .options import OUTPUTS

if TYPE_CHECKING:
    from ..coco.evaluate import Evaluation

REPORT = typer.Option(None, "--report", rich_help_panel=OUTPUTS, help="Folder for a report to open in a browser, offline: the AR table, "
                      "recall figures, the images with the lowest recall with every object outlined by what happened "
                      "to it, and the missed objects (DIR/index.html).")
REPORT_IMAGES = typer.Option(20, "--report-images", rich_help_panel=OUTPUTS, help="Images in the report's gallery: half those with the lowest "
                             "recall, half a random sample of the others.")


def measure(gt: Path, results: Path, iou_types: tuple[str, ...] = ("segm", "bbox"), allow_missing: bool = False) -> "Evaluation":
    """`evaluate` with a progress bar, then the AR table beside the paper's and the notes."""
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
        console.print(f"{first.images} images, {first.proposals} proposals. {PAPER_SOURCE}", highlight=False)
    for note in evaluation.notes:
        say_note(note)
    return evaluation


def check_report(report_dir: Optional[Path], report_images: int, bench: Optional[Path] = None) -> None:
    """Fail before any work where the report could not be written."""
    if bench is not None and report_dir is None:
        raise FastMaskError("--report-bench goes with --report DIR")
    if bench is not None and not bench.is_file():
        raise FastMaskError(f"--report-bench: {bench} not found")
    if report_images < 0:  # checked with or without --report: a bad value is never silently ignored
        raise FastMaskError(f"--report-images must be 0 or more, not {report_images}")
    if report_dir is not None:
        writable_folder(report_dir, "the report")


def write_report(evaluation: "Evaluation", report_dir: Path, results: Path, pictures: Optional[Path],
                 report_images: int, bench: Optional[Path] = None) -> None:
    """The report folder; its pictures from `pictures`, else the folder the results' run record names."""
    from ..coco.report import report
    from ..io.results_file import read_run

    if pictures is None:
        try:
            recorded = read_run(results)[0].get("images_dir")
            pictures = Path(recorded) if recorded and Path(recorded).is_dir() else None
        except FastMaskError:
            pictures = None
    bench_data: dict[str, Any] | None = read_json(bench, "bench JSON") if bench else None
    if bench_data is not None and not isinstance(bench_data, dict):
        raise FastMaskError(f"{bench} is not the JSON `fastmask bench --json` writes")
    with console.status("writing the report"):
        index = report(evaluation, report_dir, images=pictures, results=results, bench=bench_data, report_images=report_images)
    console.print(f"report: {index}" + ("" if pictures else " (no pictures: give the images folder with --report-pictures)"),
                  highlight=False)

"""`fastmask merge`: the shards of one proposal run joined into one results file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import console, friendly_errors, make_progress, progress_columns


@friendly_errors
def merge(
    shards: list[Path] = typer.Argument(..., help="Results files of `fastmask propose --shard K/N` (COCO or JSON Lines), "
                                        "each with its .images.json beside it."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged results file to write (with OUT_STEM.images.json)."),
    fmt: str = typer.Option("coco", "--format", help="coco, jsonl, polygons, png or labels (see `propose --help`), "
                            "whatever the shards' formats (COCO or JSON Lines)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Merge even when shards are absent (they are listed)."),
) -> None:
    """Join the shards of one proposal run into one results file, in the order an unsharded run writes.

    Refuses shards of other weights, settings or image lists, and images that appear twice; names
    the images of absent shards.
    """
    from ..io.results_file import writable_results
    from ..runs.merge import merge_results

    writable_results(out, fmt)
    with make_progress(*progress_columns(), console=console, transient=True) as progress:
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

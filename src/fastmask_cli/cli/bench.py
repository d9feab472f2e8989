"""`fastmask bench`: seconds per image against scales, top-k and backend, as tables that fit 80 columns."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import FastMaskError
from ..inference.options import MEASURE_TOP_K, TOP_K, ProposerOptions
from ..io.files import write_json_atomic
from ..io.images import ImageError, list_images, read_image
from . import options as opt
from .common import (
    command_line,
    console,
    friendly_errors,
    int_list,
    load_proposer,
    make_progress,
    parse_size,
    progress_columns,
    say_note,
)

# Panels of `bench --help`
WHAT, TIMING = "What is timed", "Timing"

def examples_folder() -> Path:
    folder = Path(__file__).resolve().parents[3] / "examples" / "images"
    if not folder.is_dir():
        raise FastMaskError("no example images found beside the package; pass --images DIR")
    return folder


def bench_images(folder: Path | None) -> list:
    """The images to time on: --images, else the examples shipped with the repository."""
    folder = folder or examples_folder()
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


@friendly_errors
def bench_command(
    ctx: typer.Context,
    scales: str = typer.Option("4", rich_help_panel=WHAT, help="Scale count, or a list such as 2,4,6,8."),
    size: str = typer.Option("800x600", rich_help_panel=WHAT, help="Input size WIDTHxHEIGHT every image is resized to."),
    pyramid: bool = typer.Option(False, "--pyramid", rich_help_panel=WHAT, help="Also time the image-pyramid baseline and the one-shot speed-up."),
    weights: Optional[str] = opt.WEIGHTS,
    device: str = opt.DEVICE,
    precision: str = opt.PRECISION,
    backend: str = typer.Option("auto,torch", rich_help_panel=WHAT, help="Network backends to time side by side: a list of auto, onnx, torch "
                                "(auto: what propose uses). The ONNX / PyTorch speed-up is read from the same runs."),
    runs: int = typer.Option(10, rich_help_panel=TIMING, help="Timed runs per configuration."),
    warmup: int = typer.Option(2, rich_help_panel=TIMING, help="Untimed warm-up runs per configuration."),
    top_k: str = typer.Option(f"{TOP_K},{MEASURE_TOP_K}", "--top-k", rich_help_panel=WHAT, help="Proposals decoded, pasted, encoded and suppressed per image; a list times each."),
    images: Optional[Path] = typer.Option(None, rich_help_panel=opt.INPUTS, help="Folder of images to time on. Default: the shipped examples."),
    compile: bool = typer.Option(False, "--compile", rich_help_panel=WHAT, help="torch.compile the network first (compilation is not timed)."),
    wide: bool = typer.Option(False, "--wide", rich_help_panel=opt.OUTPUTS, help="Show every column (p90, each stage, windows, memory): needs a wide terminal."),
    folder: bool = typer.Option(False, "--folder", rich_help_panel=opt.INPUTS, help="Also time `fastmask propose` over the whole --images folder, from "
                                "image files on disk to the results file (reading, batching and writing included)."),
    workers: Optional[int] = opt.WORKERS,
    batch_size: int = opt.BATCH_SIZE,
    jobs: str = typer.Option("1,auto", "--jobs", rich_help_panel=opt.INPUTS, help="With --folder: counts of worker processes to time side by side, "
                             "each with the cores over that many threads (auto: what propose uses)."),
    ann: Optional[Path] = typer.Option(None, "--ann", rich_help_panel=opt.INPUTS, help="COCO ground truth of the --images folder: each scale count "
                                       "(and mode, with --pyramid) also proposes the top 100 over the whole folder and "
                                       "is measured, AR@10 / AR@100 beside s/img (the paper's Table 4 for your data)."),
    json_out: Optional[Path] = typer.Option(None, "--json", rich_help_panel=opt.OUTPUTS, help="Write the tables, the machine and the command as JSON."),
) -> None:
    """Seconds per image of `propose` (network to RLE and suppression), for each scale count, top-k and
    network backend; with --pyramid, one shot against an image pyramid (§6.2). Configurations are timed in
    turn, run by run, so that machine drift moves them alike."""
    from ..bench.measure import bench, bench_accuracy, bench_folder
    from ..bench.tables import summary
    from ..runs.folder import check_reading
    from ..runs.jobs import resolve_jobs

    check_reading(batch_size, workers)  # used by --folder runs only, but never silently ignored when out of range
    if ann is not None and images is None:
        raise FastMaskError("--ann measures the proposals on its images: give their folder with --images")
    if ann is not None:
        from ..coco.ground_truth import read_ground_truth

        read_ground_truth(ann)  # fail now, not after the timing

    scale_counts = int_list(scales, "--scales", example="2,4,6,8", too_low="must be positive")
    frame, top_ks = parse_size(size), int_list(top_k, "--top-k")
    settings = ProposerOptions(device=device, precision=precision, top_k=top_ks[0], compile=compile,
                               backend="torch" if compile else "auto")
    proposer, info = load_proposer(weights, None, settings)
    backends: list[str] = []
    for name in (b.strip() for b in backend.split(",") if b.strip()):
        resolved = proposer.backend if name == "auto" else proposer.resolve_backend(name)
        if resolved not in backends:
            backends.append(resolved)
    if not backends:
        raise FastMaskError("--backend needs at least one of auto, onnx, torch")
    job_counts: list[int] = []
    for name in (j.strip() for j in jobs.split(",") if j.strip()):
        count = resolve_jobs(name, proposer.device.type)
        if count not in job_counts:
            job_counts.append(count)
    if not job_counts:
        raise FastMaskError("--jobs needs at least one count, such as 1,2")
    frames = bench_images(images)
    total = (len(scale_counts) * len(top_ks) * runs * (len(backends) + pyramid)
             + folder * len(top_ks) * len(backends) * len(job_counts) * runs + (ann is not None) * len(scale_counts) * (1 + pyramid))
    with make_progress(*progress_columns("timing {task.description}", remaining=False),
                       console=console, transient=True) as progress:
        task = progress.add_task("", total=total)
        report = bench(proposer, frames, scale_counts, frame, runs, warmup, pyramid, top_ks=top_ks, backends=backends,
                       on_run=lambda what: progress.update(task, advance=1, description=what))
        if folder:
            bench_folder(proposer, report, images or examples_folder(), runs, top_ks, backends, workers, batch_size, job_counts,
                         on_run=lambda what: progress.update(task, advance=1, description=what))
        if ann is not None:
            bench_accuracy(proposer, report, ann, images, scale_counts, pyramid, resolve_jobs("auto", proposer.device.type),
                           on_run=lambda what: progress.update(task, advance=1, description=what))
    report.settings["command"] = command_line(ctx)
    title = f"fastmask bench: {info.name}, {size}, {precision}, {report.machine['device']}" + (", compiled" if compile else "")
    folder_title = (f"propose over {images or examples_folder()} ({report.folder_rows[0].images} images, files to results "
                    f"file), size {proposer.size}, batch {batch_size}, {workers if workers is not None else 'default'} "
                    "reader processes") if report.folder_rows else None
    for part in summary(report, title, folder_title, ann, wide):
        console.print(part, highlight=False)
    if not info.trained:
        say_note("untrained weights: every mask fills its window, so paste-back and RLE are at their slowest.")
    if json_out:
        write_json_atomic(json_out, report.to_dict())
        console.print(f"results: {json_out}", highlight=False)


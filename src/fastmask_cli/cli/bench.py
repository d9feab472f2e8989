"""`fastmask bench`: seconds per image against scales, top-k and backend, as tables that fit 80 columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table

from ..errors import FastMaskError
from ..io.files import write_json_atomic
from ..io.images import ImageError, list_images, read_image
from .common import (
    BATCH_SIZE,
    DEVICE,
    PRECISION,
    WEIGHTS,
    WORKERS,
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
    jobs: str = typer.Option("1,auto", "--jobs", help="With --folder: counts of worker processes to time side by side, "
                             "each with the cores over that many threads (auto: what propose uses)."),
    ann: Optional[Path] = typer.Option(None, "--ann", help="COCO ground truth of the --images folder: each scale count "
                                       "(and mode, with --pyramid) also proposes the top 100 over the whole folder and "
                                       "is measured, AR@10 / AR@100 beside s/img (the paper's Table 4 for your data)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the tables, the machine and the command as JSON."),
) -> None:
    """Seconds per image of `propose` (network to RLE and suppression), for each scale count, top-k and
    network backend; with --pyramid, one shot against an image pyramid (§6.2). Configurations are timed in
    turn, run by run, so that machine drift moves them alike."""
    from ..runs.bench import STAGES, bench, bench_accuracy, bench_folder
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
    proposer, info = load_proposer(weights, None, device=device, precision=precision, top_k=top_ks[0], compile=compile,
                                   backend="torch" if compile else "auto")
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
        title = (f"propose over {images or examples_folder()} ({rows[0].images} images, files to results file), size "
                 f"{proposer.size}, batch {batch_size}, {workers if workers is not None else 'default'} reader processes")
        files = Table(title=title)
        columns = ["top-k", "backend", "jobs × threads", "img/s", "s/img"]
        if wide:  # stages are timed in one process only: blank with jobs
            columns += [*STAGES, "other"]
        for column in columns:
            files.add_column(column, justify="right")
        for r in rows:
            cells = [str(r.top_k), r.backend, f"{r.jobs} × {r.threads}", f"{r.images_per_second:.2f}",
                     f"{1 / r.images_per_second:.3f}"]
            if wide:
                cells += ([f"{r.stages_s[name]:.3f}" for name in STAGES] + [f"{r.other_s:.3f}"] if r.stages_s
                          else ["—"] * (len(STAGES) + 1))
            files.add_row(*cells)
        console.print(files)
        _folder_speedups(rows)
    for config, (ratio, low, high) in report.backend_speedup().items():
        console.print(f"{config.scales} scales, top-{config.top_k}: ONNX Runtime runs {ratio:.2f}x as fast as PyTorch end to end "
                      f"(runs side by side: {low:.2f}x to {high:.2f}x)", highlight=False)
    for config, (ratio, low, high) in report.speedup().items():
        console.print(f"{config.scales} scales, top-{config.top_k}, {config.backend}: one shot is {ratio:.2f}x faster than "
                      f"the image pyramid (runs side by side: {low:.2f}x to {high:.2f}x; paper, 8 scales: 1.7x)", highlight=False)
    if report.accuracy_rows:
        _accuracy_table(report, ann)
    if not info.trained:
        say_note("untrained weights: every mask fills its window, so paste-back and RLE are at their slowest.")
    if json_out:
        write_json_atomic(json_out, report.to_dict())
        console.print(f"results: {json_out}", highlight=False)


def _folder_speedups(rows: list) -> None:
    """Each row with jobs against one process on the same top-k and backend, run by run (they were timed in turn)."""
    one = {(r.top_k, r.backend): r for r in rows if r.jobs == 1}
    for r in rows:
        base = one.get((r.top_k, r.backend))
        if r.jobs > 1 and base is not None:
            ratios = [b / m for b, m in zip(base.seconds, r.seconds)]
            console.print(f"top-{r.top_k}, {r.backend}: {r.jobs} processes × {r.threads} threads propose the folder "
                          f"{float(np.median(ratios)):.2f}x as fast as 1 × {base.threads} (runs side by side: "
                          f"{min(ratios):.2f}x to {max(ratios):.2f}x)", highlight=False)


def _accuracy_table(report: Any, ann: Path) -> None:
    """AR@10 / AR@100 beside seconds per image, per scale count and mode (the paper's Table 4)."""
    rows = report.accuracy_rows
    table = Table(title=f"AR (%) against scales on {ann.name} ({rows[0].images} images, top 100; s/img: "
                  "propose over the folder, files to results)")
    for column in ("scales", "mode", "s/img", "masks AR@10", "masks AR@100", "boxes AR@10", "boxes AR@100"):
        table.add_column(column, justify="right")
    for r in rows:
        cells = [f"{v * 100:.1f}" if v is not None else "n/a" for t in (r.segm, r.bbox) for v in
                 ((t or {}).get("AR@10"), (t or {}).get("AR@100"))]
        table.add_row(str(r.scales), r.mode, f"{r.s_per_image:.3f}", *cells)
    console.print(table)
    console.print("paper, Table 4 (masks, COCO val, Titan X): FastMask 8 scales 16.9 / 31.3 at 0.26 s, 4 scales 13.3 / 26.6 "
                  "at 0.14 s; DeepMask* (an image pyramid) 8 scales 14.3 / 27.3 at 0.45 s, 4 scales 11.3 / 22.2 at 0.24 s",
                  highlight=False)

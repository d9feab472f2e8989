"""`fastmask propose`: segment proposals for a folder, with a progress bar and a summary table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from ..errors import FastMaskError
from ..inference.options import DEFAULT_NMS, DEFAULT_NMS_IOU
from ..io.files import check_outputs, writable_file, write_json_atomic
from ..io.images import IMAGE_SUFFIXES, MAX_PIXELS
from .common import (
    BACKEND,
    BATCH_SIZE,
    DEVICE,
    FILTERS,
    INIT,
    INPUTS,
    JOBS,
    LARGE,
    MODEL,
    OUTPUTS,
    PRECISION,
    RANKER,
    SCALES,
    SIZE,
    WEIGHTS,
    WORKERS,
    console,
    friendly_errors,
    load_proposer,
    make_progress,
    parse_shard,
    progress_columns,
    say_note,
    warn_if_untrained,
)
from .evaluation import REPORT, REPORT_IMAGES, check_report, measure, write_report

if TYPE_CHECKING:
    from ..inference.proposer import Proposer
    from ..modeling.weights import ModelInfo
    from ..runs.folder import ProposeSummary


def run_propose(proposer: "Proposer", info: "ModelInfo", images_dir: Path, out: Path, rank: tuple[int, int] | None = None,
                jobs: str | int = 1, **options: Any) -> "ProposeSummary":
    """propose_folder (in `jobs` worker processes: propose_jobs; under torchrun, this rank's part of
    propose_torchrun) with a progress bar and the summary."""
    from ..runs.distributed import propose_torchrun
    from ..runs.jobs import propose_jobs, resolve_jobs
    from ..runs.partial import partial_path
    from ..runs.plan import shard_path

    main_process = rank is None or rank[0] == 0
    jobs = resolve_jobs(jobs, proposer.device.type, torchrun=rank is not None, shard=options.get("shard"))
    watched = out if rank is None else shard_path(out, rank[0] + 1, rank[1])
    interrupted = main_process and not options.get("resume") and partial_path(watched).exists()
    # started once the images are known (after propose_jobs forks its workers: no display thread may run then)
    progress = make_progress(*progress_columns(), console=console, disable=not main_process)

    def start(total: int) -> None:  # inputs are valid and OUT's lock held by now: say what runs, then show progress
        if interrupted:  # not before the lock: a run refused because another writes OUT must not say it starts over
            console.print(f"[yellow]Found an interrupted run ({partial_path(watched)}); starting over. Use --resume to continue it.[/]")
        if main_process:
            warn_if_untrained(info)
        label = "proposing" if rank is None else f"proposing (rank 0 of {rank[1]}, its share)"
        progress.add_task(label + (f" ({jobs} processes)" if jobs > 1 else ""), total=total)
        progress.start()

    callbacks = {"weights_id": info.identity, "on_start": start,
                 "on_image": lambda rel: progress.advance(progress.task_ids[0])}
    try:
        if rank is not None:
            summary, merged = propose_torchrun(proposer, images_dir, out, rank=rank[0], world=rank[1], **callbacks, **options)
        else:
            summary, merged = propose_jobs(proposer, images_dir, out, jobs=jobs, **callbacks, **options), None
    finally:
        progress.stop()
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
        say_note(f"{rel} {note}")
    if len(summary.notes) > 5:
        say_note(f"... and {len(summary.notes) - 5} more images like these (see --json)")
    return summary


def _area(text: str | None, flag: str) -> float | None:
    from ..inference.options import parse_area

    if text is None:
        return None
    try:
        return parse_area(text)
    except ValueError:
        raise FastMaskError(f"{flag} must be pixels, a fraction or a percentage (below 100%) of the image (500, 0.01, 1%), "
                            f"not {text!r}") from None


def read_list(source: str) -> list[str]:
    """The paths of a --list file, one a line (blank lines and surrounding spaces ignored); `-` reads standard input."""
    if source == "-":
        return [line.strip() for line in sys.stdin if line.strip()]
    path = Path(source)
    if not path.is_file():
        raise FastMaskError(f"--list {source}: no such file")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if line.strip()]


@friendly_errors
def propose(
    images: Optional[list[Path]] = typer.Argument(None, help="Image files and folders (folders searched recursively), "
                                                  "any mix: `propose photo.jpg`, `propose shots/`, `propose a.jpg b.png shots/`."),
    list_file: Optional[str] = typer.Option(None, "--list", rich_help_panel=INPUTS, help="A file of image paths, one a "
                                            "line (`-`: standard input), proposed for with the images given."),
    out: Path = typer.Option(..., "--out", "-o", rich_help_panel=OUTPUTS, help="Results file to write (its folder is made if needed); "
                             "beside it, OUT_STEM.images.json ties image ids to files."),
    weights: Optional[str] = WEIGHTS,
    ann: Optional[Path] = typer.Option(None, rich_help_panel=INPUTS, help="COCO ground truth whose file_name -> id mapping gives the image ids "
                                       "(and whose width/height decide the frame of EXIF-rotated photos)."),
    top_k: int = typer.Option(100, "--top-k", rich_help_panel=MODEL, help="Proposals per image (1000 for AR@1k)."),
    scales: Optional[int] = SCALES,
    size: Optional[int] = SIZE,
    device: str = DEVICE,
    precision: str = PRECISION,
    backend: str = BACKEND,
    batch_size: int = BATCH_SIZE,
    workers: Optional[int] = WORKERS,
    jobs: str = JOBS,
    vis: Optional[Path] = typer.Option(None, rich_help_panel=OUTPUTS, help="Folder for overlay PNGs of the top 10 proposals "
                                       "(IMAGE_PATH.png: the folder structure and full file names are kept)."),
    resume: bool = typer.Option(False, rich_help_panel=LARGE, help="Continue an interrupted run from OUT.partial (a finished one is not redone)."),
    shard: Optional[str] = typer.Option(None, rich_help_panel=LARGE, help="K/N: propose for the K-th of N contiguous slices of the sorted images "
                                        "(job arrays); join the shards with `fastmask merge`."),
    fmt: str = typer.Option("coco", "--format", rich_help_panel=OUTPUTS, help="coco: one COCO results list; jsonl: one JSON line per image "
                            "(image_id, file_name, width, height, proposals); polygons: the coco list with masks as "
                            "COCO polygons (annotation tools)."),
    nms: str = typer.Option(DEFAULT_NMS, rich_help_panel=MODEL, help="Near-duplicates by overlap of: mask, box, or none (keep the network's order)."),
    nms_iou: float = typer.Option(DEFAULT_NMS_IOU, "--nms-iou", rich_help_panel=MODEL, help="IoU above which a lower-scored proposal is a duplicate."),
    nms_mode: str = typer.Option("demote", "--nms-mode", rich_help_panel=MODEL, help="demote: move duplicates behind every distinct proposal "
                                 "(the top-k set stays, so AR@1000 does too); drop: remove them."),
    mask_threshold: Optional[float] = typer.Option(None, "--mask-threshold", rich_help_panel=MODEL, help="Mask probability threshold. Default: the model's own (stored in its config; 0.5 for new training runs)."),
    ranker: Optional[str] = RANKER,
    min_score: float = typer.Option(0.0, "--min-score", rich_help_panel=FILTERS, help="Drop proposals scored below this."),
    min_area: Optional[str] = typer.Option(None, "--min-area", rich_help_panel=FILTERS, help="Drop masks smaller than "
                                           "this: pixels (500), or a fraction (0.01) or percentage (1%) of the image."),
    max_area: Optional[str] = typer.Option(None, "--max-area", rich_help_panel=FILTERS, help="Drop masks larger than "
                                           "this: pixels, or a fraction or percentage of the image."),
    one_per_pixel: bool = typer.Option(False, "--one-per-pixel", rich_help_panel=FILTERS, help="Each pixel to the best-"
                                       "ranked proposal covering it; a proposal left with under half its mask is dropped."),
    init: Optional[Path] = INIT,
    report_dir: Optional[Path] = REPORT,
    report_images: int = REPORT_IMAGES,
    max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", rich_help_panel=INPUTS, help="Skip images with more pixels than this (read from the header, before decoding)."),
    json_out: Optional[Path] = typer.Option(None, "--json", rich_help_panel=OUTPUTS, help="Also write the run summary as JSON here."),
) -> None:
    """Segment proposals for every image in IMAGES (files and folders), written as COCO results (RLE masks, boxes, scores).

    Photos are read as viewers show them (EXIF orientation applied) unless --ann's width and height
    describe the stored pixels. Under torchrun, each process takes a slice (and its own GPU) and
    process 0 merges them into OUT.
    """
    from ..device import launch, rank_device
    from ..io.results_file import check_format
    from ..runs.folder import check_reading
    from ..runs.plan import plan_images, resolve_inputs

    if report_dir is not None and ann is None:
        raise FastMaskError("--report measures the proposals: give the ground truth with --ann")
    if report_dir is not None and shard:
        raise FastMaskError("--report needs the whole folder: after `fastmask merge`, run `fastmask eval GT MERGED --report DIR`")
    check_report(report_dir, report_images)
    check_reading(batch_size, workers, max_pixels)  # before the weights load
    if json_out is not None:  # fail now, not after the work
        writable_file(json_out, "--json")
    images_dir, files = resolve_inputs(images or [], read_list(list_file) if list_file else None)
    writable_file(out, "the results")  # a folder (`-o .`) is one line before anything is compared with it
    check_outputs({"--out": out, "--json": json_out}, {"IMAGES": images_dir, "--ann": ann,
                  "--list": Path(list_file) if list_file not in (None, "-") else None,
                  "--weights": Path(weights) if weights else None}, IMAGE_SUFFIXES)

    options: dict[str, Any] = {"ann": ann, "resume": resume, "vis_dir": vis, "batch_size": batch_size,
                               "max_pixels": max_pixels, "fmt": check_format(fmt), "workers": workers, "jobs": jobs}
    if shard:
        options["shard"] = parse_shard(shard)
    if files is not None:  # files, or several folders: the images of one run under their common folder
        options["plan"] = plan_images(images_dir, ann, files)
    here = launch()
    rank = (here.rank, here.world) if here.distributed else None
    if rank is not None:
        device = rank_device(device, here.local_rank)
    proposer, info = load_proposer(weights, init, device=device, precision=precision, top_k=top_k, scales=scales,
                                   size=size, mask_threshold=mask_threshold, nms=nms, nms_iou=nms_iou, nms_mode=nms_mode,
                                   backend=backend, ranker=ranker, min_score=min_score,
                                   min_area=_area(min_area, "--min-area") or 0.0, max_area=_area(max_area, "--max-area"),
                                   one_per_pixel=one_per_pixel)
    summary = run_propose(proposer, info, images_dir, out, rank=rank, **options)
    if rank is not None and rank[0] != 0:
        return
    if json_out:
        write_json_atomic(json_out, {**summary.to_dict(), "weights": info.describe(), "settings": proposer.settings()})
    if not info.trained:
        console.print("[bold red]Reminder: these proposals come from an UNTRAINED model.[/]")
    if report_dir is not None:
        write_report(measure(ann, out), report_dir, out, images_dir, report_images)

"""`fastmask propose`: segment proposals for a folder, with a progress bar and a summary table."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from ..errors import FastMaskError
from ..io.files import check_outputs, writable_file, write_json_atomic
from ..io.images import IMAGE_SUFFIXES, MAX_PIXELS
from . import options as opt
from .common import (
    console,
    friendly_errors,
    load_proposer,
    make_progress,
    parse_shard,
    progress_columns,
    say_note,
    warn_if_untrained,
)
from .evaluation import REPORT_IMAGES, check_report, measure, write_report

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


def show_proposals(results: Path, report_dir: Path, images: int) -> None:
    """The proposals viewer of `results` (coco/viewer.py), with progress."""
    from ..coco.viewer import write_viewer

    with make_progress(*progress_columns(), console=console, transient=True) as progress:
        task = progress.add_task("drawing the viewer", total=images)
        index = write_viewer(results, report_dir, on_image=lambda _: progress.advance(task))
    console.print(f"viewer: {index}", highlight=False)


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
@opt.shared(*opt.MODEL_OPTIONS, *opt.SPEED_OPTIONS)
def propose(
    images: Optional[list[Path]] = typer.Argument(None, help="Image files and folders (folders searched recursively), "
                                                  "any mix: `propose photo.jpg`, `propose shots/`, `propose a.jpg b.png shots/`."),
    list_file: Optional[str] = typer.Option(None, "--list", rich_help_panel=opt.INPUTS, help="A file of image paths, one a "
                                            "line (`-`: standard input), proposed for with the images given."),
    out: Path = typer.Option(..., "--out", "-o", rich_help_panel=opt.OUTPUTS, help="Results file to write (a folder for "
                             "--format png or labels; its parent is made if needed); beside it, OUT_STEM.images.json "
                             "ties image ids to files."),
    ann: Optional[Path] = typer.Option(None, rich_help_panel=opt.INPUTS, help="COCO ground truth whose file_name -> id "
                                       "mapping gives the image ids (and whose width/height decide the frame of EXIF-rotated photos)."),
    top_k: int = opt.TOP_K_PROPOSE,
    vis: Optional[Path] = typer.Option(None, rich_help_panel=opt.OUTPUTS, help="Folder for overlay PNGs of the top 10 "
                                       "proposals (IMAGE_PATH.png: the folder structure and full file names are kept)."),
    resume: bool = typer.Option(False, rich_help_panel=opt.LARGE, help="Continue an interrupted run from OUT.partial (a "
                                "finished one is not redone)."),
    shard: Optional[str] = typer.Option(None, rich_help_panel=opt.LARGE, help="K/N: propose for the K-th of N contiguous "
                                        "slices of the sorted images (job arrays); join the shards with `fastmask merge`."),
    fmt: str = typer.Option("coco", "--format", rich_help_panel=opt.OUTPUTS, help="coco (RLE masks), jsonl (a line an "
                            "image), polygons, png (a folder of mask PNGs and metadata.csv) or labels (a folder of 16-bit "
                            "rank maps; implies --one-per-pixel)."),
    min_score: float = typer.Option(0.0, "--min-score", rich_help_panel=opt.FILTERS, help="Drop proposals scored below this."),
    min_area: Optional[str] = typer.Option(None, "--min-area", rich_help_panel=opt.FILTERS, help="Drop masks smaller than "
                                           "this: pixels (500), or a fraction (0.01) or percentage (1%) of the image."),
    max_area: Optional[str] = typer.Option(None, "--max-area", rich_help_panel=opt.FILTERS, help="Drop masks larger than "
                                           "this: pixels, or a fraction or percentage of the image."),
    one_per_pixel: bool = typer.Option(False, "--one-per-pixel", rich_help_panel=opt.FILTERS, help="Each pixel to the best-"
                                       "ranked proposal covering it; a proposal left with under half its mask is dropped."),
    report_dir: Optional[Path] = typer.Option(None, "--report", rich_help_panel=opt.OUTPUTS, help="Folder of a page to open "
                                              "in a browser, offline (DIR/index.html): with --ann, the evaluation report "
                                              "(see `eval --help`); without, every image with its proposals drawn."),
    report_images: int = REPORT_IMAGES,
    max_pixels: int = typer.Option(MAX_PIXELS, "--max-pixels", rich_help_panel=opt.INPUTS, help="Skip images with more "
                                   "pixels than this (read from the header, before decoding)."),
    json_out: Optional[Path] = typer.Option(None, "--json", rich_help_panel=opt.OUTPUTS, help="Also write the run summary as JSON here."),
    **common: Any,  # the options of opt.MODEL_OPTIONS and opt.SPEED_OPTIONS
) -> None:
    """Segment proposals for every image in IMAGES (files and folders), written as COCO results (RLE masks, boxes, scores).

    Photos are read as viewers show them (EXIF orientation applied) unless --ann's width and height
    describe the stored pixels. Under torchrun, each process takes a slice (and its own GPU) and
    process 0 merges them into OUT.
    """
    from ..device import launch, rank_device
    from ..io.results_file import check_format, writable_results
    from ..runs.folder import check_reading
    from ..runs.plan import plan_inputs

    if report_dir is not None and ann is not None and shard:
        raise FastMaskError("--report needs the whole folder: after `fastmask merge`, run `fastmask eval GT MERGED --report DIR`")
    if report_dir is not None and fmt in ("png", "labels"):
        raise FastMaskError(f"--report reads the results back, and --format {fmt} writes pictures: use coco, jsonl or polygons")
    check_report(report_dir, report_images)
    check_reading(common["batch_size"], common["workers"], max_pixels)  # before the weights load
    settings = opt.proposer_options(common, top_k=top_k, min_score=min_score, min_area=_area(min_area, "--min-area") or 0.0,
                                    max_area=_area(max_area, "--max-area"), one_per_pixel=one_per_pixel or fmt == "labels")
    if json_out is not None:  # fail now, not after the work
        writable_file(json_out, "--json")
    images_dir, plan = plan_inputs(images or [], ann, read_list(list_file) if list_file else None)
    writable_results(out, check_format(fmt))  # a folder (`-o .`) is one line before anything is compared with it
    check_outputs({"--out": out, "--json": json_out}, {"IMAGES": images_dir, "--ann": ann,
                  "--list": Path(list_file) if list_file not in (None, "-") else None,
                  "--weights": Path(common["weights"]) if common["weights"] else None}, IMAGE_SUFFIXES)

    options: dict[str, Any] = {"ann": ann, "plan": plan, "resume": resume, "vis_dir": vis, "max_pixels": max_pixels,
                               "fmt": fmt, **{k: common[k] for k in ("batch_size", "workers", "jobs")}}
    if shard:
        options["shard"] = parse_shard(shard)
    here = launch()
    rank = (here.rank, here.world) if here.distributed else None
    if rank is not None:  # this process's GPU
        settings = replace(settings, device=rank_device(settings.device, here.local_rank))
    proposer, info = load_proposer(common["weights"], common["init"], settings)
    summary = run_propose(proposer, info, images_dir, out, rank=rank, **options)
    if rank is not None and rank[0] != 0:
        return
    if json_out:
        write_json_atomic(json_out, {**summary.to_dict(), "weights": info.describe(), "settings": proposer.settings()})
    if not info.trained:
        console.print("[bold red]Reminder: these proposals come from an UNTRAINED model.[/]")
    if report_dir is not None and ann is not None:
        write_report(measure(ann, out), report_dir, out, images_dir, report_images)
    elif report_dir is not None:
        show_proposals(out, report_dir, summary.images)

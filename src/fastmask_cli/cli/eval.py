"""`fastmask eval`: class-agnostic average recall of a results file, proposing first with --images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..coco.evaluate import IOU_TYPES
from ..errors import FastMaskError
from ..io.files import check_outputs, writable_file, write_json_atomic
from ..io.images import IMAGE_SUFFIXES
from . import options as opt
from .common import console, flag_of, friendly_errors, load_proposer
from .evaluation import REPORT, REPORT_IMAGES, check_report, measure, write_report
from .propose import run_propose


@friendly_errors
@opt.shared(*opt.MODEL_OPTIONS, *opt.SPEED_OPTIONS)
def eval_command(
    gt: Path = typer.Argument(..., help="COCO ground truth (instances JSON)."),
    results: Path = typer.Argument(..., help="COCO results file to evaluate (written first when --images is given)."),
    iou_type: str = typer.Option("both", "--iou-type", help="segm, bbox or both."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Evaluate on the images the results cover, ignoring results on unknown ids."),
    plot: Optional[Path] = typer.Option(None, rich_help_panel=opt.OUTPUTS, help="PNG of recall against IoU threshold (paper Fig. 8)."),
    json_out: Optional[Path] = typer.Option(None, "--json", rich_help_panel=opt.OUTPUTS, help="Write the metrics and recall curves as JSON."),
    images: Optional[Path] = typer.Option(None, rich_help_panel=opt.INPUTS, help="Propose on this folder first (ids from GT), then evaluate."),
    top_k: int = opt.TOP_K_MEASURE,
    report_dir: Optional[Path] = REPORT,
    report_images: int = REPORT_IMAGES,
    pictures: Optional[Path] = typer.Option(None, "--report-pictures", rich_help_panel=opt.OUTPUTS, help="Folder of the ground truth's images, for "
                                            "the report's pictures. Default: --images, else the folder recorded beside "
                                            "the results by fastmask propose."),
    bench: Optional[Path] = typer.Option(None, "--report-bench", rich_help_panel=opt.OUTPUTS, help="JSON of `fastmask bench --ann --json`: its "
                                         "accuracy against speed table and plot go in the report."),
    **common: Any,  # with --images: the options of opt.MODEL_OPTIONS and opt.SPEED_OPTIONS
) -> None:
    """Class-agnostic average recall (AR@10/100/1000, masks and boxes, small/medium/large) of RESULTS against GT."""
    iou_types = {"both": IOU_TYPES, "segm": ("segm",), "bbox": ("bbox",)}.get(iou_type)
    if iou_types is None:
        raise FastMaskError(f"--iou-type must be segm, bbox or both, not {iou_type!r}")
    for path, what in ((json_out, "--json"), (plot, "--plot")):  # fail now, not after the evaluation
        if path is not None:
            writable_file(path, what)
    check_report(report_dir, report_images, bench)
    written = {"--json": json_out, "--plot": plot, "RESULTS": results if images is not None else None}
    check_outputs(written, {"GT": gt, "RESULTS": None if images is not None else results, "--images": images,
                            "--report-bench": bench}, IMAGE_SUFFIXES)
    from ..runs.folder import check_reading
    from ..runs.jobs import resolve_jobs

    settings = opt.proposer_options(common, top_k=top_k)  # checked, with --images or not: never silently ignored
    check_reading(common["batch_size"], common["workers"])
    resolve_jobs(common["jobs"], "cpu")
    given = [flag_of(k) for k in opt.MODEL_OPTIONS if common[k] is not None]
    if images is None and given:
        raise FastMaskError(f"{', '.join(given)} set how proposals are made: they go with --images (propose, then evaluate)")
    if images is not None:
        proposer, info = load_proposer(common["weights"], common["init"], settings)
        run_propose(proposer, info, images, results, ann=gt, **{k: common[k] for k in ("batch_size", "workers", "jobs")})
    evaluation = measure(gt, results, iou_types, allow_missing)
    if json_out:
        write_json_atomic(json_out, evaluation.to_dict())
        console.print(f"metrics: {json_out}", highlight=False)
    if plot:
        from ..coco.figures import plot_recall

        plot_recall(evaluation, plot)
        console.print(f"recall plot: {plot}", highlight=False)
    if report_dir is not None:
        write_report(evaluation, report_dir, results, pictures or images, report_images, bench)

"""Proposals for a folder of images, at any dataset size: flat memory, resumable, shardable, never half-written.

While it runs, finished images are appended to `<out>.partial` (JSON lines, one per image, after a
header recording the settings). At the end the results file is streamed from that log in file
order, one image at a time, into a temporary file renamed into place, and the log is removed:
memory does not grow with the number of images. After a crash or Ctrl-C, `resume=True` skips what
is in the log, and the final file is the same as an uninterrupted run's.

A dataset is split by `shard=(K, N)` (contiguous slices of the sorted image list, for job arrays;
plan.py), by torchrun (`distributed.propose_torchrun`, one slice per rank) or among worker processes
(`jobs.propose_jobs`); `merge.merge_results` joins the slices. The partial log is partial.py; the image readers, readers.py.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FastMaskError, ParameterError
from ..io.files import mark_output, output_lock, writable_folder
from ..io.images import MAX_PIXELS, MIN_SIDE
from ..io.results_file import check_format, images_json_path, images_writer, read_run, results_writer, writable_results
from .partial import PARTIAL_FORMAT, PartialLog, partial_path
from .plan import ImagePlan, plan_images
from .readers import ImageFiles, Loaded, default_workers, overlap_writes, read_images, similar_batches

if TYPE_CHECKING:
    from ..inference.proposer import Proposals, Proposer


@dataclass
class ProposeSummary:
    out: str
    images: int = 0  # images with proposals in the results file
    resumed: int = 0  # of which, taken from an earlier interrupted run
    proposals: int = 0
    seconds: float = 0.0  # wall time of this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # files that are not images
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, note): e.g. kept in the GT's frame
    file_list: str | None = None
    shard: tuple[int, int] | None = None
    complete_already: bool = False  # --resume found this run finished: nothing was redone

    @property
    def seconds_per_image(self) -> float:
        done_now = self.images - self.resumed
        return self.seconds / done_now if done_now else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_image": self.seconds_per_image}


def overlay_path(vis_dir: Path, rel: str) -> Path:
    """The overlay of image `rel`: its folder structure kept and its full name, so that none collide."""
    return vis_dir / f"{rel}.png"


def check_reading(batch_size: int = 1, workers: int | None = None, max_pixels: int = MAX_PIXELS) -> None:
    """ParameterError, before any work, for a batch size below 1, reader processes below 0, or a pixel limit
    no image can meet."""
    if batch_size < 1:
        raise ParameterError("batch_size", f"{{}} must be at least 1, not {batch_size}")
    if workers is not None and workers < 0:
        raise ParameterError("workers", f"{{}} must be at least 0, not {workers}")
    if max_pixels < MIN_SIDE * MIN_SIDE:
        raise ParameterError("max_pixels", f"{{}} must be at least {MIN_SIDE * MIN_SIDE} (a {MIN_SIDE}x{MIN_SIDE} image), not {max_pixels}")


def propose_folder(
    proposer: Proposer,
    images_dir: Path,
    out: Path,
    *,
    weights_id: str,
    ann: Path | None = None,
    resume: bool = False,
    vis_dir: Path | None = None,
    batch_size: int = 1,
    max_pixels: int = MAX_PIXELS,
    shard: tuple[int, int] | None = None,
    fmt: str = "coco",
    workers: int | None = None,
    plan: ImagePlan | None = None,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str], None] | None = None,
) -> ProposeSummary:
    """Propose segments for every image under `images_dir` (or the `shard` (K, N) of them) and write
    them to `out` (`fmt`: coco or jsonl), with `<stem>.images.json` beside it.

    weights_id identifies the weights (e.g. their sha256), so that a resume with others is refused.
    `workers` DataLoader processes read and resize the images (default `default_workers`: none on the
    CPU; on a GPU they are spawned, so a script calling this there needs an `if __name__ == "__main__":`
    guard, or `workers=0`); a batch holds `batch_size` images of similar shapes. `plan`: the folder's images as
    `plan_images(images_dir, ann)` found them (passed by callers that split one listing). on_start(total images
    to do) and on_image(file) report progress.
    """
    images_dir, out = Path(images_dir), Path(out)
    check_format(fmt)
    check_reading(batch_size, workers, max_pixels)
    plan = plan or plan_images(images_dir, ann)
    writable_results(out, fmt)
    if vis_dir is not None:
        writable_folder(Path(vis_dir), "overlays")
        mark_output(Path(vis_dir), "overlays")  # never read as images by a later run over a folder holding it
    with output_lock(out):
        return _propose(proposer, images_dir, out, plan, weights_id=weights_id, ann=ann, resume=resume, vis_dir=vis_dir,
                        batch_size=batch_size, max_pixels=max_pixels, shard=shard, fmt=fmt, workers=workers,
                        on_start=on_start, on_image=on_image)


def _propose(proposer: Proposer, images_dir: Path, out: Path, plan: ImagePlan, *, weights_id: str, ann: Path | None,
             resume: bool, vis_dir: Path | None, batch_size: int, max_pixels: int, shard: tuple[int, int] | None,
             fmt: str, workers: int | None, on_start: Callable[[int], None] | None,
             on_image: Callable[[str], None] | None) -> ProposeSummary:
    """`propose_folder`'s work, its arguments checked and its output locked."""
    mine = plan.shard(*shard) if shard else plan.files
    summary = ProposeSummary(out=str(out), ignored=plan.ignored, shard=shard, file_list=str(images_json_path(out)))
    if shard is None or shard[0] == 1:  # listed once over all shards
        summary.skipped += [(f, "not listed in the --ann ground truth") for f in plan.unlisted]

    header, run = run_records(proposer, weights_id, images_dir, ann, plan, shard, fmt)
    if resume and finished_run(out, run, summary):
        return summary
    log = PartialLog(partial_path(out), header)
    if resume and log.resume(plan.ids):
        summary.resumed = sum(1 for f in mine if f in log.done)
    else:
        log.start()
    todo = log.todo(mine)
    if on_start:
        on_start(len(todo))
    if vis_dir is not None:
        from ..inference.vis import save_overlay  # draws with the model's outputs: imports torch

    def write(batch: list[Loaded], proposals: list[Proposals]) -> None:
        for item, found in zip(batch, proposals):
            rel, prepared = item.rel, item.prepared
            record = {"file": rel, "image_id": plan.ids[rel], "width": prepared.width, "height": prepared.height,
                      "results": found.to_coco(plan.ids[rel])}
            if item.note:
                record["note"] = item.note
            log.append(record)
            if vis_dir is not None:
                overlay = overlay_path(vis_dir, rel)
                overlay.parent.mkdir(parents=True, exist_ok=True)
                save_overlay(str(overlay), item.original, found)
            if on_image:
                on_image(rel)

    started = time.perf_counter()
    workers = default_workers(str(proposer.device)) if workers is None else workers
    reader = ImageFiles(images_dir, todo, plan.frames, max_pixels, proposer.size, keep_original=vis_dir is not None)
    def skip(item: Loaded) -> None:
        log.append({"file": item.rel, "skipped": item.error})
        if on_image:
            on_image(item.rel)

    _propose_batches(proposer, similar_batches(read_images(reader, workers), batch_size), write, skip)
    summary.seconds = time.perf_counter() - started
    _write_results(out, fmt, run, log, mine, summary)
    log.path.unlink(missing_ok=True)
    return summary


def _propose_batches(proposer: Proposer, batches: Iterator[list[Loaded]], write: Callable[[list[Loaded], list[Proposals]], None],
                     skip: Callable[[Loaded], None]) -> None:
    """Propose for each batch and `write` its proposals (`skip` an image that could not be read), in order.
    On a GPU the host writes one batch's results while the device runs the next (one writer: the log stays in order)."""
    overlap = overlap_writes(proposer.device.type)
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: deque[Future] = deque()
        for batch in batches:
            if batch[0].prepared is None:
                task: tuple[Callable[..., None], tuple] = (skip, (batch[0],))
            else:
                task = (write, (batch, proposer.propose_prepared([item.prepared for item in batch])))
            if not overlap:
                task[0](*task[1])
                continue
            pending.append(writer.submit(task[0], *task[1]))
            while len(pending) > 1:
                pending.popleft().result()
        while pending:
            pending.popleft().result()


def _write_results(out: Path, fmt: str, run: dict[str, Any], log: PartialLog, mine: list[str], summary: ProposeSummary) -> None:
    """The results file and its image list from the log, streamed in file order, so that a resumed run writes
    exactly what an uninterrupted one would; `summary` and `run` take the counts, skipped images and notes."""
    summary.skipped += [(f, log.skipped[f]) for f in mine if f in log.skipped]
    listed = set(mine)  # a finished image gone since the interrupted run is left out, its note too
    summary.notes = [(f, note) for f, note in log.notes if f in listed]
    run |= {"skipped": [list(s) for s in summary.skipped], "notes": [list(n) for n in summary.notes]}
    with images_writer(images_json_path(out), run) as add_image:
        with results_writer(out, fmt) as add_results:  # committed first: a current image list means current results
            for rel, record in log.records(mine):
                image = {"id": record["image_id"], "file_name": rel, "width": record["width"], "height": record["height"]}
                add_results(image, record["results"])
                add_image({**image, "proposals": len(record["results"])})
                summary.images += 1
                summary.proposals += len(record["results"])


def run_records(proposer: Proposer, weights_id: str, images_dir: Path, ann: Path | None, plan: ImagePlan,
             shard: tuple[int, int] | None, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The partial log's header (what a resume must share) and the run record written beside the results."""
    header = {"format": PARTIAL_FORMAT, "weights": weights_id, "settings": proposer.settings(),
              "ann": str(ann) if ann else None, "images_dir": str(Path(images_dir).resolve()),
              "shard": list(shard) if shard else None, "plan": plan.fingerprint() if shard else None}
    run = {key: header[key] for key in ("weights", "settings", "ann", "images_dir", "shard")}
    return header, run | {"results_format": fmt, "plan": plan.fingerprint(), "planned": len(plan.files)}


def finished_run(out: Path, run: dict[str, Any], summary: ProposeSummary) -> bool:
    """Whether `out` already holds this very run, finished (so that --resume redoes nothing); fills `summary`."""
    if not out.exists() or partial_path(out).exists() or not images_json_path(out).exists():
        return False
    try:
        recorded, images = read_run(out)
    except FastMaskError:
        return False
    if any(recorded.get(key) != value for key, value in run.items()):
        return False
    summary.complete_already = True
    summary.images = summary.resumed = len(images)
    summary.proposals = sum(im.get("proposals", 0) for im in images)
    summary.skipped = [tuple(s) for s in recorded.get("skipped", [])]
    summary.notes = [tuple(n) for n in recorded.get("notes", [])]
    return True

"""Proposals for a folder of images, at any dataset size: flat memory, resumable, shardable, never half-written.

While it runs, finished images are appended to `<out>.partial` (JSON lines, one per image, after a
header recording the settings). At the end the results file is streamed from that log in file
order, one image at a time, into a temporary file renamed into place, and the log is removed:
memory does not grow with the number of images. After a crash or Ctrl-C, `resume=True` skips what
is in the log, and the final file is the same as an uninterrupted run's.

A dataset is split by `shard=(K, N)` (contiguous slices of the sorted image list, for job arrays)
or by torchrun (`propose_torchrun`, one slice per rank); `merge.merge_results` joins the slices.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .coco import read_ground_truth
from .errors import FastMaskError
from .files import writable_file, writable_folder
from .images import MAX_PIXELS, ImageError, list_images, load_image
from .results_file import check_format, images_json_path, images_writer, read_run, results_writer

if TYPE_CHECKING:
    from .inference import Prepared, Proposals, Proposer
    from .merge import MergeSummary

PARTIAL_FORMAT = "fastmask-partial-2"


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


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def shard_path(out: Path, k: int, n: int) -> Path:
    """Where torchrun's rank k-1 of n writes its slice."""
    return out.with_name(f"{out.stem}.shard-{k}-of-{n}{out.suffix}")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1-based) -> (K, N)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise FastMaskError(f"--shard must be K/N such as 1/4, not {text!r}") from None
    if not 1 <= k <= n:
        raise FastMaskError(f"--shard {text}: K must be between 1 and N")
    return k, n


def shard_slice(total: int, k: int, n: int) -> slice:
    """The k-th of n contiguous slices of `total` items: disjoint, deterministic, sizes within one of each other."""
    return slice((k - 1) * total // n, k * total // n)


@dataclass
class ImagePlan:
    """The images of a run, before sharding: sorted relative paths, their ids, and the GT's frames."""

    files: list[str]
    ids: dict[str, Any]  # file -> image id: the GT's as written (any JSON scalar), else its position from 1
    frames: dict[str, tuple[int, int]]  # file -> (width, height) from --ann
    ignored: list[str]  # files that are not images
    unlisted: list[str]  # images that --ann does not list

    def shard(self, k: int, n: int) -> list[str]:
        return self.files[shard_slice(len(self.files), k, n)]

    def fingerprint(self) -> str:
        """Same for two runs exactly when they list the same files under the same ids (so shards fit)."""
        text = "\n".join(f"{json.dumps(self.ids[f])}\t{f}" for f in self.files)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_images(images_dir: Path, ann: Path | None = None) -> ImagePlan:
    """The images under `images_dir` and their ids: the GT's (matched by file name) with `ann`, else the
    1-based positions in the sorted list of every image in the folder (so shards never collide)."""
    files, others = list_images(images_dir)
    if not files:
        shown = f" ({len(others)} other files, such as {others[0]})" if others else ""
        raise FastMaskError(f"no images in {images_dir}{shown}: no file there is one the installed OpenCV can decode")
    if ann is None:
        return ImagePlan(files, {rel: n + 1 for n, rel in enumerate(files)}, {}, others, [])
    gt = read_ground_truth(ann, "--ann file", annotations=False)  # only its images are needed
    by_name: dict[str, int] = {}
    for i, name in enumerate(gt.file_names):
        if name is None:
            continue
        if name in by_name:
            raise FastMaskError(f"--ann {ann} lists {name} twice (image ids {gt.ids[by_name[name]]!r} and {gt.ids[i]!r}): "
                                "its proposals could not be given one id")
        by_name[name] = i
    names_by_base: dict[str, list[int]] = {}
    for name, i in by_name.items():
        names_by_base.setdefault(Path(name).name, []).append(i)
    by_base = {base: found[0] for base, found in names_by_base.items() if len(found) == 1}  # unambiguous only
    listed = {rel: by_name.get(rel, by_base.get(Path(rel).name)) for rel in files}
    ids = {rel: gt.ids[i] for rel, i in listed.items() if i is not None}
    if not ids:
        raise FastMaskError(f"--ann {ann} lists none of the {len(files)} images in the folder (matched by file name)")
    frames = {rel: frame for rel, i in listed.items() if i is not None and (frame := gt.frame(i)) is not None}
    return ImagePlan([f for f in files if f in ids], ids, frames, others, [f for f in files if f not in ids])


@dataclass
class Done:
    """Where a finished image's record lies in the partial log: all a run keeps of it in memory."""

    offset: int
    length: int


class PartialLog:
    """The JSON-lines log of finished images that makes a run resumable, and its index: finished
    images (`done`), skipped ones and why (`skipped`), and per-image notes (`notes`)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.done: dict[str, Done] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[tuple[str, str]] = []

    def load(self) -> None:
        """Index an earlier run with the same settings; the file is cut after its last whole line."""
        offset = 0
        with open(self.path, "rb") as f:
            for n, line in enumerate(f):
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # the line being written when the run was killed
                if not line.endswith(b"\n"):
                    break
                if n == 0:
                    if record != self.header:
                        raise FastMaskError(
                            f"{self.path} was written with other settings, weights or images; "
                            "run without --resume to start over"
                        )
                else:
                    self._index(record, offset, len(line))
                offset += len(line)
        if offset == 0:
            raise FastMaskError(f"{self.path} is not a fastmask partial run; run without --resume to start over")
        with open(self.path, "r+b") as f:
            f.truncate(offset)

    def _index(self, record: dict, offset: int, length: int) -> None:
        rel = record["file"]
        if "skipped" in record:
            self.skipped[rel] = record["skipped"]
            return
        self.done[rel] = Done(offset, length)
        if record.get("note"):
            self.notes.append((rel, record["note"]))

    def start(self) -> None:
        with open(self.path, "w") as f:
            f.write(json.dumps(self.header) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with open(self.path, "ab") as f:
            offset = f.tell()
            f.write(line)
            f.flush()
        self._index(record, offset, len(line))

    def records(self, files: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(file, record) of each finished image among `files`, in that order, read one at a time."""
        with open(self.path, "rb") as f:
            for rel in files:
                entry = self.done.get(rel)
                if entry is not None:
                    f.seek(entry.offset)
                    yield rel, json.loads(f.read(entry.length))


@dataclass
class Loaded:
    """One image of a run as the reader hands it to the model."""

    rel: str
    prepared: Prepared | None  # resized for the network; None when the file cannot be used
    note: str | None = None  # e.g. kept in the ground truth's frame
    error: str | None = None  # why the file cannot be used
    original: np.ndarray | None = None  # the image as read, for --vis overlays only

    def shape(self) -> tuple[int, int]:
        return self.prepared.image.shape[:2] if self.prepared is not None else (0, 0)


class ImageFiles:
    """The images of a run, read (EXIF-oriented, or in the ground truth's frame) and resized for the
    network: a map-style dataset, so that DataLoader workers can read them in other processes."""

    def __init__(self, folder: Path, files: list[str], frames: dict[str, tuple[int, int]], max_pixels: int, size: int,
                 keep_original: bool) -> None:
        self.folder, self.files, self.frames, self.max_pixels = folder, files, frames, max_pixels
        self.size, self.keep_original = size, keep_original

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Loaded:
        from .inference import prepare

        rel = self.files[index]
        try:
            image, note = load_image(self.folder / rel, self.max_pixels, self.frames.get(rel))
        except ImageError as exc:
            return Loaded(rel, None, error=str(exc))
        return Loaded(rel, prepare(image, self.size), note, original=image if self.keep_original else None)


def _as_is(item: Loaded) -> Loaded:
    return item


def _single_threaded_opencv(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # one decoder per worker process: the workers are the parallelism


def default_workers(device: str) -> int:
    """Reader processes for `device`: none on the CPU, where the network's threads use every core (reading
    ahead was slower there); on a GPU, the host's cores less one, shared among torchrun's local ranks, at most 8."""
    if not device.startswith("cuda"):
        return 0
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 2) // ranks - 1))


def overlap_writes(device_type: str) -> bool:
    """Whether results are written on a thread while the next batch runs: on a GPU, whose work leaves the
    host free; not on the CPU, where the network's threads already use every core."""
    return device_type == "cuda"


def read_images(reader: ImageFiles, workers: int) -> Iterator[Loaded]:
    """The images of `reader` in order, read in `workers` DataLoader processes (in turn when 0)."""
    if workers == 0:
        yield from (reader[i] for i in range(len(reader)))
        return
    from torch.utils.data import DataLoader

    # spawned, not forked: OpenCV's thread pool does not survive a fork (a forked worker hung in it)
    yield from DataLoader(reader, batch_size=None, num_workers=workers, collate_fn=_as_is, multiprocessing_context="spawn",
                          worker_init_fn=_single_threaded_opencv, prefetch_factor=4)


def similar_batches(loaded: Iterator[Loaded], batch_size: int) -> Iterator[list[Loaded]]:
    """Batches of images of similar shapes, since a batch is padded to its largest: a pool of four
    batches' worth is sorted by shape and the first batch taken. Unreadable images come alone."""
    pool: list[Loaded] = []
    for item in loaded:
        if item.prepared is None or batch_size == 1:
            yield [item]
            continue
        pool.append(item)
        if len(pool) >= 4 * batch_size:
            pool.sort(key=Loaded.shape)
            yield pool[:batch_size]
            pool = pool[batch_size:]
    pool.sort(key=Loaded.shape)
    for start in range(0, len(pool), batch_size):
        yield pool[start : start + batch_size]


def overlay_path(vis_dir: Path, rel: str) -> Path:
    """The overlay of image `rel`: its folder structure kept and its full name, so that none collide."""
    return vis_dir / f"{rel}.png"


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
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str], None] | None = None,
) -> ProposeSummary:
    """Propose segments for every image under `images_dir` (or the `shard` (K, N) of them) and write
    them to `out` (`fmt`: coco or jsonl), with `<stem>.images.json` beside it.

    weights_id identifies the weights (e.g. their sha256), so that a resume with others is refused.
    `workers` DataLoader processes read and resize the images (default `default_workers`: none on the
    CPU; on a GPU they are spawned, so a script calling this there needs an `if __name__ == "__main__":`
    guard, or `workers=0`); a batch holds `batch_size` images of similar shapes. on_start(total images to do) and
    on_image(file) report progress.
    """
    images_dir, out = Path(images_dir), Path(out)
    check_format(fmt)
    if batch_size < 1:
        raise FastMaskError(f"--batch-size must be at least 1, not {batch_size}")
    plan = plan_images(images_dir, ann)
    writable_file(out, "the results")
    if vis_dir is not None:
        writable_folder(Path(vis_dir), "overlays")
    mine = plan.shard(*shard) if shard else plan.files
    summary = ProposeSummary(out=str(out), ignored=plan.ignored, shard=shard, file_list=str(images_json_path(out)))
    if shard is None or shard[0] == 1:  # listed once over all shards
        summary.skipped += [(f, "not listed in the --ann ground truth") for f in plan.unlisted]

    header, run = _records(proposer, weights_id, images_dir, ann, plan, shard, fmt)
    if resume and _finished(out, run, summary):
        return summary
    log = PartialLog(partial_path(out), header)
    if resume and log.path.exists():
        log.load()
        summary.resumed = sum(1 for f in mine if f in log.done)
    else:
        log.start()
    todo = [f for f in mine if f not in log.done and f not in log.skipped]
    if on_start:
        on_start(len(todo))
    if vis_dir is not None:
        from .vis import save_overlay  # draws with the model's outputs: imports torch

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
    if workers < 0:
        raise FastMaskError(f"--workers must be at least 0, not {workers}")
    reader = ImageFiles(images_dir, todo, plan.frames, max_pixels, proposer.size, keep_original=vis_dir is not None)
    def skip(item: Loaded) -> None:
        log.append({"file": item.rel, "skipped": item.error})
        if on_image:
            on_image(item.rel)

    # on a GPU the host writes one batch's results while the device runs the next (one writer: the log stays in order)
    overlap = overlap_writes(proposer.device.type)
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: deque[Future] = deque()
        for batch in similar_batches(read_images(reader, workers), batch_size):
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
    summary.seconds = time.perf_counter() - started

    # Streamed in file order, so a resumed run writes exactly what an uninterrupted one would.
    summary.skipped += [(f, log.skipped[f]) for f in mine if f in log.skipped]
    summary.notes = log.notes
    run |= {"skipped": [list(s) for s in summary.skipped], "notes": [list(n) for n in summary.notes]}
    with images_writer(images_json_path(out), run) as add_image:
        with results_writer(out, fmt) as add_results:  # committed first: a current image list means current results
            for rel, record in log.records(mine):
                image = {"id": record["image_id"], "file_name": rel, "width": record["width"], "height": record["height"]}
                add_results(image, record["results"])
                add_image({**image, "proposals": len(record["results"])})
                summary.images += 1
                summary.proposals += len(record["results"])
    log.path.unlink(missing_ok=True)
    return summary


def _records(proposer: Proposer, weights_id: str, images_dir: Path, ann: Path | None, plan: ImagePlan,
             shard: tuple[int, int] | None, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The partial log's header (what a resume must share) and the run record written beside the results."""
    header = {"format": PARTIAL_FORMAT, "weights": weights_id, "settings": proposer.settings(),
              "ann": str(ann) if ann else None, "images_dir": str(Path(images_dir).resolve()),
              "shard": list(shard) if shard else None, "plan": plan.fingerprint() if shard else None}
    run = {key: header[key] for key in ("weights", "settings", "ann", "images_dir", "shard")}
    return header, run | {"results_format": fmt, "plan": plan.fingerprint(), "planned": len(plan.files)}


def _finished(out: Path, run: dict[str, Any], summary: ProposeSummary) -> bool:
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


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: str, local_rank: int) -> str:
    """This rank's own GPU (`cuda:LOCAL_RANK`, wrapping when ranks outnumber GPUs), or `device` as given."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def propose_torchrun(proposer: Proposer, images_dir: Path, out: Path, *, rank: int, world: int, fmt: str = "coco",
                     **options: Any) -> tuple[ProposeSummary, MergeSummary | None]:
    """Under torchrun: propose this rank's slice into its shard file, wait for every rank, and on rank 0
    merge the shards into `out` (then remove them). Returns this rank's summary and, on rank 0, the merge's."""
    import torch.distributed as dist

    from .merge import merge_results

    out = Path(out)
    if options.get("resume"):  # a finished run leaves no shards behind: recognise the merged file itself
        summary = ProposeSummary(out=str(out), file_list=str(images_json_path(out)))
        _, run = _records(proposer, options["weights_id"], images_dir, options.get("ann"),
                          plan_images(images_dir, options.get("ann")), None, fmt)
        if _finished(out, run, summary):
            return summary, None
    if not dist.is_initialized():  # gloo only synchronises here: no tensors travel, on GPUs or not
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        shards = [shard_path(out, k, world) for k in range(1, world + 1)]
        summary = propose_folder(proposer, images_dir, shards[rank], shard=(rank + 1, world), fmt=fmt, **options)
        dist.barrier()
        merged = None
        if rank == 0:
            merged = merge_results(shards, out, fmt=fmt)
            for path in shards:
                path.unlink()
                images_json_path(path).unlink()
        return summary, merged
    finally:
        dist.destroy_process_group()

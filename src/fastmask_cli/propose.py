"""Proposals for a folder of images, written as one COCO results file: resumable, never half-written.

While it runs, finished images are appended to `<out>.partial` (JSON lines, one per image, after a
header recording the settings). The results file itself is written once, at the end, atomically, and
the partial file is then removed. After a crash or Ctrl-C, `resume=True` skips what is already in
the partial file, and the final file is the same as an uninterrupted run's.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FastMaskError
from .files import read_json, write_json_atomic
from .images import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, list_images, read_image
from .inference import Proposer
from .vis import save_overlay

PARTIAL_FORMAT = "fastmask-partial-1"


@dataclass
class ProposeSummary:
    out: str
    images: int = 0  # images with proposals in the results file
    resumed: int = 0  # of which, taken from an earlier interrupted run
    proposals: int = 0
    seconds: float = 0.0  # wall time of this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # files without an image suffix
    file_list: str | None = None

    @property
    def seconds_per_image(self) -> float:
        done_now = self.images - self.resumed
        return self.seconds / done_now if done_now else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds_per_image": self.seconds_per_image}


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def file_list_path(out: Path) -> Path:
    return out.with_name(out.stem + ".images.json")


def image_ids_from_gt(ann: Path, files: list[str]) -> dict[str, int]:
    """Map image files to the GT's image ids, matching `file_name` by relative path, then by base name."""
    data = read_json(ann, "--ann file")
    try:
        by_name = {im["file_name"]: int(im["id"]) for im in data["images"]}
    except (KeyError, TypeError, ValueError):
        raise FastMaskError(f"--ann {ann} is not COCO ground truth (needs an 'images' list with file_name and id)") from None
    by_base = {Path(name).name: i for name, i in by_name.items()}
    ids = {}
    for rel in files:
        image_id = by_name.get(rel, by_base.get(Path(rel).name))
        if image_id is not None:
            ids[rel] = image_id
    if not ids:
        raise FastMaskError(f"--ann {ann} lists none of the {len(files)} images in the folder (matched by file name)")
    return ids


class PartialLog:
    """The JSON-lines log of finished images that makes a run resumable."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header

    def load(self) -> dict[str, dict]:
        """Entries of an earlier run with the same settings; the file is cut after its last whole line."""
        entries: dict[str, dict] = {}
        good_bytes = 0
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
                            f"{self.path} was written with other settings or weights; "
                            "run without --resume to start over"
                        )
                else:
                    entries[record["file"]] = record
                good_bytes += len(line)
        if good_bytes == 0:
            raise FastMaskError(f"{self.path} is not a fastmask partial run; run without --resume to start over")
        with open(self.path, "r+b") as f:
            f.truncate(good_bytes)
        return entries

    def start(self) -> None:
        with open(self.path, "w") as f:
            f.write(json.dumps(self.header) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()


def _read_ahead(folder: Path, files: list[str], max_pixels: int, depth: int) -> Iterator[tuple[str, np.ndarray | ImageError]]:
    """Decode images on a worker thread while the model runs (OpenCV releases the GIL)."""

    def read(rel: str) -> np.ndarray | ImageError:
        try:
            return read_image(folder / rel, max_pixels)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: deque[tuple[str, Future]] = deque()
        for rel in files:
            pending.append((rel, pool.submit(read, rel)))
            if len(pending) > depth:
                rel0, fut = pending.popleft()
                yield rel0, fut.result()
        while pending:
            rel0, fut = pending.popleft()
            yield rel0, fut.result()


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
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str], None] | None = None,
) -> ProposeSummary:
    """Propose segments for every image under `images_dir` and write COCO results to `out`.

    weights_id identifies the weights (e.g. their sha256), so that a resume with others is refused.
    on_start(total images to do) and on_image(file) report progress.
    """
    images_dir, out = Path(images_dir), Path(out)
    if batch_size < 1:
        raise FastMaskError(f"--batch-size must be at least 1, not {batch_size}")
    files, others = list_images(images_dir)
    if not files:
        raise FastMaskError(f"no images in {images_dir} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if out.is_dir():
        raise FastMaskError(f"--out {out} is a folder; give a file name such as results.json")
    if not out.parent.exists():
        raise FastMaskError(f"folder for --out does not exist: {out.parent}")
    summary = ProposeSummary(out=str(out), ignored=others)
    if ann is not None:
        ids = image_ids_from_gt(ann, files)
        summary.skipped += [(f, "not listed in the --ann ground truth") for f in files if f not in ids]
    else:
        ids = {rel: n + 1 for n, rel in enumerate(files)}  # deterministic: sorted relative paths
    if vis_dir is not None:
        vis_dir.mkdir(parents=True, exist_ok=True)

    header = {"format": PARTIAL_FORMAT, "weights": weights_id, "settings": proposer.settings(),
              "ann": str(ann) if ann else None, "images_dir": str(images_dir.resolve())}
    log = PartialLog(partial_path(out), header)
    done: dict[str, dict] = {}
    if resume and log.path.exists():
        done = log.load()
        summary.resumed = sum(1 for r in done.values() if "results" in r)
    else:
        log.start()
    todo = [f for f in files if f in ids and f not in done]
    if on_start:
        on_start(len(todo))

    started = time.perf_counter()
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        for (rel, image), proposals in zip(batch, proposer.propose_batch([im for _, im in batch])):
            record = {"file": rel, "image_id": ids[rel], "width": image.shape[1], "height": image.shape[0],
                      "results": proposals.to_coco(ids[rel])}
            log.append(record)
            done[rel] = record
            if vis_dir is not None:
                save_overlay(str(vis_dir / (Path(rel).with_suffix("").as_posix().replace("/", "__") + ".png")), image, proposals)
            if on_image:
                on_image(rel)
        batch.clear()

    for rel, image in _read_ahead(images_dir, todo, max_pixels, depth=2 * batch_size):
        if isinstance(image, ImageError):
            record = {"file": rel, "skipped": str(image)}
            log.append(record)
            done[rel] = record
            if on_image:
                on_image(rel)
            continue
        batch.append((rel, image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    summary.seconds = time.perf_counter() - started

    # Assemble in file order, so a resumed run writes exactly what an uninterrupted one would.
    results, listed = [], []
    for rel in files:
        record = done.get(rel)
        if record is None:
            continue
        if "skipped" in record:
            summary.skipped.append((rel, record["skipped"]))
            continue
        results += record["results"]
        listed.append({"id": record["image_id"], "file_name": rel, "width": record["width"], "height": record["height"]})
    summary.images, summary.proposals = len(listed), len(results)
    write_json_atomic(out, results)
    if ann is None:
        # A COCO skeleton naming every image id, so the results can be tied back to files.
        write_json_atomic(file_list_path(out), {"images": listed, "annotations": [], "categories": [{"id": 1, "name": "object"}]})
        summary.file_list = str(file_list_path(out))
    log.path.unlink(missing_ok=True)
    return summary

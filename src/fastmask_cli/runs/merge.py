"""`fastmask merge`: the shards of one proposal run joined into one results file, streamed image by image.

Shards come from `fastmask propose --shard K/N` (job arrays) or from the ranks of a torchrun run.
Each carries its run record (`<stem>.images.json`); merging refuses shards of different weights,
settings or image lists, and any image that appears twice, and names the images of absent shards.
Shards are contiguous slices of the sorted image list, so joining them in order gives exactly the
file an unsharded run writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..coco.ids import id_key
from ..errors import FastMaskError, ParameterError
from ..io.files import output_lock
from ..io.results_file import check_format, images_json_path, images_writer, iter_results, read_run, results_writer
from .plan import plan_images, shard_slice

SAME_RUN = ("weights", "settings", "plan")  # what shards of one run share; the image list by its fingerprint


@dataclass
class MergeSummary:
    out: str
    file_list: str
    shards: int = 0
    images: int = 0
    proposals: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing_shards: list[str] = field(default_factory=list)  # e.g. "2/4"
    missing_images: int = 0


def merge_results(shards: list[Path], out: Path, fmt: str = "coco", allow_missing: bool = False,
                  on_image: Callable[[], None] | None = None, as_one_run: bool = False) -> MergeSummary:
    """Join `shards` (results files of either format) into `out` in `fmt`, with its `.images.json`.
    `as_one_run`: record the run as an unsharded one (no shard file names, which are about to be removed),
    so that `.images.json` too is byte for byte what one process writes."""
    check_format(fmt)
    if not shards:
        raise FastMaskError("no shards to merge")
    out = Path(out)
    for path in shards:
        if Path(path).is_dir():
            raise FastMaskError(f"shard {path} is a folder (--format png or labels), which cannot be read back: propose "
                                "the shards as jsonl, then merge them with --format png or labels")
        if not Path(path).is_file():
            raise FastMaskError(f"shard not found: {path}")
        if Path(path).resolve() == out.resolve():
            raise ParameterError("out", f"{{}} {out} is one of the shards; write the merged file elsewhere")
    loaded = [(Path(path), *read_run(Path(path))) for path in shards]
    first_path, first, _ = loaded[0]
    for path, run, _ in loaded[1:]:
        for key in SAME_RUN:
            if run.get(key) != first.get(key):
                what = "image list" if key == "plan" else key
                raise FastMaskError(f"{path.name} and {first_path.name} come from different runs (their {what} differ)")
    count = _split_count(loaded)
    by_shard: dict[int, Path] = {}
    for path, run, _ in loaded:
        k = _shard_of(run)[0]
        if k in by_shard:
            raise FastMaskError(f"{path.name} and {by_shard[k].name} are both shard {k}/{count}: their images would appear twice")
        by_shard[k] = path
    _refuse_repeated_images(loaded)
    summary = MergeSummary(out=str(out), file_list=str(images_json_path(out)), shards=len(loaded))
    absent = [k for k in range(1, count + 1) if k not in by_shard]
    if absent:
        summary.missing_shards = [f"{k}/{count}" for k in absent]
        names, summary.missing_images = _absent_images(first, absent, count)
        if not allow_missing:
            listed = f": {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else ""
            raise ParameterError("allow_missing", f"shard {', '.join(summary.missing_shards)} not given, so "
                                 f"{summary.missing_images} images are missing{listed}; pass {{}} to merge the shards given")

    loaded.sort(key=lambda item: _shard_of(item[1])[0])
    for _, run, _ in loaded:
        summary.skipped += [tuple(s) for s in run.get("skipped", [])]
    # the keys in the order of an unsharded run's record (folder.run_records)
    record = {key: first.get(key) for key in ("weights", "settings", "ann", "images_dir")}
    record |= {"shard": None, "results_format": fmt, "plan": first.get("plan"), "planned": first.get("planned"),
               "skipped": [list(s) for s in summary.skipped], "notes": [n for _, run, _ in loaded for n in run.get("notes", [])]}
    if not as_one_run:
        record |= {"merged_from": [path.name for path, _, _ in loaded], "missing_shards": summary.missing_shards}
    with output_lock(out), images_writer(images_json_path(out), record) as add_image:  # one writer of OUT at a time
        with results_writer(out, fmt) as add_results:
            for path, _, images in loaded:
                for image, results in _aligned(path, images):
                    add_results(image, results)
                    add_image(image)
                    summary.images += 1
                    summary.proposals += len(results)
                    if on_image:
                        on_image()
    return summary


def _shard_of(run: dict[str, Any]) -> list[int]:
    """[K, N] of a shard's run; an unsharded run is shard 1 of 1."""
    return run.get("shard") or [1, 1]


def _split_count(loaded: list[tuple[Path, dict, list]]) -> int:
    counts = {_shard_of(run)[1] for _, run, _ in loaded}
    if len(counts) > 1:
        raise FastMaskError(f"the shards split the images in different numbers of parts ({', '.join(map(str, sorted(counts)))})")
    return counts.pop()


def _refuse_repeated_images(loaded: list[tuple[Path, dict, list]]) -> None:
    seen: dict[Any, Path] = {}
    for path, _, images in loaded:
        for image in images:
            key = id_key(image["id"])
            if key in seen:
                raise FastMaskError(f"image {image['file_name']} (id {image['id']!r}) is in both {seen[key].name} and {path.name}")
            seen[key] = path


def _absent_images(run: dict[str, Any], absent: list[int], count: int) -> tuple[list[str], int]:
    """Names of the images of absent shards, by listing the folder again where it is here and unchanged;
    else no names, and their number from the split's sizes."""
    try:
        plan = plan_images(Path(run["images_dir"]), Path(run["ann"]) if run.get("ann") else None)
    except (FastMaskError, KeyError, TypeError):
        plan = None
    if plan is not None and plan.fingerprint() == run.get("plan"):
        names = [f for k in absent for f in plan.shard(k, count)]
        return names, len(names)
    total = int(run.get("planned", 0))
    return [], sum(len(range(total)[shard_slice(total, k, count)]) for k in absent)


def _aligned(path: Path, images: list[dict[str, Any]]):
    """(image entry, its results) for every image a shard lists, checking the results file against the list."""
    results_by_image = iter_results(path)
    pending = next(results_by_image, None)
    for image in images:
        results: list[dict[str, Any]] = []
        if pending is not None and id_key(pending[0]) == id_key(image["id"]):
            results = pending[1]
            pending = next(results_by_image, None)
        if len(results) != image.get("proposals"):
            raise FastMaskError(f"{path.name} does not match its image list at {image['file_name']} "
                                "(was it changed after fastmask wrote it?)")
        yield image, results
    if pending is not None:
        raise FastMaskError(f"{path.name} holds results for image id {pending[0]!r}, which its image list does not name")

"""Results as image files, for tools that read masks as pictures rather than COCO JSON.

- `png`: per image, a folder `OUT/IMAGE_PATH/` holding one binary PNG per proposal (`0.png` is the best;
  0 or 255) and `metadata.csv` (id, area, bbox_x0, bbox_y0, bbox_w, bbox_h, score: pixels, the mask's
  tight box, its score), after Segment Anything's `scripts/amg.py`: its first six columns, in its order,
  then our score where it has its own scores; its folders are named by the image's stem.
- `labels`: per image, one 16-bit PNG `OUT/IMAGE_PATH.png` whose pixel values are proposal ranks (1 is the
  best, 0 no proposal): an instance label map, as annotation tools import. A pixel belongs to the
  best-ranked proposal covering it (`propose --one-per-pixel` makes that a proposal's whole mask).

IMAGE_PATH is the image's path under the input folder, its file name whole (as overlays are named), so
images that differ only by their suffix do not collide. The folder is marked as fastmask's
(`files.mark_output`): a later run over a folder holding it does not read these PNGs as images. Both stream an image at a time; the folder is
written beside OUT and takes OUT's place at the end (`folder_writer`), so OUT is never half written.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..errors import FastMaskError
from .files import mark_output, output_kind, room_for, writable_folder

FOLDER_FORMATS = ("png", "labels")
MAX_LABEL = 2**16 - 1  # ranks a 16-bit label map holds
METADATA = ("id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "score")


def check_folder_output(out: Path, fmt: str) -> Path:
    """Before any work: `out` can become the `fmt` folder. It may not exist yet, or be a results folder a run
    of ours wrote (`files.output_kind` one of FOLDER_FORMATS; it is replaced whole); anything else is refused,
    so that no file of the user's is deleted. Its parent is made and must be writable. Raises FastMaskError."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and output_kind(out) in FOLDER_FORMATS):
        what = "a file" if not out.is_dir() else "a folder not written by fastmask propose"
        raise FastMaskError(f"--format {fmt} writes a folder, and {out} is {what}: give a new folder name")
    writable_folder(out.parent, "the results")
    return out


def masks_of(results: list[dict[str, Any]]) -> Iterator[np.ndarray]:
    """(H, W) uint8 masks of an image's results, best first, decoded one at a time (memory: one mask)."""
    for result in results:
        rle = result["segmentation"]
        yield mask_utils.decode({"size": rle["size"], "counts": rle["counts"]})


def label_map(image: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    """(H, W) uint16 ranks: each pixel the rank (from 1) of the best-ranked result covering it, 0 for none.
    Raises FastMaskError for more than MAX_LABEL results."""
    if len(results) > MAX_LABEL:
        raise FastMaskError(f"--format labels holds at most {MAX_LABEL} proposals an image, not {len(results)}: lower --top-k")
    labels = np.zeros((image["height"], image["width"]), np.uint16)
    for rank, mask in enumerate(masks_of(results), start=1):
        labels[(mask > 0) & (labels == 0)] = rank
    return labels


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise FastMaskError(f"cannot encode {path} as PNG")
    path.write_bytes(encoded.tobytes())


def _write_masks(folder: Path, image: dict[str, Any], results: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = io.StringIO()
    table = csv.writer(rows, lineterminator="\n")
    table.writerow(METADATA)
    for i, (result, mask) in enumerate(zip(results, masks_of(results))):
        _write_png(folder / f"{i}.png", mask * np.uint8(255))
        box = [int(v) if float(v).is_integer() else v for v in result["bbox"]]  # tight boxes: whole pixels
        table.writerow([i, int(mask.sum()), *box, result["score"]])
    (folder / "metadata.csv").write_text(rows.getvalue())


@contextmanager
def folder_writer(out: Path, fmt: str) -> Iterator[Callable[[dict[str, Any], list[dict[str, Any]]], None]]:
    """Yield add(image, results), image = {id, file_name, width, height}, writing `fmt` files of each image
    into a folder beside `out`; on success that folder takes `out`'s place (a folder a run of ours wrote
    before is removed), on failure it is removed. Raises FastMaskError where `out` may not be replaced."""
    out = check_folder_output(out, fmt)
    for kind in ("tmp", "old"):  # what a run killed before left (the output lock is ours: no other run owns them)
        for leftover in out.parent.glob(f".{glob.escape(out.name)}.{kind}[0-9]*"):
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.mkdir()
    mark_output(tmp, fmt)

    def add(image: dict[str, Any], results: list[dict[str, Any]]) -> None:
        name = Path(image["file_name"])
        if name.is_absolute() or ".." in name.parts:  # from a shard's image list: never written outside the folder
            raise FastMaskError(f"image file name {image['file_name']!r} is not a path inside the images folder")
        if fmt == "labels":
            target = tmp / f"{image['file_name']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_png(target, label_map(image, results))
        else:
            _write_masks(tmp / image["file_name"], image, results)

    try:
        with room_for(out):
            yield add
            _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(new: Path, out: Path) -> None:
    """Put the folder `new` at `out`, moving the earlier results there (if any) aside first and removing them
    after; where the second move fails, the earlier results are put back. A link at `out` is replaced, not
    followed: what it points to is left as it was."""
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    moved = out.exists() or out.is_symlink()
    if moved:
        os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        if moved:
            os.replace(old, out)
        raise
    if old.is_symlink():
        old.unlink()
    elif moved:
        shutil.rmtree(old, ignore_errors=True)

"""The files a proposal run writes, streamed one image at a time in both directions.

- Results, in one of two formats:
  - `coco`: a COCO results list (loadable by `COCO.loadRes`), laid out with one image's results per
    line so that it can be read back an image at a time;
  - `jsonl`: JSON Lines, one line per image:
    `{"image_id", "file_name", "width", "height", "proposals": [COCO results entries]}`;
  - `polygons`: the `coco` layout with each mask as COCO polygons (`as_polygons`), for annotation tools;
  - `png` and `labels`: a folder of image files (mask_files.py), which a run writes from its records at
    the end; the shards and logs of a split run in between are `jsonl` (`storage_format`).
- Beside them, `<stem>.images.json` (see `images_json_path`): a COCO skeleton (every image with proposals: id, file name,
  size, proposal count) whose `info.fastmask` records the run (weights, settings, shard, skipped
  images). It ties ids back to files, and it is what `merge` checks shards against.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import FastMaskError, ParameterError
from .files import atomic_path, read_json, writable_file
from .mask_files import FOLDER_FORMATS, check_folder_output, folder_writer

FORMATS = ("coco", "jsonl", "polygons", *FOLDER_FORMATS)
# polygons: vertices within this many pixels of the mask's outline (OpenCV's approxPolyDP); rasterised back by
# pycocotools, a polygon meets its mask at IoU 0.98 on average on the example photos (tests/io/test_results_file.py)
POLYGON_TOLERANCE = 1.0
RUN_FORMAT = "fastmask-run-1"
COMPACT = (",", ":")
CATEGORIES = [{"id": 1, "name": "object"}]

ImageWriter = Callable[[dict[str, Any], list[dict[str, Any]]], None]


def images_json_path(results: Path) -> Path:
    """`r.json` -> `r.images.json`; other suffixes are kept (`r.jsonl.images.json`), so the two never share one."""
    results = Path(results)
    return results.with_name((results.stem if results.suffix == ".json" else results.name) + ".images.json")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ParameterError("fmt", f"{{}} must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}, not {fmt!r}")
    return fmt


def storage_format(fmt: str) -> str:
    """The format of the files a split run writes on the way to `fmt` (its shards, read back to be joined)."""
    return "jsonl" if fmt in FOLDER_FORMATS else fmt


def writable_results(out: Path, fmt: str) -> Path:
    """Check, before any work, that results in `fmt` can be written at `out`: a file (`writable_file`), or
    for the folder formats a folder that may take its place (`mask_files.check_folder_output`)."""
    if check_format(fmt) in FOLDER_FORMATS:
        return check_folder_output(out, fmt)
    return writable_file(out, "the results")


def as_polygons(result: dict[str, Any], tolerance: float = POLYGON_TOLERANCE) -> dict[str, Any]:
    """A results entry with its RLE mask as COCO polygons: the outer outline of each connected part
    (COCO polygons are filled as a union: holes are filled too), simplified to within `tolerance` pixels
    (OpenCV's `approxPolyDP`), on the pixels' corners, so that pycocotools fills exactly the pixels of an
    unsimplified outline (a part a pixel wide included). Entries already holding
    polygons, or none, come back as they are."""
    segmentation = result.get("segmentation")
    if not isinstance(segmentation, dict):
        return result
    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils

    mask = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")
                              if isinstance(segmentation["counts"], str) else segmentation["counts"]})
    # outlines on pixel corners, not through the edge pixels' centres (which would lose half a pixel all
    # round, and thin parts whole): on a grid of twice the resolution, pixel (i, j) is point (2i + 1, 2j + 1)
    # and its corners and edges are its 3x3 neighbourhood, so the outline of the dilated points runs along
    # the pixels' edges, at even coordinates
    height, width = mask.shape
    corners = np.zeros((2 * height + 1, 2 * width + 1), np.uint8)
    corners[1::2, 1::2] = mask
    corners = cv2.dilate(corners, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, 2 * tolerance, True).reshape(-1, 2)
        if len(points) < 3:  # a part a pixel or two across: its own corners, unsimplified
            points = contour.reshape(-1, 2)
        polygons.append([round(float(v), 1) for v in (points / 2).ravel()])
    return {**result, "segmentation": polygons}


@contextmanager
def results_writer(path: Path, fmt: str) -> Iterator[ImageWriter]:
    """Yield add(image, results), image = {id, file_name, width, height}; the file (or folder, in the folder
    formats) appears whole at the end."""
    if check_format(fmt) in FOLDER_FORMATS:
        with folder_writer(path, fmt) as add_files:
            yield add_files
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            started = False

            def add(image: dict[str, Any], results: list[dict[str, Any]]) -> None:
                nonlocal started
                if fmt == "polygons":
                    results = [as_polygons(r) for r in results]
                if fmt == "jsonl":
                    line = {"image_id": image["id"], "file_name": image["file_name"], "width": image["width"],
                            "height": image["height"], "proposals": results}
                    f.write(json.dumps(line, separators=COMPACT) + "\n")
                elif results:
                    f.write(",\n" if started else "[\n")
                    f.write(",".join(json.dumps(r, separators=COMPACT) for r in results))
                    started = True

            yield add
            if fmt != "jsonl":
                f.write("\n]\n" if started else "[]\n")
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def images_writer(path: Path, run: dict[str, Any]) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield add(image entry) for the `.images.json` skeleton of a run; written atomically at the end."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            head = json.dumps({"info": {"fastmask": {"format": RUN_FORMAT, **run}}, "annotations": [],
                               "categories": CATEGORIES}, separators=COMPACT)
            f.write(head[:-1] + ',"images":[')
            count = 0

            def add(image: dict[str, Any]) -> None:
                nonlocal count
                f.write(("," if count else "") + "\n" + json.dumps(image, separators=COMPACT))
                count += 1

            yield add
            f.write("\n]}\n")
            f.flush()
            os.fsync(f.fileno())


def read_run(results: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run record and image entries written beside a results file by `fastmask propose` or `merge`."""
    path = images_json_path(results)
    if not path.exists():
        raise FastMaskError(f"{path} not found: it is written beside {Path(results).name} by fastmask propose, "
                            "and records the run that made it")
    data = read_json(path, "image list")
    run = data.get("info", {}).get("fastmask") if isinstance(data, dict) else None
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT or not isinstance(data.get("images"), list):
        raise FastMaskError(f"{path} does not record a fastmask run (written by an older version or another tool)")
    return run, data["images"]


def iter_results(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(image id, its results) for each image of a file written by `results_writer`, in file order.

    Either format; an image without proposals comes with an empty list in `jsonl`, not at all in `coco`."""
    try:
        yield from _iter_results(path)
    except (KeyError, TypeError, IndexError):
        raise FastMaskError(f"{path} is not a results file written by fastmask (an entry lacks its image id)") from None


def _iter_results(path: Path) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    with open(path) as f:
        first = f.read(1)
        f.seek(0)
        if first == "{":
            for n, line in enumerate(f, start=1):
                if line.strip():
                    image = _parse(line, path, n)
                    yield image["image_id"], image["proposals"]
        elif first == "[":
            for n, line in enumerate(f, start=1):
                line = line.strip().rstrip(",")
                if line not in ("", "[", "]", "[]"):
                    results = _parse(f"[{line}]", path, n)
                    yield results[0]["image_id"], results
        elif first:  # an empty file is JSON Lines of no image (a slice whose images were all skipped)
            raise FastMaskError(f"{path} is neither a COCO results list nor JSON Lines")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result of a COCO results list (any layout) or of a JSON Lines file, as one list."""
    try:
        with open(path) as f:
            head = f.readline(8192)  # enough to see a JSON line's keys; a COCO list is often a single huge line
    except FileNotFoundError:
        raise FastMaskError(f"results file not found: {path}") from None
    except (UnicodeDecodeError, OSError):
        head = ""  # read_json says what is wrong
    if head.startswith("{") and '"proposals":' in head:
        return [r for _, results in iter_results(path) for r in results]
    results = read_json(path, "results file")
    if not isinstance(results, list):
        raise FastMaskError(f"results file {path} is not a COCO results list (it is a JSON {type(results).__name__})")
    return results


def _parse(text: str, path: Path, line: int) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise FastMaskError(f"{path} line {line} is not JSON (a file cut short?)") from None

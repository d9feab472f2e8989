"""The images of a run: found, sorted, given ids (the ground truth's, else their positions), and split
into contiguous shards (job arrays, torchrun ranks) that join back in order."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..coco.ground_truth import read_ground_truth
from ..errors import FastMaskError, ParameterError
from ..io.images import list_images


def shard_path(out: Path, k: int, n: int) -> Path:
    """Where shard k of n of a split run into `out` is written (split.py: `--jobs`, torchrun)."""
    return out.with_name(f"{out.stem}.shard-{k}-of-{n}{out.suffix}")


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
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]  # names need not be UTF-8


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
            raise ParameterError("ann", f"{{}} {ann} lists {name} twice (image ids {gt.ids[by_name[name]]!r} and {gt.ids[i]!r}): "
                                "its proposals could not be given one id")
        by_name[name] = i
    names_by_base: dict[str, list[int]] = {}
    for name, i in by_name.items():
        names_by_base.setdefault(Path(name).name, []).append(i)
    by_base = {base: found[0] for base, found in names_by_base.items() if len(found) == 1}  # unambiguous only
    listed = {rel: by_name.get(rel, by_base.get(Path(rel).name)) for rel in files}
    ids = {rel: gt.ids[i] for rel, i in listed.items() if i is not None}
    if not ids:
        raise ParameterError("ann", f"{{}} {ann} lists none of the {len(files)} images in the folder (matched by file name)")
    frames = {rel: frame for rel, i in listed.items() if i is not None and (frame := gt.frame(i)) is not None}
    return ImagePlan([f for f in files if f in ids], ids, frames, others, [f for f in files if f not in ids])

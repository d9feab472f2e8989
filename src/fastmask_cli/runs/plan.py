"""The images of a run: found, sorted, given ids (the ground truth's, else their positions), and split
into contiguous shards (job arrays, torchrun ranks) that join back in order."""

from __future__ import annotations

import hashlib
import json
import os
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


def portable_name(name: str) -> str:
    """A ground truth's file name as a relative POSIX path: Windows separators and a drive ("C:") or
    leading "/" dropped, so that names written on Windows, or absolute, still find their files."""
    name = name.replace("\\", "/")
    if len(name) > 1 and name[1] == ":" and name[0].isalpha():
        name = name[2:]
    return name.lstrip("/")


def _tail_of(a: str, b: str) -> bool:
    """Whether path `a` ends with path `b`, or `b` with `a`, at a folder boundary."""
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def match_names(files: list[str], by_name: dict[str, int], ann: Path) -> dict[str, int | None]:
    """The ground-truth entry (index) of each file (relative path): its exact path first; else the one
    entry whose path and the file's end alike ("val2017/x.jpg" for "x.jpg" or "data/val2017/x.jpg"); else
    the one entry of the same base name, where no other entry or file has that base name.
    ParameterError naming them where a name fits several files or a file several names: an id given
    to the wrong picture would skew AR silently."""
    listed: dict[str, int | None] = {rel: by_name.get(rel) for rel in files}
    exact = {i for i in listed.values() if i is not None}
    names_by_base: dict[str, list[str]] = {}
    for name, i in by_name.items():
        if i not in exact:
            names_by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    claimed: dict[str, list[str]] = {}
    for rel in (r for r, i in listed.items() if i is None):
        fits = [name for name in names_by_base.get(rel.rsplit("/", 1)[-1], []) if _tail_of(rel, name)]
        if len(fits) > 1:
            raise ParameterError("ann", f"{{}} {ann}: {rel} fits several of its names ({', '.join(fits[:3])}): "
                                "give the names as paths relative to the folder")
        if fits:
            claimed.setdefault(fits[0], []).append(rel)
            listed[rel] = by_name[fits[0]]
    # last, a base name that one name and one file alone have, whatever their folders ("train/x.jpg" for "imgs/x.jpg")
    names_left = [n for n in by_name if by_name[n] not in exact and n not in claimed]
    files_left = [r for r, i in listed.items() if i is None]
    for base in {n.rsplit("/", 1)[-1] for n in names_left}:
        names = [n for n in names_left if n.rsplit("/", 1)[-1] == base]
        rels = [r for r in files_left if r.rsplit("/", 1)[-1] == base]
        if len(names) == 1 and len(rels) == 1:
            listed[rels[0]] = by_name[names[0]]
    for name, rels in claimed.items():
        if len(rels) > 1:
            raise ParameterError("ann", f"{{}} {ann} names {name}, which fits {len(rels)} files ({', '.join(sorted(rels)[:3])}): "
                                "give the names as paths relative to the folder")
    return listed


def resolve_inputs(inputs: list[Path], listed: list[str] | None = None) -> tuple[Path, list[str] | None]:
    """Image files and folders (`propose a.jpg b.png shots/`, and `listed`: the paths of a --list file)
    as one folder and the files in it to propose for: their deepest common folder and each image's path
    relative to it (a folder's images as `list_images` finds them), sorted and once each; (folder, None)
    for a single folder, which is listed as the run goes. FastMaskError naming a path that is not there."""
    paths = [Path(p) for p in inputs] + [Path(p) for p in (listed or []) if p.strip()]
    if not paths:
        raise FastMaskError("no images given: name image files or folders, or --list FILE")
    for path in paths:
        if not path.exists():
            raise FastMaskError(f"image file or folder not found: {path}")
        if not path.is_dir() and not path.is_file():  # a pipe would block the reader
            raise FastMaskError(f"{path} is not a regular file or a folder (a device, pipe or socket)")
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0], None
    resolved = [Path(os.path.abspath(p)) for p in paths]  # links keep their own names
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in resolved]))
    files: dict[str, None] = {}
    for path in resolved:
        if path.is_dir():
            prefix = path.relative_to(root).as_posix()
            files |= dict.fromkeys(f if prefix == "." else f"{prefix}/{f}" for f in list_images(path)[0])
        else:
            files[path.relative_to(root).as_posix()] = None
    by_parts = lambda name: name.split("/")  # noqa: E731 - the order list_images gives
    return root, sorted(files, key=by_parts)


def plan_inputs(inputs: list[str | Path], ann: Path | None = None, listed: list[str] | None = None) -> tuple[Path, ImagePlan]:
    """Image files and folders, any mix (and `listed`: the lines of a --list file), as one run: the folder
    the results' file names are relative to, and the plan of its images (`resolve_inputs`, `plan_images`),
    to pass to `propose_folder` / `propose_jobs` as `images_dir` and `plan`. Raises FastMaskError."""
    images_dir, files = resolve_inputs([Path(p) for p in inputs], listed)
    return images_dir, plan_images(images_dir, ann, files)


def plan_images(images_dir: Path, ann: Path | None = None, files: list[str] | None = None) -> ImagePlan:
    """The images under `images_dir` and their ids: the GT's (matched by file name) with `ann`, else the
    1-based positions in the sorted list of every image in the folder (so shards never collide).
    `files`: these paths relative to `images_dir` instead of every image under it (`resolve_inputs`)."""
    files, others = list_images(images_dir) if files is None else (files, [])
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
        name = portable_name(name)
        if name in by_name:
            raise ParameterError("ann", f"{{}} {ann} lists {name} twice (image ids {gt.ids[by_name[name]]!r} and {gt.ids[i]!r}): "
                                "its proposals could not be given one id")
        by_name[name] = i
    listed = match_names(files, by_name, ann)
    ids = {rel: gt.ids[i] for rel, i in listed.items() if i is not None}
    if not ids:
        raise ParameterError("ann", f"{{}} {ann} lists none of the {len(files)} images in the folder (matched by file name)")
    frames = {rel: frame for rel, i in listed.items() if i is not None and (frame := gt.frame(i)) is not None}
    return ImagePlan([f for f in files if f in ids], ids, frames, others, [f for f in files if f not in ids])

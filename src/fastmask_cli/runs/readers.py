"""Images read for the network ahead of it: oriented, resized, in DataLoader processes on a GPU, and
batched by similar shapes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..device import launch
from ..inference.preprocess import Prepared, prepare
from ..io.images import ImageError, load_image


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
    ranks = launch().local_world
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

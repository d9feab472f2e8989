"""Training data: COCO-format instances, checked once up front, and augmented per sample.

`CocoInstances` reads a COCO ground-truth file and an image folder, and says clearly what it cannot
use (missing images, degenerate polygons, annotations without masks) instead of failing mid-epoch.
Each sample is scaled (multi-scale training with jitter), flipped, cropped, and optionally gets the
instances of another image pasted on top (copy-paste), which matters with little data.
Every random choice comes from a generator seeded by (seed, epoch, index), so an epoch is the same
whichever worker loads it, and a resumed run sees the data an unbroken one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..coco.ground_truth import BOX_ONLY, POLYGONS, RLE, GroundTruth, read_ground_truth
from ..errors import FastMaskError
from ..io.files import release_memory
from ..io.images import ImageError, read_image

MIN_VISIBLE = 0.5  # an object cut by a crop or covered by a pasted one below this fraction is ignored
MIN_PIXELS = 4  # objects smaller than this after scaling carry no signal


@dataclass(frozen=True)
class Augment:
    """How each training sample is drawn from its image."""

    size: int = 800  # longer side before jitter, in pixels (the paper trains at 800)
    jitter: tuple[float, float] = (0.5, 1.25)  # the longer side is size x U(jitter)
    crop: int | None = None  # largest side kept after scaling (random crop); default: size
    flip: bool = True
    copy_paste: float = 0.5  # probability of pasting another image's instances on top


@dataclass
class Sample:
    """One training image and its objects, in the image's own (augmented) pixels."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (O, H, W) uint8
    ignore: np.ndarray  # (O,) bool: crowds and objects mostly cut away; windows near them are not negatives
    file: str = ""
    error: str | None = None  # why the image could not be used; the sample is then empty

    @classmethod
    def broken(cls, file: str, error: str) -> "Sample":
        return cls(np.zeros((0, 0, 3), np.uint8), np.zeros((0, 0, 0), np.uint8), np.zeros(0, bool), file, error)

    def boxes(self) -> np.ndarray:
        """(O, 4) x0, y0, x1, y1 tight boxes of the masks (as evaluation boxes them)."""
        out = np.zeros((len(self.masks), 4), dtype=np.float32)
        for i, mask in enumerate(self.masks):
            ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            if len(ys):
                out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        return out


@dataclass
class DatasetReport:
    images: int = 0
    objects: int = 0
    crowds: int = 0
    notes: list[str] = field(default_factory=list)


class CocoInstances(torch.utils.data.Dataset):
    """COCO instances for training. Yields `Sample`s; one whose image cannot be read carries `error`.

    The ground truth is read by `coco.read_ground_truth` (the same checks and notes as `eval`) and
    kept in its flat arrays, so that DataLoader workers share it without copying it page by page."""

    def __init__(self, gt_path: Path, images_dir: Path, augment: Augment | None = None, seed: int = 0) -> None:
        gt_path, images_dir = Path(gt_path), Path(images_dir)
        if not images_dir.is_dir():
            raise FastMaskError(f"images folder not found: {images_dir}")
        truth = read_ground_truth(gt_path)
        self.images_dir = images_dir
        self.augment = augment or Augment()
        self.seed = seed
        self.epoch = 0
        self.report = DatasetReport(notes=list(truth.notes))
        notes = self.report.notes

        names = list(truth.file_names)  # decoded once here; the dataset keeps them flat
        named = [i for i in range(len(truth)) if names[i] is not None]
        if len(named) < len(truth):
            notes.append(f"{len(truth) - len(named)} image entries lack a 'file_name' and were skipped")
        seen: dict[str, int] = {}
        for i in named:  # one picture under two ids would train twice, each copy's objects the other's background
            if names[i] in seen:
                raise FastMaskError(f"{gt_path.name} lists {names[i]} twice (image ids {truth.ids[seen[names[i]]]!r} and "
                                    f"{truth.ids[i]!r}): merge its entries into one image")
            seen[names[i]] = i
        present = [i for i in named if (images_dir / names[i]).is_file()]
        if len(present) < len(named):
            first = next(names[i] for i in named if not (images_dir / names[i]).is_file())
            if not present:
                raise FastMaskError(f"none of the {len(named)} images of {gt_path.name} is in {images_dir} (first: {first})")
            notes.append(f"{len(named) - len(present)} images listed in {gt_path.name} are not in {images_dir} and were skipped (first: {first})")
        self.gt = _in_shared_memory(truth.for_training())
        listed = np.zeros(len(truth), dtype=bool)
        listed[present] = True
        used, masked = listed[truth.image], truth.kind != BOX_ONLY
        if (used & ~masked).any():
            notes.append(f"{int((used & ~masked).sum())} annotations skipped: no mask (boxes only)")
        crowds = np.bincount(truth.image[used & masked & truth.crowd], minlength=len(truth))[present]
        objects = np.bincount(truth.image[used & masked & ~truth.crowd], minlength=len(truth))[present]
        self.report.objects, self.report.crowds = int(objects.sum()), int(crowds.sum())
        empty = int((objects == 0).sum())
        if empty:
            notes.append(f"{empty} images have no usable object: they train as negatives only")
        present_names = [names[i] for i in present]
        order = sorted(range(len(present)), key=present_names.__getitem__)
        self.ids = np.asarray([present[k] for k in order], dtype=np.int64)  # positions in the ground truth
        self.report.images = len(self.ids)
        del truth, names, present_names
        release_memory()  # the full reading (float64, ids) is garbage now: handed back before DataLoader workers fork

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def file_name(self, index: int) -> str:
        return self.gt.file_names[self.ids[index]]

    def load(self, index: int) -> tuple[np.ndarray, list[tuple[Any, bool]]]:
        """The image (RGB) and its objects: (rings as float32 arrays, or a compressed RLE dict; crowd).
        Raises ImageError when the file cannot be used."""
        gt, i = self.gt, int(self.ids[index])
        frame = gt.frame(i)
        image = read_image(self.images_dir / gt.file_names[i], frame=frame)  # annotations are in the GT's frame
        if frame is not None and frame != image.shape[1::-1]:
            raise ImageError(f"{gt.file_names[i]} is {image.shape[1]}x{image.shape[0]}, the ground truth says {frame[0]}x{frame[1]}")
        objects = []
        for a in gt.annotations_of(i):
            if gt.kind[a] == POLYGONS:
                objects.append((gt.polygons(a), bool(gt.crowd[a])))
            elif gt.kind[a] == RLE:
                objects.append((gt.mask_rle(a), bool(gt.crowd[a])))
        return image, objects

    def draw(self, index: int, rng: np.random.Generator) -> Sample:
        """Scale, flip and crop image `index`, rasterising its objects at the drawn scale."""
        image, objects = self.load(index)
        aug = self.augment
        height, width = image.shape[:2]
        scale = aug.size * rng.uniform(*aug.jitter) / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        masks, ignore, full_area = [], [], []
        for seg, crowd in objects:
            if isinstance(seg, list):  # polygons rasterise directly at the new scale: sharp and cheap
                xy_scale = np.array([new_w / width, new_h / height])
                rings = [(ring.reshape(-1, 2) * xy_scale).ravel().tolist() for ring in seg]
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(rings, new_h, new_w)))
            else:
                mask = cv2.resize(mask_utils.decode(seg), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
            masks.append(mask)
            ignore.append(crowd)
            full_area.append(int(mask.sum()))
        masks_np = np.stack(masks) if masks else np.zeros((0, new_h, new_w), dtype=np.uint8)
        if aug.flip and rng.random() < 0.5:
            image, masks_np = image[:, ::-1], masks_np[:, :, ::-1]
        crop = aug.crop or aug.size
        if max(new_h, new_w) > crop:
            y0 = int(rng.integers(0, max(new_h - crop, 0) + 1))
            x0 = int(rng.integers(0, max(new_w - crop, 0) + 1))
            image, masks_np = image[y0 : y0 + crop, x0 : x0 + crop], masks_np[:, y0 : y0 + crop, x0 : x0 + crop]
        sample = Sample(np.ascontiguousarray(image), np.ascontiguousarray(masks_np), np.array(ignore, dtype=bool),
                        self.file_name(index))
        return _drop_hidden(sample, np.array(full_area))

    def __getitem__(self, index: int) -> Sample | None:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            sample = self.draw(index, rng)
        except ImageError as exc:
            return Sample.broken(self.file_name(index), str(exc))
        if len(self) > 1 and rng.random() < self.augment.copy_paste:
            other = int(rng.integers(0, len(self) - 1))
            try:
                sample = copy_paste(sample, self.draw(other + (other >= index), rng), rng)
            except ImageError:
                pass  # that image is reported when its own turn comes
        return sample


def _shared(array: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(array)).share_memory_().numpy() if array.size else array


def _in_shared_memory(truth: GroundTruth) -> GroundTruth:
    """The ground truth's flat arrays moved into shared memory. Forked DataLoader workers then map their
    pages only as they read them, instead of inheriting (and counting in their PSS) all of them; at COCO
    scale that is 200 MB per worker (docs/training.md, "At COCO scale")."""
    arrays = {f.name: _shared(getattr(truth, f.name)) for f in fields(truth) if isinstance(getattr(truth, f.name), np.ndarray)}
    names = truth.file_names
    for attribute in ("buffer", "offsets", "present"):
        setattr(names, attribute, _shared(getattr(names, attribute)))
    return replace(truth, **arrays)


def _drop_hidden(sample: Sample, full_area: np.ndarray) -> Sample:
    """Drop objects with almost nothing left; ignore those mostly cut away (their visible part is not the object)."""
    visible = sample.masks.sum(axis=(1, 2), dtype=np.int64)
    keep = visible >= MIN_PIXELS
    ignore = sample.ignore | (visible < MIN_VISIBLE * np.maximum(full_area, 1))
    return Sample(sample.image, sample.masks[keep], ignore[keep], sample.file)


def copy_paste(sample: Sample, source: Sample, rng: np.random.Generator) -> Sample:
    """Paste a random subset of `source`'s objects onto `sample` at the same place (simple copy-paste):
    more objects per image, on new backgrounds, partly covering the old ones."""
    candidates = np.nonzero(~source.ignore)[0]
    if len(candidates) == 0:
        return sample
    chosen = candidates[rng.random(len(candidates)) < 0.5]
    if len(chosen) == 0:
        return sample
    h, w = sample.image.shape[:2]
    pasted = np.zeros((len(chosen), h, w), dtype=np.uint8)
    sh, sw = min(h, source.image.shape[0]), min(w, source.image.shape[1])
    pasted[:, :sh, :sw] = source.masks[chosen, :sh, :sw]
    cover = pasted.any(axis=0)
    image = sample.image.copy()
    image[:sh, :sw][cover[:sh, :sw]] = source.image[:sh, :sw][cover[:sh, :sw]]
    before = sample.masks.sum(axis=(1, 2), dtype=np.int64)
    masks = sample.masks * (~cover)[None].astype(np.uint8)
    full = np.concatenate([before, pasted.sum(axis=(1, 2), dtype=np.int64)])
    merged = Sample(image, np.concatenate([masks, pasted]), np.concatenate([sample.ignore, np.zeros(len(chosen), bool)]), sample.file)
    return _drop_hidden(merged, full)

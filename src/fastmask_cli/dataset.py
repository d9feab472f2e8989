"""Training data: COCO-format instances, checked once up front, and augmented per sample.

`CocoInstances` reads a COCO ground-truth file and an image folder, and says clearly what it cannot
use (missing images, degenerate polygons, annotations without masks) instead of failing mid-epoch.
Each sample is scaled (multi-scale training with jitter), flipped, cropped, and optionally gets the
instances of another image pasted on top (copy-paste), which matters with little data.
Every random choice comes from a generator seeded by (seed, epoch, index), so an epoch is the same
whichever worker loads it, and a resumed run sees the data an unbroken one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from .errors import FastMaskError
from .files import read_json
from .images import ImageError, gt_frame, read_image

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


def _polygons(segmentation: list) -> list[list[float]]:
    """The usable rings of a polygon annotation: at least 3 points and a non-zero area."""
    rings = []
    for ring in segmentation:
        if not isinstance(ring, list) or len(ring) < 6 or len(ring) % 2:
            continue
        pts = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(pts).all():
            continue
        area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
        if area > 0:
            rings.append([float(v) for v in ring])
    return rings


class CocoInstances(torch.utils.data.Dataset):
    """COCO instances for training. Yields `Sample`s; one whose image cannot be read carries `error`."""

    def __init__(self, gt_path: Path, images_dir: Path, augment: Augment | None = None, seed: int = 0) -> None:
        gt_path, images_dir = Path(gt_path), Path(images_dir)
        if not images_dir.is_dir():
            raise FastMaskError(f"images folder not found: {images_dir}")
        data = read_json(gt_path, "ground truth")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise FastMaskError(f"ground truth {gt_path} is not COCO (needs 'images' and 'annotations' lists)")
        self.images_dir = images_dir
        self.augment = augment or Augment()
        self.seed = seed
        self.epoch = 0
        self.report = DatasetReport()
        notes = self.report.notes

        images: dict[Any, dict] = {}
        malformed = 0
        for image in data["images"]:
            if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
                malformed += 1
                continue
            images[image["id"]] = image
        if malformed:
            notes.append(f"{malformed} image entries lack an 'id' or 'file_name' and were skipped")
        missing = [im["file_name"] for im in images.values() if not (images_dir / im["file_name"]).is_file()]
        if missing:
            if len(missing) == len(images):
                raise FastMaskError(f"none of the {len(images)} images of {gt_path.name} is in {images_dir} (first: {missing[0]})")
            notes.append(f"{len(missing)} images listed in {gt_path.name} are not in {images_dir} and were skipped (first: {missing[0]})")
            images = {k: v for k, v in images.items() if (images_dir / v["file_name"]).is_file()}
        if not images:
            raise FastMaskError(f"ground truth {gt_path} lists no images")

        self.objects: dict[Any, list[tuple[Any, bool]]] = {k: [] for k in images}
        dropped = {"unknown image": 0, "no mask": 0, "degenerate polygon": 0}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or ann.get("image_id") not in images:
                dropped["unknown image"] += 1
                continue
            seg = ann.get("segmentation")
            if isinstance(seg, list):
                seg = _polygons(seg)
                if not seg:
                    dropped["degenerate polygon"] += 1
                    continue
            elif not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
                dropped["no mask"] += 1
                continue
            crowd = bool(ann.get("iscrowd", 0))
            self.objects[ann["image_id"]].append((seg, crowd))
            self.report.crowds += crowd
            self.report.objects += not crowd
        for reason, count in dropped.items():
            if count:
                notes.append(f"{count} annotations skipped: {reason}")
        empty = sum(1 for objs in self.objects.values() if not any(not crowd for _, crowd in objs))
        if empty:
            notes.append(f"{empty} images have no usable object: they train as negatives only")
        self.ids = sorted(images, key=lambda k: str(images[k]["file_name"]))
        self.images = images
        self.report.images = len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> tuple[np.ndarray, list[tuple[Any, bool]]]:
        """The image (RGB) and its raw annotations; raises ImageError when the file cannot be used."""
        info = self.images[self.ids[index]]
        image = read_image(self.images_dir / info["file_name"], frame=gt_frame(info))  # annotations are in the GT's frame
        height, width = info.get("height"), info.get("width")
        if (height, width) != (None, None) and (height, width) != image.shape[:2]:
            raise ImageError(f"{info['file_name']} is {image.shape[1]}x{image.shape[0]}, the ground truth says {width}x{height}")
        return image, self.objects[self.ids[index]]

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
                rings = [(np.asarray(ring).reshape(-1, 2) * xy_scale).ravel().tolist() for ring in seg]
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(rings, new_h, new_w)))
            else:
                rle = mask_utils.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg
                mask = cv2.resize(mask_utils.decode(rle), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
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
                        self.images[self.ids[index]]["file_name"])
        return _drop_hidden(sample, np.array(full_area))

    def __getitem__(self, index: int) -> Sample | None:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            sample = self.draw(index, rng)
        except ImageError as exc:
            return Sample.broken(self.images[self.ids[index]]["file_name"], str(exc))
        if len(self) > 1 and rng.random() < self.augment.copy_paste:
            other = int(rng.integers(0, len(self) - 1))
            try:
                sample = copy_paste(sample, self.draw(other + (other >= index), rng), rng)
            except ImageError:
                pass  # that image is reported when its own turn comes
        return sample


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

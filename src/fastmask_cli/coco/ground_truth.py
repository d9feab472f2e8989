"""One reading of COCO ground truth, checked and normalised once, for every command.

`read_ground_truth` is what `eval`, `propose --ann`, `train` and validation read ground truth
through. It keeps what pycocotools can score correctly and says, in one list of notes, what it
skipped, derived or renumbered; what no reading can make right is refused in one line
(`FastMaskError`). Annotations are held in flat arrays (all polygon coordinates in one float64
array with offsets per ring and per annotation, RLE strings in one byte buffer), not in per-object
Python lists: DataLoader workers then share them without copy-on-write growth (detectron2 serialises
its dataset for the same reason).

`GroundTruth.to_coco` hands pycocotools a clean copy with its own integer ids (image ids of any JSON
scalar type, as written, stay ours: `GroundTruth.index`), and `results.check_results` refuses results
that COCOeval would score silently but wrongly. Rules, per kind (docs/data.md, "Bad input"):

- image ids: any JSON scalar, kept as written (1 and 1.0 are one id, "1" another); duplicates refused;
- annotation ids: duplicated, missing or not positive integers are renumbered with a note (pycocotools
  keys annotations by id, and counts a match to id 0 as no match);
- `area`, `bbox` missing or unusable: derived from the mask (exactly as COCO does) with a note;
- degenerate polygon rings (< 3 points, odd length, not numbers, not finite, far outside any image,
  all on one line), masks covering no pixel of their image, RLE of the wrong size or that does not
  decode, boxes of no size without a mask: skipped and counted;
- annotations on image ids that no image has: ignored and counted;
- a polygon written as one flat list [x1, y1, ...] is read as one ring, and an empty segmentation ([] or {})
  with a usable box as a box-only object (as annotation tools export them), each with a note;
- a COCO panoptic file is refused: its masks are in PNG files, not in the JSON.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import chain, compress
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..errors import FastMaskError
from ..io.files import no_gc, read_json, release_memory
from .flat import FlatStrings, flat_annotations, take_annotations
from .ids import id_key, is_number, pixels
from .polygons import CHUNK, polygon_arrays
from .rle import MASK_ROW, annotation_rle, is_mask_array

# What an annotation's mask is (`GroundTruth.kind`); negative codes mark, while reading, why one is skipped.
BOX_ONLY, POLYGONS, RLE = 0, 1, 2
_EMPTY, _MALFORMED, _BAD_RLE = -1, -2, -3  # empty segmentation; neither list nor dict; RLE that does not decode


@dataclass
class GroundTruth:
    """COCO ground truth, checked. Images keep their order in the file; annotations are grouped by image.

    Images: `ids` (as written), `file_names` (None where absent), `widths`/`heights` (int32, -1 where
    unknown). Annotations, A of them, in flat arrays: `image` (index into the images), `crowd`,
    `category` (the `category_id` as written, -1 where not an integer; named in `categories`),
    `area` (NaN: derive from the mask), `bbox` (A, 4) x, y, w, h (NaN: derive), `kind` (0 box only,
    1 polygons, 2 RLE), `rings` (A+1 offsets into `ring_offsets`), `ring_offsets` (R+1 offsets into
    `coords`, float64 x, y pairs as written; float32 in `for_training`), `rle` (A+1 offsets into `rle_bytes`, compressed RLE strings).
    `image_anns` (I+1) offsets: image i's annotations are `image_anns[i]:image_anns[i + 1]`.
    """

    path: Path
    ids: list[Any]
    file_names: FlatStrings
    widths: np.ndarray
    heights: np.ndarray
    image: np.ndarray
    crowd: np.ndarray
    category: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    kind: np.ndarray
    rings: np.ndarray
    ring_offsets: np.ndarray
    coords: np.ndarray
    rle: np.ndarray
    rle_bytes: np.ndarray
    image_anns: np.ndarray
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # kind -> annotations skipped
    index: dict[tuple, int] = field(default_factory=dict)  # id_key(image id) -> image index
    categories: dict[int, str] = field(default_factory=dict)  # category id -> name, as the file lists them

    def __len__(self) -> int:
        return len(self.widths)

    def for_training(self) -> "GroundTruth":
        """This ground truth without what training does not use: the per-image Python objects (ids and
        their index), so that nothing per image or object is a Python object in the DataLoader workers,
        and the stated areas and boxes (training boxes its masks); coordinates in float32 (half the memory;
        a training sample is rescaled anyway)."""
        unused = np.zeros(0, dtype=np.float64)
        return replace(self, ids=[], index={}, area=unused, bbox=unused.reshape(0, 4), coords=self.coords.astype(np.float32))

    def find(self, image_id: Any) -> int | None:
        """Index of the image with this id (any JSON scalar), or None."""
        key = id_key(image_id)
        return None if key is None else self.index.get(key)

    def frame(self, i: int) -> tuple[int, int] | None:
        """(width, height) of image i, or None where the file does not say."""
        width, height = int(self.widths[i]), int(self.heights[i])
        return (width, height) if width > 0 and height > 0 else None

    def annotations_of(self, i: int) -> range:
        return range(int(self.image_anns[i]), int(self.image_anns[i + 1]))

    def polygons(self, a: int) -> list[np.ndarray]:
        """The rings of annotation a, each (2P,) x, y, ..."""
        first, last = int(self.rings[a]), int(self.rings[a + 1])
        offsets = self.ring_offsets[first : last + 1]
        return [self.coords[offsets[r] : offsets[r + 1]] for r in range(last - first)]

    def rle_counts(self, a: int) -> str:
        return self.rle_bytes[self.rle[a] : self.rle[a + 1]].tobytes().decode("ascii")

    def mask_rle(self, a: int, frame: tuple[int, int] | None = None) -> dict | None:
        """Annotation a's mask as compressed RLE (pycocotools), in `frame` (width, height) or its image's;
        None for a box-only annotation. Raises FastMaskError for polygons on an image of unknown size."""
        kind = int(self.kind[a])
        if kind == RLE:
            return {"size": [int(self.heights[self.image[a]]), int(self.widths[self.image[a]])],
                    "counts": self.rle_counts(a).encode("ascii")}
        if kind == BOX_ONLY:
            return None
        frame = frame or self.frame(int(self.image[a]))
        if frame is None:
            raise FastMaskError(f"image {self.ids[self.image[a]]!r} of {self.path.name} has no usable 'width' and 'height' "
                                "(positive integers): they are needed to rasterise its polygons")
        rings = [ring.astype(np.float64).tolist() for ring in self.polygons(a)]
        return mask_utils.merge(mask_utils.frPyObjects(rings, frame[1], frame[0]))

    def to_coco(self, masks: bool = True, box_only: bool = True) -> COCO:
        """A pycocotools COCO index of this ground truth: image i has id i + 1, annotations ids 1..A,
        one category. Polygons go in with the coordinates as written (the clean copy).
        With `masks` False, segmentations are left out (box evaluation needs none); with `box_only`
        False, so are the objects that have no mask (mask evaluation cannot use them)."""
        images = []
        for i, image_id in enumerate(self.ids):
            entry: dict[str, Any] = {"id": i + 1, "file_name": self.file_names[i] or str(image_id)}
            if self.frame(i):
                entry |= {"width": int(self.widths[i]), "height": int(self.heights[i])}
            images.append(entry)
        annotations = []
        for a in range(len(self.image)):
            if not box_only and self.kind[a] == BOX_ONLY:
                continue
            i = int(self.image[a])
            entry = {"id": a + 1, "image_id": i + 1, "category_id": 1, "iscrowd": int(self.crowd[a])}
            rle = None
            if self.kind[a] == BOX_ONLY and np.isnan(self.area[a]):
                raise FastMaskError(f"{self.path.name}: an annotation of image {self.ids[i]!r} has a box but neither a mask "
                                    "nor an 'area' (the small/medium/large split needs its area)")
            if np.isnan(self.area[a]) or np.isnan(self.bbox[a]).any():
                rle = self.mask_rle(a)
            entry["area"] = float(mask_utils.area(rle)) if np.isnan(self.area[a]) else float(self.area[a])
            bbox = mask_utils.toBbox(rle) if np.isnan(self.bbox[a]).any() else self.bbox[a]
            entry["bbox"] = [float(v) for v in bbox]
            if masks and self.kind[a] == POLYGONS:
                if self.frame(i) is None:
                    self.mask_rle(a)  # raises: the polygons cannot be rasterised
                entry["segmentation"] = [ring.astype(np.float64).tolist() for ring in self.polygons(a)]
            elif masks and self.kind[a] == RLE:
                entry["segmentation"] = {"size": [int(self.heights[i]), int(self.widths[i])], "counts": self.rle_counts(a)}
            annotations.append(entry)
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it indexes
            coco.createIndex()
        return coco


_SEGMENTATION_KIND = {list: POLYGONS, dict: RLE}  # a truthy segmentation of another type is malformed


def _image_indices(image_ids: list, index: dict[tuple, int]) -> list[int | None]:
    """The image index of each annotation's image id (None where no image has it), through `id_key`
    rules; ints and strings, nearly all ids, by a plain dictionary lookup."""
    plain = {value: i for (kind, value), i in index.items() if type(value) in (int, str)}
    return [plain[v] if type(v) in (int, str) and v in plain else (index.get(k) if (k := id_key(v)) is not None else None)
            for v in image_ids]


def _boxes(raw: list) -> np.ndarray:
    """(A, 4) float64 boxes; NaN rows where a box is missing, not four finite numbers, or of no size."""
    nan = [math.nan] * 4
    shaped = [b if type(b) is list and len(b) == 4 else nan for b in raw]
    boxes = None
    if set(map(type, chain.from_iterable(shaped))) <= {int, float}:
        with contextlib.suppress(OverflowError):  # an int too large for a float: found box by box below
            boxes = np.array(shaped, dtype=np.float64).reshape(len(raw), 4)
    if boxes is None:  # something other than numbers (a string, a boolean) inside a box: find it box by box
        boxes = np.array([b if all(is_number(v) for v in b) else nan for b in shaped], dtype=np.float64).reshape(len(raw), 4)
    with np.errstate(invalid="ignore"):
        boxes[~(np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0))] = math.nan
    return boxes


def _areas(raw: list) -> np.ndarray:
    """(A,) float64 areas; NaN where missing, not a finite number, or negative."""
    areas = np.array([v if is_number(v) else math.nan for v in raw], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        areas[~(areas >= 0) | ~np.isfinite(areas)] = math.nan
    return areas


def read_ground_truth(path: Path, what: str = "ground truth", annotations: bool = True) -> GroundTruth:
    """Read and check a COCO instances file (`what` names it in messages). Raises FastMaskError in one
    line for what cannot be read right: not COCO, duplicated image ids, an unusable `iscrowd`.
    With `annotations` False, an image list alone will do (COCO's image_info files for test sets).
    COCO train2017's size (118k images, 860k polygons) reads in about 10 s (docs/training.md, "At COCO scale")."""
    with no_gc():
        truth = _read_ground_truth(Path(path), what, annotations)
    release_memory()  # the parsed JSON is garbage now: give its pages back before workers fork
    return truth


# Why annotations are skipped, for the reasons the reader finds (an RLE's own reasons come from `rle.annotation_rle`).
SKIPPED = {
    "object": "not a JSON object",
    _EMPTY: "empty segmentation",
    _MALFORMED: "malformed segmentation",
    "image": "on an image id that no image has",
    "degenerate": "degenerate polygon (fewer than 3 points, odd length, not numbers, not finite, far outside "
                  "any image, or on one line)",
    "emptied": "empty segmentation and no usable 'bbox'",
    "no size": "box of no size and no mask",
    "empty mask": "empty mask",
}


def _read_ground_truth(path: Path, what: str, need_annotations: bool) -> GroundTruth:
    data = read_json(path, what)
    if isinstance(data, dict) and not need_annotations and not isinstance(data.get("annotations"), list):
        data["annotations"] = []
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise FastMaskError(f"{what} {path} is not COCO (needs 'images' and 'annotations' lists)")
    notes: list[str] = []
    skipped: Counter[str] = Counter()
    ids, file_names, widths, heights, index = _images(data["images"], path, what, notes)
    categories = _categories(data.get("categories"))
    anns = _annotation_objects(data["annotations"], path, what, skipped)
    del data
    arrays, kept_ids = _annotations(anns, index, widths, heights, path, what, notes, skipped)
    del anns
    order = np.argsort(arrays["image"], kind="stable")
    if (order != np.arange(len(order))).any():
        arrays = take_annotations(arrays, order)
    image_anns = np.searchsorted(arrays["image"], np.arange(len(ids) + 1)).astype(np.int64)

    numbered = [a for a in kept_ids if type(a) is int and a > 0]
    if len(set(numbered)) < len(kept_ids):
        repeats = len(numbered) - len(set(numbered))
        notes.append(f"annotation ids renumbered ({repeats} repeated, {len(kept_ids) - len(numbered)} missing or not "
                     "positive integers): pycocotools needs them unique")
    for reason, count in skipped.items():
        notes.append(f"{count} annotations skipped: {reason}")
    for field_name, values in (("area", arrays["area"]), ("bbox", arrays["bbox"][:, 0])):
        if np.isnan(values).any():
            notes.append(f"{int(np.isnan(values).sum())} annotations without a usable '{field_name}': derived from the mask")
    return GroundTruth(path, ids, FlatStrings(file_names), widths, heights, image_anns=image_anns, notes=notes,
                       skipped=dict(skipped), index=index, categories=categories, **arrays)


def _categories(entries: Any) -> dict[int, str]:
    """Category id -> name, for the entries that have an integer id (proposals are class-agnostic: the
    names only label objects in reports)."""
    if not isinstance(entries, list):
        return {}
    return {c["id"]: str(c.get("name", c["id"])) for c in entries if isinstance(c, dict) and type(c.get("id")) is int}


def _images(entries: list, path: Path, what: str, notes: list[str]
            ) -> tuple[list, list[str | None], np.ndarray, np.ndarray, dict[tuple, int]]:
    """The image columns: ids as written, file names, widths and heights (int32, -1 where unknown), and
    the index from `id_key` to position. Entries without a usable id are skipped with a note; a
    duplicated id, or no image at all, is a FastMaskError."""
    ids, file_names, widths, heights, index = [], [], [], [], {}
    malformed = 0
    for entry in entries:
        key = id_key(entry.get("id", [])) if isinstance(entry, dict) else None
        if key is None:
            malformed += 1
            continue
        if key in index:
            other = file_names[index[key]]
            raise FastMaskError(f"{what} {path.name}: image id {entry['id']!r} is used by two images "
                                f"({other} and {entry.get('file_name')}): results could not be tied to files")
        index[key] = len(ids)
        ids.append(entry["id"])
        name = entry.get("file_name")
        file_names.append(name if isinstance(name, str) and name else None)
        width, height = pixels(entry.get("width")), pixels(entry.get("height"))
        sized = width > 0 and height > 0
        widths.append(width if sized else -1)
        heights.append(height if sized else -1)
    if malformed:
        notes.append(f"{malformed} image entries without a usable 'id' (a JSON number or string) were skipped")
    if not ids:
        raise FastMaskError(f"{what} {path} lists no images")
    return ids, file_names, np.asarray(widths, dtype=np.int32), np.asarray(heights, dtype=np.int32), index


def _annotation_objects(anns: list, path: Path, what: str, skipped: Counter[str]) -> list[dict]:
    """The annotations that are JSON objects (the others counted); a panoptic file is a FastMaskError."""
    if any(type(a) is dict and "segments_info" in a for a in anns):
        raise FastMaskError(f"{what} {path} is a COCO panoptic file (annotations with 'segments_info', masks in PNG "
                            "files): give COCO instances, with each object's 'segmentation' (panopticapi's "
                            "panoptic2detection_coco_format.py converts one)")
    if not all(type(a) is dict for a in anns):
        skipped[SKIPPED["object"]] += sum(1 for a in anns if type(a) is not dict)
        anns = [a for a in anns if type(a) is dict]
    return anns


def _annotations(anns: list[dict], index: dict[tuple, int], widths: np.ndarray, heights: np.ndarray, path: Path,
                 what: str, notes: list[str], skipped: Counter[str]) -> tuple[dict[str, np.ndarray], list]:
    """The flat arrays of the usable annotations (`flat_annotations`) and their ids as written.

    Column by column: COCO has a million annotations, and comprehensions cost a fraction of a loop body."""
    image = _image_indices([a.get("image_id", []) for a in anns], index)
    crowd = [a.get("iscrowd") or 0 for a in anns]  # missing or null: not a crowd, as pycocotools reads it
    category = [c if type(c) is int else -1 for c in (a.get("category_id") for a in anns)]
    odd = next((n for n, c in enumerate(crowd) if c not in (0, 1) or type(c) not in (int, float, bool)), None)
    if odd is not None:
        raise FastMaskError(f"{what} {path.name}: annotation {anns[odd].get('id')!r} has iscrowd {crowd[odd]!r}: it must be 0 or 1")
    segs, kind, emptied, flat = _segmentations(anns, path, what)
    rle = _read_rles(segs, kind, image, widths, heights, skipped)
    for code in (_EMPTY, _MALFORMED):
        count = sum(1 for n, k in enumerate(kind) if k == code and image[n] is not None)
        if count:
            skipped[SKIPPED[code]] += count
    unknown = sum(1 for i in image if i is None)
    if unknown:
        skipped[SKIPPED["image"]] += unknown
    keep = [i is not None and k >= 0 for i, k in zip(image, kind)]
    flat_kept = sum(1 for n in flat if keep[n])
    if not all(keep):
        anns, image, crowd, category, segs, kind, rle, emptied = (
            list(compress(column, keep)) for column in (anns, image, crowd, category, segs, kind, rle, emptied))
    boxes, areas = _boxes([a.get("bbox") for a in anns]), _areas([a.get("area") for a in anns])
    ann_ids = [a.get("id") for a in anns]
    rows = [n for n, k in enumerate(kind) if k == POLYGONS]
    polygons = [polygon_arrays([(n, segs[n]) for n in rows[start : start + CHUNK]]) for start in range(0, len(rows), CHUNK)]
    del segs, rows
    kind_np = np.asarray(kind, dtype=np.int8)
    rings_of = np.bincount(np.concatenate([o for _, _, o in polygons]) if polygons else np.zeros(0, np.int64),
                           minlength=len(kind)).astype(np.int64)
    usable = _usable(kind_np, rings_of, boxes, np.asarray(emptied, dtype=bool), skipped)
    if flat_kept:
        notes.append(f"{flat_kept} polygons written as one flat list [x1, y1, x2, y2, ...] instead of a list of "
                     "rings: read as one ring each")
    boxes_only = int((np.asarray(emptied, dtype=bool) & usable).sum())
    if boxes_only:
        notes.append(f"{boxes_only} annotations with an empty 'segmentation' ([] or {{}}, as CVAT and coco-annotator "
                     "write box-only objects) read as boxes only: evaluated as boxes; mask AR needs masks")
    arrays = flat_annotations(kind, image, [bool(c) for c in crowd], category, boxes, areas, rle, polygons, rings_of, usable)
    kept_ids = [a for a, k in zip(ann_ids, usable) if k]
    empty = _empty_polygons(arrays, widths, heights)
    if empty.any():
        skipped[SKIPPED["empty mask"]] += int(empty.sum())
        arrays = take_annotations(arrays, np.flatnonzero(~empty))
        kept_ids = [a for a, e in zip(kept_ids, empty) if not e]
    return arrays, kept_ids


def _segmentations(anns: list[dict], path: Path, what: str) -> tuple[list, list[int], list[bool], list[int]]:
    """Each annotation's segmentation (a flat polygon wrapped as one ring), its kind (BOX_ONLY, POLYGONS,
    RLE, or a negative skip code), whether it was written empty ([] or {}), and which were flat polygons.
    A mask array (rows of 0/1) is a FastMaskError: read as rings, it would score without a word."""
    segs = [a.get("segmentation") for a in anns]
    flat = [n for n, s in enumerate(segs) if type(s) is list and s and type(s[0]) in (int, float)]
    for n in flat:  # one polygon written as [x1, y1, x2, y2, ...] instead of a list of rings (some exporters)
        segs[n] = [segs[n]]
    array = next((n for n, s in enumerate(segs) if type(s) is list and len(s) >= MASK_ROW and is_mask_array(s)), None)
    if array is not None:  # rows of pixels would be read as polygon rings with vertices at 0 and 1
        raise FastMaskError(f"{what} {path.name}: annotation {anns[array].get('id')!r} has a mask array (rows of 0/1), "
                            "not polygons: write masks as RLE (pycocotools.mask.encode) or polygons")
    # [] and {} are how CVAT and coco-annotator write a box-only object: read as one, when its box is usable
    emptied = [type(s) in (list, dict) and not s for s in segs]
    kind = [_SEGMENTATION_KIND.get(type(s), _MALFORMED) if s else (BOX_ONLY if s is None or e else _EMPTY)
            for s, e in zip(segs, emptied)]
    return segs, kind, emptied, flat


def _read_rles(segs: list, kind: list[int], image: list[int | None], widths: np.ndarray, heights: np.ndarray,
               skipped: Counter[str]) -> list[bytes]:
    """Each RLE annotation's compressed counts (b"" for the others); one that cannot be used has its kind
    set to _BAD_RLE and its reason counted."""
    rle: list[bytes] = [b""] * len(segs)
    for n in [n for n, k in enumerate(kind) if k == RLE]:  # crowds mostly, few
        if image[n] is not None:
            rle[n], reason = annotation_rle(segs[n], image[n], widths, heights)
            if reason:
                skipped[reason] += 1
                kind[n] = _BAD_RLE
    return rle


def _usable(kind: np.ndarray, rings_of: np.ndarray, boxes: np.ndarray, emptied: np.ndarray,
            skipped: Counter[str]) -> np.ndarray:
    """Which annotations have a mask or a box to be scored by: polygons with a usable ring, box-only
    objects with a box of some size. The others are counted by reason."""
    degenerate = (kind == POLYGONS) & (rings_of == 0)
    box_only_unusable = (kind == BOX_ONLY) & np.isnan(boxes[:, 0])
    for reason, count in (("degenerate", degenerate.sum()), ("emptied", (box_only_unusable & emptied).sum()),
                          ("no size", (box_only_unusable & ~emptied).sum())):
        if count:
            skipped[SKIPPED[reason]] += int(count)
    return ~degenerate & ~box_only_unusable


def _empty_polygons(arrays: dict[str, np.ndarray], widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Polygon annotations that rasterise to no pixel of their image (wholly outside it, or thinner than a
    pixel), where the image's size is known. Only those that might be are rasterised (pycocotools)."""
    empty = np.zeros(len(arrays["image"]), dtype=bool)
    rows = np.flatnonzero(arrays["kind"] == POLYGONS)
    if not len(rows):
        return empty
    coords, ring_offsets, rings = arrays["coords"], arrays["ring_offsets"], arrays["rings"]
    first_point = ring_offsets[rings[rows]] // 2  # an annotation's rings are contiguous: its points too
    x, y = coords[0::2], coords[1::2]
    bounds = [np.minimum.reduceat(x, first_point), np.maximum.reduceat(x, first_point),
              np.minimum.reduceat(y, first_point), np.maximum.reduceat(y, first_point)]
    # reduceat runs to the next start: the last annotation's run ends where the points end, as it should
    x0, x1, y0, y1 = bounds
    image = arrays["image"][rows]
    width, height = widths[image], heights[image]
    suspect = (width > 0) & ((x1 <= 0) | (y1 <= 0) | (x0 >= width) | (y0 >= height) | (x1 - x0 < 2) | (y1 - y0 < 2))
    for k in np.flatnonzero(suspect):
        a = rows[k]
        first, last = int(rings[a]), int(rings[a + 1])
        polygon = [coords[ring_offsets[r] : ring_offsets[r + 1]].tolist() for r in range(first, last)]
        rle = mask_utils.merge(mask_utils.frPyObjects(polygon, int(height[k]), int(width[k])))
        empty[a] = mask_utils.area(rle) == 0
    return empty

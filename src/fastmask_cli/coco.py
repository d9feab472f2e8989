"""One reading of COCO ground truth and results, checked and normalised once, for every command.

`read_ground_truth` is what `eval`, `propose --ann`, `train` and validation read ground truth
through. It keeps what pycocotools can score correctly and says, in one list of notes, what it
skipped, derived or renumbered; what no reading can make right is refused in one line
(`FastMaskError`). Annotations are held in flat arrays (all polygon coordinates in one float64
array with offsets per ring and per annotation, RLE strings in one byte buffer), not in per-object
Python lists: DataLoader workers then share them without copy-on-write growth (detectron2 serialises
its dataset for the same reason).

`GroundTruth.to_coco` hands pycocotools a clean copy with its own integer ids (image ids of any JSON
scalar type, as written, stay ours: `GroundTruth.index`), and `check_results` refuses results that
COCOeval would score silently but wrongly. Rules, per kind (README, "Bad input"):

- image ids: any JSON scalar, kept as written (1 and 1.0 are one id, "1" another); duplicates refused;
- annotation ids: duplicated, missing or not positive integers are renumbered with a note (pycocotools
  keys annotations by id, and counts a match to id 0 as no match);
- `area`, `bbox` missing or unusable: derived from the mask (exactly as COCO does) with a note;
- degenerate polygon rings (< 3 points, odd length, not numbers, not finite, far outside any image,
  all on one line), masks covering no pixel of their image, RLE of the wrong size or that does not
  decode, boxes of no size without a mask: skipped and counted;
- annotations on image ids that no image has: ignored and counted.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import chain, compress
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .errors import FastMaskError
from .files import no_gc, read_json, release_memory

_CHUNK = 1 << 16  # annotations whose coordinates are gathered in Python before becoming one array


def id_key(value: Any) -> tuple[str, Any] | None:
    """A dictionary key under which ids are equal exactly when JSON says so: 1 and 1.0 are one number,
    "1" is a string and `true` a boolean (Python would confuse True with 1). None for a non-scalar."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("number", value)
    if isinstance(value, float):
        return ("number", value) if math.isfinite(value) else None
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null", None)
    return None


def _number(value: Any) -> bool:
    """A finite JSON number (not a boolean, not a string), that a float can hold."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and abs(value) < 1e300


def _pixels(value: Any) -> int:
    """A width or height: a positive integer, or a float that is one (640.0); else -1 (unknown)."""
    if _number(value) and value > 0 and float(value).is_integer():
        return int(value)
    return -1


class FlatStrings:
    """A list of optional strings in one byte buffer with offsets: a million file names as two arrays,
    not a million Python objects whose reference counts would copy their pages into every worker."""

    def __init__(self, strings: list[str | None]) -> None:
        encoded = [s.encode("utf-8") if s is not None else b"" for s in strings]
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self.offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
        self.present = np.fromiter((s is not None for s in strings), dtype=bool, count=len(strings))

    def __len__(self) -> int:
        return len(self.present)

    def __getitem__(self, i: int) -> str | None:
        if not self.present[i]:
            return None
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str | None]:
        return (self[i] for i in range(len(self)))


@dataclass
class GroundTruth:
    """COCO ground truth, checked. Images keep their order in the file; annotations are grouped by image.

    Images: `ids` (as written), `file_names` (None where absent), `widths`/`heights` (int32, -1 where
    unknown). Annotations, A of them, in flat arrays: `image` (index into the images), `crowd`,
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
        if kind == 2:
            return {"size": [int(self.heights[self.image[a]]), int(self.widths[self.image[a]])],
                    "counts": self.rle_counts(a).encode("ascii")}
        if kind == 0:
            return None
        frame = frame or self.frame(int(self.image[a]))
        if frame is None:
            raise FastMaskError(f"image {self.ids[self.image[a]]!r} of {self.path.name} has no usable 'width' and 'height' "
                                "(positive integers): they are needed to rasterise its polygons")
        rings = [ring.astype(np.float64).tolist() for ring in self.polygons(a)]
        return mask_utils.merge(mask_utils.frPyObjects(rings, frame[1], frame[0]))

    def to_coco(self, masks: bool = True) -> COCO:
        """A pycocotools COCO index of this ground truth: image i has id i + 1, annotations ids 1..A,
        one category. Polygons go in with the coordinates as written (the clean copy).
        With `masks` False, segmentations are left out (box evaluation needs none)."""
        images = []
        for i, image_id in enumerate(self.ids):
            entry: dict[str, Any] = {"id": i + 1, "file_name": self.file_names[i] or str(image_id)}
            if self.frame(i):
                entry |= {"width": int(self.widths[i]), "height": int(self.heights[i])}
            images.append(entry)
        annotations = []
        for a in range(len(self.image)):
            i = int(self.image[a])
            entry = {"id": a + 1, "image_id": i + 1, "category_id": 1, "iscrowd": int(self.crowd[a])}
            rle = None
            if self.kind[a] == 0 and np.isnan(self.area[a]):
                raise FastMaskError(f"{self.path.name}: an annotation of image {self.ids[i]!r} has a box but neither a mask "
                                    "nor an 'area' (the small/medium/large split needs its area)")
            if np.isnan(self.area[a]) or np.isnan(self.bbox[a]).any():
                rle = self.mask_rle(a)
            entry["area"] = float(mask_utils.area(rle)) if np.isnan(self.area[a]) else float(self.area[a])
            bbox = mask_utils.toBbox(rle) if np.isnan(self.bbox[a]).any() else self.bbox[a]
            entry["bbox"] = [float(v) for v in bbox]
            if masks and self.kind[a] == 1:
                if self.frame(i) is None:
                    self.mask_rle(a)  # raises: the polygons cannot be rasterised
                entry["segmentation"] = [ring.astype(np.float64).tolist() for ring in self.polygons(a)]
            elif masks and self.kind[a] == 2:
                entry["segmentation"] = {"size": [int(self.heights[i]), int(self.widths[i])], "counts": self.rle_counts(a)}
            annotations.append(entry)
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it indexes
            coco.createIndex()
        return coco


def _polygon_arrays(pending: list[tuple[int, list]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coords float64, ring lengths, ring owners) of the usable rings of `pending` (annotation, rings)
    polygons, checked at once: >= 3 points, even length, finite numbers, non-zero area."""
    owners, flat, lengths = [], [], []
    for a, rings in pending:
        for ring in rings:
            if type(ring) is list and len(ring) >= 6 and len(ring) % 2 == 0:
                owners.append(a)
                lengths.append(len(ring))
                flat.extend(ring)
    coords, good = _ring_coordinates(flat, lengths)
    del flat
    lengths_np = np.asarray(lengths, dtype=np.int64)
    return coords[np.repeat(good, lengths_np)], lengths_np[good], np.asarray(owners, dtype=np.int64)[good]


_SEGMENTATION_KIND = {list: 1, dict: 2}  # a truthy segmentation of another type is malformed (-2)


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
        boxes = np.array([b if all(_number(v) for v in b) else nan for b in shaped], dtype=np.float64).reshape(len(raw), 4)
    with np.errstate(invalid="ignore"):
        boxes[~(np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0))] = math.nan
    return boxes


def _areas(raw: list) -> np.ndarray:
    """(A,) float64 areas; NaN where missing, not a finite number, or negative."""
    areas = np.array([v if _number(v) else math.nan for v in raw], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        areas[~(areas >= 0) | ~np.isfinite(areas)] = math.nan
    return areas


def _flat_annotations(kind: list, image: list, crowd: list, boxes: np.ndarray, areas: np.ndarray, rle: list,
                      polygons: list[tuple[np.ndarray, np.ndarray, np.ndarray]], counts: np.ndarray,
                      usable: np.ndarray) -> dict[str, np.ndarray]:
    """The annotations where `usable`, in flat arrays (see `GroundTruth`); `counts`: usable rings per annotation."""
    keep = np.flatnonzero(usable)
    ring_lengths = np.concatenate([n for _, n, _ in polygons]) if polygons else np.zeros(0, np.int64)
    rle_lengths = np.fromiter(map(len, rle), dtype=np.int64, count=len(rle))[keep]
    return {
        "image": np.asarray(image, dtype=np.int32)[keep],
        "crowd": np.asarray(crowd, dtype=bool)[keep],
        "area": areas[keep],
        "bbox": boxes[keep],
        "kind": np.asarray(kind, dtype=np.int8)[keep],
        "rings": np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64),
        "ring_offsets": np.concatenate([[0], np.cumsum(ring_lengths)]).astype(np.int64),
        "coords": np.concatenate([c for c, _, _ in polygons]) if polygons else np.zeros(0),
        "rle": np.concatenate([[0], np.cumsum(rle_lengths)]).astype(np.int64),
        "rle_bytes": np.frombuffer(b"".join(rle[k] for k in keep), dtype=np.uint8).copy(),
    }


MAX_COORDINATE = 1e5  # px from the origin: a ring beyond is no object of any image (and exhausts pycocotools' rasteriser)


def _ring_coordinates(flat: list, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(all coordinates as float64, which rings are usable): numbers (not strings or booleans), finite,
    within MAX_COORDINATE, and not all on one line (a ring of no area in any sense; a self-crossing
    ring whose signed areas cancel is kept: it covers pixels)."""
    if not lengths:
        return np.zeros(0), np.zeros(0, dtype=bool)
    lengths_np = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_np)[:-1]])
    numeric = np.ones(len(lengths), dtype=bool)
    coords = None
    if set(map(type, flat)) <= {int, float}:
        with contextlib.suppress(OverflowError):  # an int too large for a float: found ring by ring below
            coords = np.asarray(flat, dtype=np.float64)
    if coords is None:  # something other than numbers in some ring: find which, ring by ring
        coords = np.zeros(len(flat))
        for r, (start, n) in enumerate(zip(starts, lengths)):
            ring = flat[start : start + n]
            if all(_number(v) for v in ring):
                coords[start : start + n] = ring
            else:
                numeric[r] = False
    with np.errstate(invalid="ignore"):
        bounded = np.logical_and.reduceat(np.isfinite(coords) & (np.abs(coords) <= MAX_COORDINATE), starts) & numeric
    x, y = coords[0::2], coords[1::2]
    point_starts, points = starts // 2, lengths_np // 2
    following = np.arange(1, len(x) + 1)  # each point's next, wrapping to its ring's first point
    following[np.cumsum(points) - 1] = point_starts
    x0, y0 = np.repeat(x[point_starts], points), np.repeat(y[point_starts], points)
    with np.errstate(invalid="ignore", over="ignore"):
        cross = (x - x0) * (y[following] - y0) - (x[following] - x0) * (y - y0)
        spread = np.maximum.reduceat(np.where(np.isfinite(cross), np.abs(cross), 0.0), point_starts)
    return coords, bounded & (spread > 0)


def read_ground_truth(path: Path, what: str = "ground truth", annotations: bool = True) -> GroundTruth:
    """Read and check a COCO instances file (`what` names it in messages). Raises FastMaskError in one
    line for what cannot be read right: not COCO, duplicated image ids, an unusable `iscrowd`.
    With `annotations` False, an image list alone will do (COCO's image_info files for test sets).
    COCO train2017's size (118k images, 860k polygons) reads in about 10 s (README, "Training at COCO scale")."""
    with no_gc():
        truth = _read_ground_truth(Path(path), what, annotations)
    release_memory()  # the parsed JSON is garbage now: give its pages back before workers fork
    return truth


def _read_ground_truth(path: Path, what: str, need_annotations: bool) -> GroundTruth:
    data = read_json(path, what)
    if isinstance(data, dict) and not need_annotations and not isinstance(data.get("annotations"), list):
        data["annotations"] = []
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise FastMaskError(f"{what} {path} is not COCO (needs 'images' and 'annotations' lists)")
    notes: list[str] = []
    skipped: Counter[str] = Counter()

    ids, file_names, widths, heights, index = [], [], [], [], {}
    malformed = 0
    for entry in data["images"]:
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
        width, height = _pixels(entry.get("width")), _pixels(entry.get("height"))
        sized = width > 0 and height > 0
        widths.append(width if sized else -1)
        heights.append(height if sized else -1)
    if malformed:
        notes.append(f"{malformed} image entries without a usable 'id' (a JSON number or string) were skipped")
    if not ids:
        raise FastMaskError(f"{what} {path} lists no images")
    widths_np, heights_np = np.asarray(widths, dtype=np.int32), np.asarray(heights, dtype=np.int32)

    # Column by column: COCO has a million annotations, and comprehensions cost a fraction of a loop body.
    anns = data["annotations"]
    del data
    if not all(type(a) is dict for a in anns):
        skipped["not a JSON object"] += sum(1 for a in anns if type(a) is not dict)
        anns = [a for a in anns if type(a) is dict]
    image = _image_indices([a.get("image_id", []) for a in anns], index)
    crowd = [a.get("iscrowd") or 0 for a in anns]  # missing or null: not a crowd, as pycocotools reads it
    odd = next((n for n, c in enumerate(crowd) if c not in (0, 1) or type(c) not in (int, float, bool)), None)
    if odd is not None:
        raise FastMaskError(f"{what} {path.name}: annotation {anns[odd].get('id')!r} has iscrowd {crowd[odd]!r}: it must be 0 or 1")
    segs = [a.get("segmentation") for a in anns]
    kind = [_SEGMENTATION_KIND.get(type(s), -2) if s else (0 if s is None else -1) for s in segs]
    rle: list[bytes] = [b""] * len(anns)
    for n in [n for n, k in enumerate(kind) if k == 2]:  # RLE: crowds mostly, few
        if image[n] is not None:
            rle[n], reason = _rle_counts(segs[n], image[n], widths_np, heights_np)
            if reason:
                skipped[reason] += 1
                kind[n] = -3
    for code, reason in ((-1, "empty segmentation"), (-2, "malformed segmentation")):
        count = sum(1 for n, k in enumerate(kind) if k == code and image[n] is not None)
        if count:
            skipped[reason] += count
    unknown = sum(1 for i in image if i is None)
    if unknown:
        skipped["on an image id that no image has"] += unknown
    keep = [i is not None and k >= 0 for i, k in zip(image, kind)]
    if not all(keep):
        anns, image, crowd, segs, kind, rle = (list(compress(column, keep)) for column in (anns, image, crowd, segs, kind, rle))
    box_raw = [a.get("bbox") for a in anns]
    area_raw = [a.get("area") for a in anns]
    ann_ids = [a.get("id") for a in anns]
    del anns
    polygons = []
    rows = [n for n, k in enumerate(kind) if k == 1]
    for start in range(0, len(rows), _CHUNK):
        polygons.append(_polygon_arrays([(n, segs[n]) for n in rows[start : start + _CHUNK]]))
    del segs, rows
    crowd = [bool(c) for c in crowd]

    boxes, areas = _boxes(box_raw), _areas(area_raw)
    del box_raw, area_raw
    kind_np = np.asarray(kind, dtype=np.int8)
    rings_of = np.bincount(np.concatenate([o for _, _, o in polygons]) if polygons else np.zeros(0, np.int64),
                           minlength=len(kind)).astype(np.int64)
    degenerate = (kind_np == 1) & (rings_of == 0)
    box_only_unusable = (kind_np == 0) & np.isnan(boxes[:, 0])
    usable = ~degenerate & ~box_only_unusable
    if degenerate.any():
        skipped["degenerate polygon (fewer than 3 points, odd length, not numbers, not finite, far outside "
                "any image, or on one line)"] += int(degenerate.sum())
    if box_only_unusable.any():
        skipped["box of no size and no mask"] += int(box_only_unusable.sum())
    arrays = _flat_annotations(kind, image, crowd, boxes, areas, rle, polygons, rings_of, usable)
    del kind, image, crowd, rle, polygons
    kept_ids = [a for a, k in zip(ann_ids, usable) if k]
    del ann_ids
    empty = _empty_polygons(arrays, widths_np, heights_np)
    if empty.any():
        skipped["empty mask"] += int(empty.sum())
        arrays = _without(arrays, np.flatnonzero(~empty))
        kept_ids = [a for a, e in zip(kept_ids, empty) if not e]

    order = np.argsort(arrays["image"], kind="stable")
    if (order != np.arange(len(order))).any():
        arrays = _without(arrays, order)
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
    return GroundTruth(path, ids, FlatStrings(file_names), widths_np, heights_np, image_anns=image_anns, notes=notes,
                       skipped=dict(skipped), index=index, **arrays)


def _without(arrays: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The annotations `keep` (indices, in that order) of flat `arrays`, rings and RLE bytes regathered."""
    out = {name: arrays[name][keep] for name in ("image", "crowd", "area", "bbox", "kind")}
    rings, ring_offsets, coords = arrays["rings"], arrays["ring_offsets"], arrays["coords"]
    ring_index = _gather_ranges(rings, keep)
    point_index = _gather_ranges(ring_offsets, ring_index)
    out["rings"] = np.concatenate([[0], np.cumsum(rings[keep + 1] - rings[keep])]).astype(np.int64)
    out["ring_offsets"] = np.concatenate([[0], np.cumsum(ring_offsets[ring_index + 1] - ring_offsets[ring_index])]).astype(np.int64)
    out["coords"] = coords[point_index]
    rle = arrays["rle"]
    out["rle"] = np.concatenate([[0], np.cumsum(rle[keep + 1] - rle[keep])]).astype(np.int64)
    out["rle_bytes"] = arrays["rle_bytes"][_gather_ranges(rle, keep)]
    return out


def _gather_ranges(offsets: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Concatenated arange(offsets[c], offsets[c + 1]) for each c in `chosen`."""
    starts, ends = offsets[chosen], offsets[chosen + 1]
    lengths = ends - starts
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + shift


def _rle_counts(seg: dict, i: int, widths: np.ndarray, heights: np.ndarray) -> tuple[bytes, str | None]:
    """Compressed counts of an RLE segmentation, or why it is skipped. Where the image entry gives no
    size, a good RLE's size becomes the image's."""
    size, counts = seg.get("size"), seg.get("counts")
    size = [_pixels(v) for v in size] if isinstance(size, list) and len(size) == 2 else [-1, -1]
    if min(size) <= 0:
        return b"", "malformed RLE (its 'size' is not [height, width])"
    if widths[i] > 0 and size != [int(heights[i]), int(widths[i])]:
        return b"", "RLE that does not decode to its image's size"
    if isinstance(counts, str):
        encoded = counts.encode("ascii") if counts.isascii() else b""
        valid, area = check_rle_strings([encoded], np.array([size[0] * size[1]]))
        if not valid[0]:
            return b"", "RLE that does not decode to its image's size"
    elif isinstance(counts, list) and counts and all(type(v) is int and v >= 0 for v in counts):
        encoded, area = _compressed(counts, size), [sum(counts[1::2])]
        if encoded is None:
            return b"", "RLE that does not decode to its image's size"
    else:
        return b"", "malformed RLE (its 'counts' are neither a string nor non-negative integers)"
    if area[0] == 0:
        return b"", "empty mask"
    if widths[i] <= 0:
        heights[i], widths[i] = size
    return encoded, None


def _compressed(counts: list, size: list[int]) -> bytes | None:
    """Uncompressed RLE run lengths as pycocotools' compressed string, or None where they are not
    non-negative integers that add up to exactly size[0] x size[1] pixels."""
    if not (counts and all(type(v) is int and v >= 0 for v in counts) and sum(counts) == size[0] * size[1]):
        return None
    return mask_utils.frPyObjects({"size": size, "counts": counts}, *size)["counts"]


def _empty_polygons(arrays: dict[str, np.ndarray], widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Polygon annotations that rasterise to no pixel of their image (wholly outside it, or thinner than a
    pixel), where the image's size is known. Only those that might be are rasterised (pycocotools)."""
    empty = np.zeros(len(arrays["image"]), dtype=bool)
    rows = np.flatnonzero(arrays["kind"] == 1)
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


def decode_rle_strings(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of compressed RLE strings (pycocotools' `rleFrString` format), all at once.

    Returns (counts, offsets, well_formed): string s's run lengths are `counts[offsets[s]:offsets[s + 1]]`
    (int64, possibly negative when the string is garbage); `well_formed[s]` is False where a character is
    outside the alphabet ('0'..'o'), the string ends inside a value, or a value is too long to be a
    count. Source: pycocotools `maskApi.c`: 5 bits per character, 0x20 continues, 0x10 signs the last
    character, and counts from the third on are stored as the difference to the count two before."""
    n = len(strings)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)
    char = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(n), lengths)
    well_formed = lengths > 0
    bad_char = (char < 0) | (char > 63)
    np.logical_and.at(well_formed, owner[bad_char], False)
    char = np.where(bad_char, 0, char)
    last = np.zeros(len(char), dtype=bool)
    last[ends[lengths > 0] - 1] = True
    value_end = ((char & 0x20) == 0) | last
    well_formed[owner[last & ((char & 0x20) != 0)]] = False  # the string stops inside a value
    value_start = np.flatnonzero(np.concatenate([[True], value_end[:-1]])) if len(char) else np.zeros(0, np.int64)
    value_of_char = np.cumsum(np.concatenate([[0], value_end[:-1]])) if len(char) else np.zeros(0, np.int64)
    k = np.arange(len(char)) - value_start[value_of_char]
    too_long = k > 6  # 35 bits: more than any image has pixels
    np.logical_and.at(well_formed, owner[too_long], False)
    k = np.minimum(k, 6)
    chunk_value = (char & 0x1F) << (5 * k)
    values = np.add.reduceat(chunk_value, value_start) if len(char) else np.zeros(0, np.int64)
    final = np.flatnonzero(value_end)
    signed = (char[final] & 0x10) != 0
    values = values - np.where(signed, np.left_shift(1, 5 * (k[final] + 1)), 0)
    # undo the difference coding: counts[j] = values[j] + counts[j - 2] for j > 2 (one chain per parity)
    value_owner = owner[value_start] if len(char) else np.zeros(0, np.int64)
    per_string = np.bincount(value_owner, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(per_string)]).astype(np.int64)
    j = np.arange(len(values)) - offsets[value_owner]
    chain = value_owner * 3 + np.where(j == 0, 0, np.where(j % 2 == 1, 1, 2))
    order = np.argsort(chain, kind="stable")
    sorted_values = values[order]
    sorted_chain = chain[order]
    total = np.cumsum(sorted_values)
    chain_start = np.flatnonzero(np.concatenate([[True], sorted_chain[1:] != sorted_chain[:-1]])) if len(values) else np.zeros(0, np.int64)
    before = np.repeat(np.concatenate([[0], total])[chain_start], np.diff(np.concatenate([chain_start, [len(values)]])))
    counts = np.empty_like(values)
    counts[order] = total - before
    return counts, offsets, well_formed


def check_rle_strings(strings: list[bytes], pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valid, area) per compressed RLE string: valid where it decodes, as pycocotools would, to exactly
    `pixels` (height x width) pixels with no negative run; area is the number of foreground pixels."""
    counts, offsets, valid = decode_rle_strings(strings)
    n = len(strings)
    owner = np.repeat(np.arange(n), np.diff(offsets))
    negative = np.zeros(n, dtype=bool)
    np.logical_or.at(negative, owner[counts < 0], True)
    total = np.bincount(owner, weights=counts, minlength=n)  # float64: exact below 2**53
    j = np.arange(len(counts)) - offsets[owner]
    area = np.bincount(owner[j % 2 == 1], weights=counts[j % 2 == 1], minlength=n).astype(np.int64)
    return valid & ~negative & (total == np.asarray(pixels)), area


def check_results(results: list, gt: GroundTruth, allow_missing: bool = False,
                  notes: list[str] | None = None) -> list[dict]:
    """COCO results made ready for `gt.to_coco()`'s index, in place (a copy of millions would double
    memory): image ids become pycocotools' (index + 1), masks compressed RLE with str counts, one category.

    Refused in one line naming the first offending result (FastMaskError): an entry that is not an
    object, a missing or unknown `image_id` (unknown ones are dropped with a note under `allow_missing`),
    a score that is not a finite real number (booleans included), neither `segmentation` nor `bbox`,
    a box that is not four finite numbers of non-negative size, an RLE that does not decode to its
    image's size (pycocotools would score it as garbage, or crash). Polygon rings that are degenerate
    are dropped (a result of only such rings is an empty mask), as in the ground truth."""
    notes = notes if notes is not None else []
    unknown: dict[tuple, int] = {}
    strings: list[tuple[int, bytes, int]] = []
    kept = []
    for n, r in enumerate(results):
        if not isinstance(r, dict):
            raise FastMaskError(f"result {n} is a JSON {type(r).__name__}, not an object")
        if "image_id" not in r:
            raise FastMaskError(f"result {n} has no 'image_id'")
        i = gt.find(r["image_id"])
        if i is None:
            if not allow_missing:
                raise FastMaskError(f"result {n} is on image id {r['image_id']!r}, which is not in the ground truth "
                                    "(use --allow-missing to evaluate on the images they share)")
            key = id_key(r["image_id"]) or ("other", repr(r["image_id"]))
            unknown[key] = unknown.get(key, 0) + 1
            continue
        score = r.get("score")
        if "score" not in r:
            raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has no 'score': proposals must be ranked")
        if not _number(score):
            raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has score {score!r}: "
                                "proposals must be ranked by finite numbers")
        if r.get("segmentation", []) is None:  # null: a box result, as if the key were absent
            del r["segmentation"]
        if "segmentation" in r:
            r.pop("bbox", None)  # a mask is boxed by its tight box (and pycocotools reads every box if the first has one)
            r["segmentation"] = _result_mask(r["segmentation"], gt, i, n, r["image_id"])
            if isinstance(r["segmentation"]["counts"], bytes):  # compressed by the caller's tool: check it decodes
                size = r["segmentation"]["size"]
                strings.append((len(kept), r["segmentation"]["counts"], size[0] * size[1]))
                r["segmentation"]["counts"] = r["segmentation"]["counts"].decode("ascii")
        elif "bbox" in r:
            box = r["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box) and box[2] >= 0 and box[3] >= 0):
                raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has bbox {box!r}: "
                                    "it must be [x, y, width, height], finite, of non-negative size")
        else:
            raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has neither 'segmentation' nor 'bbox'")
        r["image_id"] = i + 1
        r["category_id"] = 1
        r["_n"] = n
        kept.append(r)
    for start in range(0, len(strings), 100_000):  # bounded memory, one vectorised pass per block
        block = strings[start : start + 100_000]
        valid, _ = check_rle_strings([s for _, s, _ in block], np.asarray([p for _, _, p in block]))
        if not valid.all():
            first = kept[block[int(np.flatnonzero(~valid)[0])][0]]
            shown = gt.ids[first["image_id"] - 1]
            raise FastMaskError(f"result {first['_n']} (image_id {shown!r}) has RLE counts that do not decode to a "
                                f"{first['segmentation']['size'][1]}x{first['segmentation']['size'][0]} mask "
                                "(written as str(bytes)? counts must be the string itself)")
    for r in kept:
        del r["_n"]
    if unknown:
        notes.append(f"ignored {sum(unknown.values())} results on {len(unknown)} image ids not in the ground truth")
    return kept


def _result_mask(seg: Any, gt: GroundTruth, i: int, n: int, image_id: Any) -> dict:
    """A result's mask as {'size', 'counts'}: counts bytes where the result wrote a compressed string
    (to be checked), str where we encoded it here."""
    frame = gt.frame(i)
    where = f"result {n} (image_id {image_id!r})"
    if isinstance(seg, list):
        if frame is None:
            raise FastMaskError(f"{where} is a polygon, but the ground truth gives no width and height for its image")
        coords, lengths, _ = _polygon_arrays([(0, seg)])
        usable = [ring.tolist() for ring in np.split(coords, np.cumsum(lengths)[:-1])] if len(lengths) else []
        if usable:
            rle = mask_utils.merge(mask_utils.frPyObjects(usable, frame[1], frame[0]))
        else:  # nothing but degenerate rings: an empty mask
            rle = mask_utils.encode(np.zeros((frame[1], frame[0], 1), dtype=np.uint8, order="F"))[0]
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    if not isinstance(seg, dict):
        raise FastMaskError(f"{where} has a segmentation that is neither polygons nor RLE")
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and min(_pixels(v) for v in size) > 0):
        raise FastMaskError(f"{where} has an RLE 'size' of {size!r}, not [height, width]")
    size = [_pixels(v) for v in size]
    if frame is not None and size != [frame[1], frame[0]]:
        raise FastMaskError(f"{where} has a {size[1]}x{size[0]} RLE mask (width x height), but image {image_id!r} is "
                            f"{frame[0]}x{frame[1]} in the ground truth")
    if isinstance(counts, str):
        if not counts.isascii():
            raise FastMaskError(f"{where} has RLE counts that are not a pycocotools string")
        return {"size": size, "counts": counts.encode("ascii")}
    encoded = _compressed(counts, size) if isinstance(counts, list) else None
    if encoded is not None:
        return {"size": size, "counts": encoded.decode("ascii")}
    raise FastMaskError(f"{where} has uncompressed RLE counts that do not add up to its {size[1]}x{size[0]} mask")

"""Results checked against ground truth, before pycocotools scores them: what COCOeval would score
silently but wrongly is refused in one line (docs/data.md, "Bad input")."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import FastMaskError
from .ground_truth import GroundTruth
from .ids import id_key, is_number, pixels
from .polygons import polygon_arrays
from .rle import check_rle_strings, compressed, encode_mask_array, is_mask_array


def _no_mask(segmentation: Any) -> bool:
    """What a box-only result writes where a mask would be: null, or an empty list or object (as ground
    truth reads box-only objects). Never an empty mask: that would replace the result's own box by an empty one."""
    return segmentation is None or (type(segmentation) in (list, dict) and not segmentation)


def check_results(results: list, gt: GroundTruth, allow_missing: bool = False,
                  notes: list[str] | None = None) -> list[dict]:
    """COCO results made ready for `gt.to_coco()`'s index, in place (a copy of millions would double
    memory): image ids become pycocotools' (index + 1), masks compressed RLE with str counts, one category.

    Refused in one line naming the first offending result (FastMaskError): an entry that is not an
    object, a missing or unknown `image_id` (unknown ones are dropped with a note under `allow_missing`),
    a score that is not a finite real number (booleans included), neither `segmentation` nor `bbox`,
    a box that is not four finite numbers of non-negative size, an RLE that does not decode to its
    image's size (pycocotools would score it as garbage, or crash). Polygon rings that are degenerate
    are dropped (a result of only such rings is an empty mask), as in the ground truth. A segmentation
    of null, [] or {} makes a box result; a mask written as an array of rows (`mask.tolist()`) is
    encoded as the mask it is, or refused when it is not the image's size."""
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
        if not is_number(score):
            raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has score {score!r}: "
                                "proposals must be ranked by finite numbers")
        emptied = "segmentation" in r and _no_mask(r["segmentation"])
        if emptied:  # a box result, as if the key were absent
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
            if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box) and box[2] >= 0 and box[3] >= 0):
                raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has bbox {box!r}: "
                                    "it must be [x, y, width, height], finite, of non-negative size")
        else:
            what = "an empty 'segmentation' and no 'bbox'" if emptied else "neither 'segmentation' nor 'bbox'"
            raise FastMaskError(f"result {n} (image_id {r['image_id']!r}) has {what}")
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
    if is_mask_array(seg):
        height, width = (frame[1], frame[0]) if frame else (len(seg), len(seg[0]))
        rle = encode_mask_array(seg, height, width)
        if rle is None:
            raise FastMaskError(f"{where} has a mask array (rows of 0/1), not polygons, but not a {width}x{height} "
                                f"one of 0s and 1s (it has {len(seg)} rows of {len(seg[0])})")
        return rle
    if isinstance(seg, list):
        if frame is None:
            raise FastMaskError(f"{where} is a polygon, but the ground truth gives no width and height for its image")
        coords, lengths, _ = polygon_arrays([(0, seg)])
        usable = [ring.tolist() for ring in np.split(coords, np.cumsum(lengths)[:-1])] if len(lengths) else []
        if usable:
            rle = mask_utils.merge(mask_utils.frPyObjects(usable, frame[1], frame[0]))
        else:  # nothing but degenerate rings: an empty mask
            rle = mask_utils.encode(np.zeros((frame[1], frame[0], 1), dtype=np.uint8, order="F"))[0]
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    if not isinstance(seg, dict):
        raise FastMaskError(f"{where} has a segmentation that is neither polygons nor RLE")
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and min(pixels(v) for v in size) > 0):
        raise FastMaskError(f"{where} has an RLE 'size' of {size!r}, not [height, width]")
    size = [pixels(v) for v in size]
    if frame is not None and size != [frame[1], frame[0]]:
        raise FastMaskError(f"{where} has a {size[1]}x{size[0]} RLE mask (width x height), but image {image_id!r} is "
                            f"{frame[0]}x{frame[1]} in the ground truth")
    if isinstance(counts, str):
        if not counts.isascii():
            raise FastMaskError(f"{where} has RLE counts that are not a pycocotools string")
        return {"size": size, "counts": counts.encode("ascii")}
    encoded = compressed(counts, size) if isinstance(counts, list) else None
    if encoded is not None:
        return {"size": size, "counts": encoded.decode("ascii")}
    raise FastMaskError(f"{where} has uncompressed RLE counts that do not add up to its {size[1]}x{size[0]} mask")

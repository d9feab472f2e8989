"""COCO run-length encoding (RLE) strings, checked in bulk: millions of masks without a Python loop each.

pycocotools can crash on a malformed string or score it as garbage; these check first.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from .ids import pixels


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


def compressed(counts: list, size: list[int]) -> bytes | None:
    """Uncompressed RLE run lengths as pycocotools' compressed string, or None where they are not
    non-negative integers that add up to exactly size[0] x size[1] pixels."""
    if not (counts and all(type(v) is int and v >= 0 for v in counts) and sum(counts) == size[0] * size[1]):
        return None
    return mask_utils.frPyObjects({"size": size, "counts": counts}, *size)["counts"]


# A mask written as nested lists (`mask.tolist()`, as people save Segment Anything's masks) is told from
# polygons by its first row: polygons never hold only 0s and 1s, at least this many of them.
MASK_ROW = 8


def is_mask_array(segmentation: object) -> bool:
    """Whether a segmentation is a mask array (rows of 0/1 or true/false) rather than polygon rings: at
    least `MASK_ROW` rows, the first of at least `MASK_ROW` values, all of them 0 or 1."""
    if type(segmentation) is not list or len(segmentation) < MASK_ROW:
        return False
    row = segmentation[0]
    return type(row) is list and len(row) >= MASK_ROW and all(type(v) in (int, float, bool) and v in (0, 1) for v in row)


def encode_mask_array(rows: list, height: int, width: int) -> dict | None:
    """COCO RLE (str counts) of a mask array of `height` rows of `width` 0/1 values; None when it is not
    that shape or holds other values."""
    try:
        array = np.asarray(rows)
    except ValueError:  # ragged rows
        return None
    if array.shape != (height, width) or array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
        return None
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def annotation_rle(seg: dict, i: int, widths: np.ndarray, heights: np.ndarray) -> tuple[bytes, str | None]:
    """Compressed counts of a ground-truth RLE segmentation on image `i`, or (b"", why it is skipped).
    Where the image entry gives no size (`widths[i]` <= 0), a good RLE's size becomes the image's."""
    size, counts = seg.get("size"), seg.get("counts")
    size = [pixels(v) for v in size] if isinstance(size, list) and len(size) == 2 else [-1, -1]
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
        encoded, area = compressed(counts, size), [sum(counts[1::2])]
        if encoded is None:
            return b"", "RLE that does not decode to its image's size"
    else:
        return b"", "malformed RLE (its 'counts' are neither a string nor non-negative integers)"
    if area[0] == 0:
        return b"", "empty mask"
    if widths[i] <= 0:
        heights[i], widths[i] = size
    return encoded, None

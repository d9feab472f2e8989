"""Polygon rings read from COCO JSON lists into flat arrays, and checked at once (`ground_truth` and
`results` read polygons through these)."""

from __future__ import annotations

import contextlib

import numpy as np

from .ids import is_number

CHUNK = 1 << 16  # annotations whose coordinates are gathered in Python before becoming one array
MAX_COORDINATE = 1e5  # px from the origin: a ring beyond is no object of any image (and exhausts pycocotools' rasteriser)


def ring_coordinates(flat: list, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
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
            if all(is_number(v) for v in ring):
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


def polygon_arrays(pending: list[tuple[int, list]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coords float64, ring lengths, ring owners) of the usable rings of `pending` (annotation, rings)
    polygons, checked at once: >= 3 points, even length, finite numbers, non-zero area."""
    owners, flat, lengths = [], [], []
    for a, rings in pending:
        for ring in rings:
            if type(ring) is list and len(ring) >= 6 and len(ring) % 2 == 0:
                owners.append(a)
                lengths.append(len(ring))
                flat.extend(ring)
    coords, good = ring_coordinates(flat, lengths)
    del flat
    lengths_np = np.asarray(lengths, dtype=np.int64)
    return coords[np.repeat(good, lengths_np)], lengths_np[good], np.asarray(owners, dtype=np.int64)[good]

"""Ground truth in flat arrays: strings in one byte buffer, annotations as columns with offsets into
shared coordinate and RLE buffers (`GroundTruth`'s layout), so that DataLoader workers share them
without copy-on-write growth (detectron2 serialises its dataset for the same reason)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class FlatStrings:
    """A list of optional strings in one byte buffer with offsets: a million file names as two arrays,
    not a million Python objects whose reference counts would copy their pages into every worker."""

    def __init__(self, strings: list[str | None]) -> None:
        # surrogatepass: a name that is not UTF-8 (json.dump writes its bytes as "\\udcXX") comes back as it was
        encoded = [s.encode("utf-8", "surrogatepass") if s is not None else b"" for s in strings]
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self.offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
        self.present = np.fromiter((s is not None for s in strings), dtype=bool, count=len(strings))

    def __len__(self) -> int:
        return len(self.present)

    def __getitem__(self, i: int) -> str | None:
        if not self.present[i]:
            return None
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str | None]:
        return (self[i] for i in range(len(self)))


def flat_annotations(kind: list, image: list, crowd: list, category: list, boxes: np.ndarray, areas: np.ndarray,
                     rle: list, polygons: list[tuple[np.ndarray, np.ndarray, np.ndarray]], counts: np.ndarray,
                     usable: np.ndarray) -> dict[str, np.ndarray]:
    """The annotations where `usable`, in flat arrays (see `GroundTruth`); `counts`: usable rings per annotation."""
    keep = np.flatnonzero(usable)
    ring_lengths = np.concatenate([n for _, n, _ in polygons]) if polygons else np.zeros(0, np.int64)
    rle_lengths = np.fromiter(map(len, rle), dtype=np.int64, count=len(rle))[keep]
    return {
        "image": np.asarray(image, dtype=np.int32)[keep],
        "crowd": np.asarray(crowd, dtype=bool)[keep],
        "category": np.asarray(category, dtype=np.int64)[keep],
        "area": areas[keep],
        "bbox": boxes[keep],
        "kind": np.asarray(kind, dtype=np.int8)[keep],
        "rings": np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64),
        "ring_offsets": np.concatenate([[0], np.cumsum(ring_lengths)]).astype(np.int64),
        "coords": np.concatenate([c for c, _, _ in polygons]) if polygons else np.zeros(0),
        "rle": np.concatenate([[0], np.cumsum(rle_lengths)]).astype(np.int64),
        "rle_bytes": np.frombuffer(b"".join(rle[k] for k in keep), dtype=np.uint8).copy(),
    }


def take_annotations(arrays: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The annotations `keep` (indices, in that order) of flat `arrays`, rings and RLE bytes regathered."""
    out = {name: arrays[name][keep] for name in ("image", "crowd", "category", "area", "bbox", "kind")}
    rings, ring_offsets, coords = arrays["rings"], arrays["ring_offsets"], arrays["coords"]
    ring_index = gather_ranges(rings, keep)
    point_index = gather_ranges(ring_offsets, ring_index)
    out["rings"] = np.concatenate([[0], np.cumsum(rings[keep + 1] - rings[keep])]).astype(np.int64)
    out["ring_offsets"] = np.concatenate([[0], np.cumsum(ring_offsets[ring_index + 1] - ring_offsets[ring_index])]).astype(np.int64)
    out["coords"] = coords[point_index]
    rle = arrays["rle"]
    out["rle"] = np.concatenate([[0], np.cumsum(rle[keep + 1] - rle[keep])]).astype(np.int64)
    out["rle_bytes"] = arrays["rle_bytes"][gather_ranges(rle, keep)]
    return out


def gather_ranges(offsets: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Concatenated arange(offsets[c], offsets[c + 1]) for each c in `chosen`."""
    starts, ends = offsets[chosen], offsets[chosen + 1]
    lengths = ends - starts
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + shift

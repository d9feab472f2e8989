"""Results formats read back by the library users read them with."""

from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fastmask_cli import Proposer, load_model, read_image
from fastmask_cli.io.results_file import as_polygons
from support import REPO
from support.cli import run


def test_polygons_rasterised_back_by_pycocotools_cover_their_masks():
    """On the example photos (the default weights, top-100), each mask and the COCO polygons written for it,
    rasterised back by pycocotools, meet at IoU 0.95 on average; holes are filled (COCO polygons are a union)."""
    proposer = Proposer(load_model()[0], device="cpu", top_k=100)
    ious = []
    for photo in sorted((REPO / "examples" / "photos").glob("*.jpg")):
        for result in proposer.propose(read_image(photo)).to_coco(1):
            polygons = as_polygons(result)["segmentation"]
            rle = result["segmentation"]
            height, width = rle["size"]
            mask = mask_utils.decode(rle).astype(bool)
            back = np.zeros_like(mask)
            if polygons:
                back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
            ious.append((back & mask).sum() / (back | mask).sum())
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    assert len(ious) >= 100 and np.mean(ious) >= 0.97 and np.percentile(ious, 5) >= 0.9, (np.mean(ious), np.median(ious))
    assert as_polygons({"segmentation": [[0, 0, 1, 0, 1, 1]]})["segmentation"] == [[0, 0, 1, 0, 1, 1]]  # already polygons


def test_polygons_run_along_pixel_edges_so_small_and_thin_masks_come_back_whole():
    canvas = np.zeros((30, 30), np.uint8)
    for part in ((slice(5, 15), slice(5, 15)), (slice(5, 8), slice(5, 8)), (3, slice(2, 12)), (7, 7)):
        mask = canvas.copy()
        mask[part] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        polygons = as_polygons({"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})["segmentation"]
        back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 30, 30)))
        assert np.array_equal(back, mask), part


def test_propose_format_polygons_is_a_coco_results_file(tmp_path):
    out = tmp_path / "p.json"
    result = run("propose", REPO / "examples" / "photos" / "rocket.jpg", "--out", out, "--format", "polygons", "--top-k", "5")
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert len(results) == 5 and all(isinstance(r["segmentation"], list) and r["segmentation"] for r in results)
    loaded = COCO(str(tmp_path / "p.images.json")).loadRes(str(out))  # as a COCO tool loads it
    assert len(loaded.anns) == 5 and all(loaded.annToMask(a).any() for a in loaded.anns.values())

"""`--format png` and `--format labels`: masks as image files, read back as users read them (OpenCV, csv)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastmask_cli.errors import FastMaskError
from fastmask_cli.io.files import OUTPUT_MARKER as MARKER
from fastmask_cli.io.mask_files import folder_writer, label_map
from fastmask_cli.io.results_file import iter_results
from support.cli import run


def _result(mask: np.ndarray, score: float) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"image_id": 1, "category_id": 1, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "score": score}


@pytest.fixture
def two_masks() -> tuple[dict, list[np.ndarray], list[dict]]:
    """An image of 40x60 with two overlapping rectangles, the second ranked lower."""
    first, second = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    first[5:20, 10:30] = True
    second[15:35, 20:50] = True
    image = {"id": 1, "file_name": "sub/a.jpg", "width": 60, "height": 40}
    return image, [first, second], [_result(first, 0.9), _result(second, 0.4)]


def test_png_folder_holds_each_mask_and_its_metadata(tmp_path, two_masks):
    image, masks, results = two_masks
    with folder_writer(tmp_path / "out", "png") as add:
        add(image, results)
        add({**image, "file_name": "b.png"}, [])
    folder = tmp_path / "out" / "sub" / "a.jpg"
    for i, mask in enumerate(masks):
        back = cv2.imread(str(folder / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 255} and np.array_equal(back > 0, mask)
    with open(folder / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == [0, 1] and [float(r["score"]) for r in rows] == [0.9, 0.4]
    assert [int(r["area"]) for r in rows] == [int(m.sum()) for m in masks]
    assert [[int(r[k]) for k in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h")] for r in rows] == [[10, 5, 20, 15], [20, 15, 30, 20]]
    assert list(rows[0])[:6] == ["id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h"]  # Segment Anything's first columns
    assert (tmp_path / "out" / "b.png" / "metadata.csv").read_text().count("\n") == 1  # no proposal: the header alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_labels_give_each_pixel_the_best_rank_covering_it(tmp_path, two_masks):
    image, masks, results = two_masks
    expected = np.where(masks[0], 1, np.where(masks[1], 2, 0)).astype(np.uint16)
    assert np.array_equal(label_map(image, results), expected)
    with folder_writer(tmp_path / "labels", "labels") as add:
        add(image, results)
    back = cv2.imread(str(tmp_path / "labels" / "sub" / "a.jpg.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, expected)


def test_a_folder_is_replaced_only_when_a_run_wrote_it_and_only_once_whole(tmp_path, two_masks):
    image, _, results = two_masks
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FastMaskError, match="not written by fastmask"):
        with folder_writer(mine, "png") as add:
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(FastMaskError, match="is a file"):
        with folder_writer(tmp_path / "file", "labels"):
            pass
    out = tmp_path / "out"
    with folder_writer(out, "png") as add:
        add(image, results)
    assert (out / MARKER).is_file()
    with pytest.raises(RuntimeError):  # a run that fails leaves the earlier results as they were
        with folder_writer(out, "png") as add:
            add({**image, "file_name": "other.jpg"}, results)
            raise RuntimeError("cut")
    assert (out / "sub" / "a.jpg" / "0.png").is_file() and not (out / "other.jpg").exists()
    with folder_writer(out, "png") as add:  # a finished run replaces them whole
        add({**image, "file_name": "other.jpg"}, results[:1])
    assert not (out / "sub").exists() and (out / "other.jpg" / "0.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "out"] and (mine / "notes.txt").exists()
    with pytest.raises(FastMaskError, match="not a path inside"):  # a doctored image list writes nothing outside
        with folder_writer(out, "labels") as add:
            add({**image, "file_name": "../escaped.jpg"}, results)
    assert not (tmp_path / "escaped.jpg.png").exists() and (out / "other.jpg").is_dir()


def test_propose_writes_png_and_labels_that_match_its_coco_masks(tmp_path, tiny_checkpoint, image_folder):
    common = ["--weights", tiny_checkpoint, "--top-k", "5", "--one-per-pixel"]
    assert run("propose", image_folder, "-o", tmp_path / "r.json", *common).exit_code == 0
    names = {im["id"]: im["file_name"] for im in json.loads((tmp_path / "r.images.json").read_text())["images"]}
    results = dict(iter_results(tmp_path / "r.json"))
    for fmt, jobs in (("png", "1"), ("labels", "2")):  # labels across two processes: their shards joined as labels
        done = run("propose", image_folder, "-o", tmp_path / fmt, "--format", fmt, "--jobs", jobs, *common)
        assert done.exit_code == 0, done.output
        assert json.loads((tmp_path / f"{fmt}.images.json").read_text())["info"]["fastmask"]["results_format"] == fmt
        assert not list(tmp_path.glob(f"{fmt}.shard-*"))
    assert results and all(results.values())
    for image_id, found in results.items():
        masks = mask_utils.decode([r["segmentation"] for r in found]).transpose(2, 0, 1)
        labels = cv2.imread(str(tmp_path / "labels" / f"{names[image_id]}.png"), cv2.IMREAD_UNCHANGED)
        for rank, mask in enumerate(masks, start=1):
            png = cv2.imread(str(tmp_path / "png" / names[image_id] / f"{rank - 1}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(png > 0, mask > 0)
            assert np.array_equal(labels == rank, mask > 0)  # one mask per pixel: each rank's pixels are its mask
    again = run("propose", image_folder, "-o", tmp_path / "png", "--format", "png", *common)  # replaced by a new run
    assert again.exit_code == 0 and (tmp_path / "png" / MARKER).is_file()
    # written inside the input folder, the masks are never read back as images by the next run there
    inside = run("propose", image_folder, "-o", image_folder / "masks", "--format", "png", *common)
    assert inside.exit_code == 0, inside.output
    again = run("propose", image_folder, "-o", image_folder / "masks", "--format", "png", *common)
    listed = json.loads((image_folder / "masks.images.json").read_text())["images"]
    assert again.exit_code == 0 and len(listed) == len(names) and "masks/ (fastmask's png output: not read)" in again.flat
    refused = run("propose", image_folder, "-o", image_folder.parent, "--format", "png", *common)
    assert refused.exit_code == 1 and "not written by fastmask" in refused.output
    assert "labels" in run("propose", "--help").output

"""`fastmask eval`: AR exactly as COCOeval measures it, on ground truth the tests build."""

import json
import re

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastmask_cli import FastMaskError
from fastmask_cli.coco.evaluate import evaluate
from support.cli import run
from support.coco_data import CocoData, cocoeval_ar

H, W = 200, 300


def rect_rle(x, y, w, h):
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(mask)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def write_gt(path, rects_per_image):
    coco = CocoData(tuple((i, str(i)) for i in (1, 2, 3)))
    for rects in rects_per_image:
        image_id = coco.image(f"{len(coco.data['images']) + 1}.png", W, H)
        for x, y, w, h in rects:
            coco.annotation(image_id, rect_rle(x, y, w, h), [x, y, w, h], float(w * h),
                            category_id=1 + len(coco.data["annotations"]) % 3)
    return coco.write(path)


def result(image_id, x, y, w, h, score):
    return {"image_id": image_id, "category_id": 1, "segmentation": rect_rle(x, y, w, h), "bbox": [x, y, w, h], "score": score}


RECTS = [[(10, 10, 86, 50), (150, 20, 100, 120)], [(40, 100, 60, 60), (5, 5, 20, 20)]]


def test_perfect_proposals_recall_everything(tmp_path):
    gt = write_gt(tmp_path / "gt.json", RECTS)
    perfect = [result(i, *r, 0.9) for i, rects in enumerate(RECTS, start=1) for r in rects]
    evaluation = evaluate(gt, perfect)
    for iou_type in ("segm", "bbox"):
        metrics = evaluation.results[iou_type].metrics
        assert metrics["AR@10"] == metrics["AR@100"] == metrics["AR@1000"] == 1.0


def test_known_iou_gives_the_recall_it_implies(tmp_path):
    gt = write_gt(tmp_path / "gt.json", [[(10, 10, 86, 50)]])
    shifted = [result(1, 24, 10, 86, 50, 0.9)]  # shifted 14 px: IoU = 72 / 100 = 0.72
    evaluation = evaluate(gt, shifted)
    for iou_type in ("segm", "bbox"):
        r = evaluation.results[iou_type]
        assert r.metrics["AR@100"] == pytest.approx(0.5)  # recalled at 0.50..0.70, missed at 0.75..0.95
        assert r.curves[100] == [1.0] * 5 + [0.0] * 5


def test_proposals_beyond_n_are_ignored(tmp_path):
    gt = write_gt(tmp_path / "gt.json", [[(10, 10, 86, 50)]])
    junk = [result(1, 200, 150, 20, 20, 0.99 - i * 0.001) for i in range(10)]
    evaluation = evaluate(gt, junk + [result(1, 10, 10, 86, 50, 0.5)])
    metrics = evaluation.results["segm"].metrics
    assert metrics["AR@10"] == 0.0 and metrics["AR@100"] == 1.0 and metrics["AR@1000"] == 1.0


def test_small_medium_large_follow_coco_area_ranges(tmp_path):
    # areas 20x20 = 400 < 32^2 (small), 50x50 = 2500 (medium), 120x100 = 12000 > 96^2 (large)
    gt = write_gt(tmp_path / "gt.json", [[(5, 5, 20, 20), (50, 50, 50, 50), (150, 20, 120, 100)]])
    found = [result(1, 5, 5, 20, 20, 0.9), result(1, 150, 20, 120, 100, 0.8)]  # misses the medium one
    metrics = evaluate(gt, found).results["segm"].metrics
    assert (metrics["AR_S@100"], metrics["AR_M@100"], metrics["AR_L@100"]) == (1.0, 0.0, 1.0)
    assert metrics["AR@100"] == pytest.approx(2 / 3)


def test_equals_a_direct_cocoeval_computation(tmp_path):
    rng = np.random.default_rng(0)
    rects = [[tuple(int(v) for v in (rng.integers(0, 200), rng.integers(0, 120), rng.integers(8, 100), rng.integers(8, 80)))
              for _ in range(6)] for _ in range(5)]
    gt = write_gt(tmp_path / "gt.json", rects)
    results = []
    for image_id in range(1, 6):
        for _ in range(150):
            x, y = int(rng.integers(0, 250)), int(rng.integers(0, 150))
            results.append(result(image_id, x, y, int(rng.integers(5, W - x)), int(rng.integers(5, H - y)), float(rng.random())))
    ours = evaluate(gt, [dict(r) for r in results])
    for iou_type in ("segm", "bbox"):
        expected = cocoeval_ar(gt, results, iou_type)
        for key, value in expected.items():
            assert ours.results[iou_type].metrics[key] == pytest.approx(value, abs=1e-9), (iou_type, key)
        assert 0 < ours.results[iou_type].metrics["AR@100"] < 1


def test_box_only_results_and_other_mask_encodings(tmp_path):
    gt = write_gt(tmp_path / "gt.json", [[(10, 10, 86, 50)]])
    boxes_only = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 86, 50], "score": 0.5}]
    evaluation = evaluate(gt, boxes_only)
    assert list(evaluation.results) == ["bbox"] and evaluation.results["bbox"].metrics["AR@10"] == 1.0
    assert any("boxes only" in n for n in evaluation.notes)
    # a polygon mask with a wrong box: the box AR uses the mask's tight box, not the stated one
    polygon = {"image_id": 1, "score": 0.5, "bbox": [0, 0, 5, 5], "segmentation": [[10, 10, 96, 10, 96, 60, 10, 60]]}
    evaluation = evaluate(gt, [polygon])
    assert evaluation.results["bbox"].metrics["AR@10"] == 1.0
    assert evaluation.results["segm"].metrics["AR@10"] > 0.5


@pytest.mark.parametrize("content,message", [
    ("{not json", "not JSON"),
    ('{"a": 1}', "not a COCO results list"),
    ('[{"image_id": 1, "bbox": [0, 0, 5, 5]}]', "has no 'score'"),
    ('[{"image_id": 99, "bbox": [0, 0, 5, 5], "score": 1}]', "not in the ground truth"),
    ('[{"image_id": 1, "score": 1}]', "neither 'segmentation' nor 'bbox'"),
])
def test_bad_results_fail_clearly(tmp_path, content, message):
    gt = write_gt(tmp_path / "gt.json", RECTS)
    (tmp_path / "r.json").write_text(content)
    with pytest.raises(FastMaskError, match=message):
        evaluate(gt, tmp_path / "r.json")


def test_missing_ids_with_allow_missing_use_the_intersection(tmp_path):
    gt = write_gt(tmp_path / "gt.json", RECTS)
    results = [result(1, *r, 0.9) for r in RECTS[0]] + [result(42, 0, 0, 10, 10, 0.9)]
    evaluation = evaluate(gt, results, allow_missing=True)
    assert evaluation.results["segm"].metrics["AR@100"] == 1.0  # image 2 is not evaluated
    assert evaluation.results["segm"].images == 1


def test_empty_results_and_gt_without_masks(tmp_path):
    gt = write_gt(tmp_path / "gt.json", RECTS)
    evaluation = evaluate(gt, [])
    assert all(v == 0.0 for r in evaluation.results.values() for v in r.metrics.values() if v is not None)
    assert evaluation.results["segm"].metrics["AR@100"] == 0.0
    assert any("empty" in n for n in evaluation.notes)
    data = json.loads(gt.read_text())
    for a in data["annotations"]:
        del a["segmentation"]
    (tmp_path / "boxes_gt.json").write_text(json.dumps(data))
    with pytest.raises(FastMaskError, match="all 4 ground-truth objects are boxes only"):
        evaluate(tmp_path / "boxes_gt.json", [result(1, 10, 10, 86, 50, 0.9)], iou_types=("segm",))
    both = evaluate(tmp_path / "boxes_gt.json", [result(1, 10, 10, 86, 50, 0.9)])  # the default: boxes, with a note
    assert list(both.results) == ["bbox"] and any("masks not evaluated: all 4" in n for n in both.notes)
    only_boxes = evaluate(tmp_path / "boxes_gt.json", [result(1, 10, 10, 86, 50, 0.9)], iou_types=("bbox",))
    assert only_boxes.results["bbox"].metrics["AR@10"] == 0.25  # one of the four objects


def test_eval_command_writes_table_json_and_plot(tmp_path):
    gt = write_gt(tmp_path / "gt.json", RECTS)
    (tmp_path / "r.json").write_text(json.dumps([result(1, *RECTS[0][0], 0.9)]))
    out = run("eval", str(gt), str(tmp_path / "r.json"), "--json", str(tmp_path / "m.json"),
              "--plot", str(tmp_path / "recall.png"))
    assert out.exit_code == 0, out.output
    flat = " ".join(re.sub(r"[\u2500-\u257f]", " ", out.output).split())
    assert "AR@100 25.0 31.3 25.0 43.1" in flat  # ours beside the paper's, masks and boxes
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["segm"]["metrics"]["AR@100"] == 0.25 and len(metrics["bbox"]["recall"]["1000"]) == 10
    plot = cv2.imread(str(tmp_path / "recall.png"))
    assert plot is not None and plot.shape[1] > plot.shape[0]  # two panels side by side
    bad = run("eval", str(gt), str(tmp_path / "missing.json"))
    assert bad.exit_code == 1 and "results file not found" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("corrupt,words", [
    ({"score": float("nan")}, ["result 1 (image_id 1) has score nan"]),
    ({"score": float("inf")}, ["result 1 (image_id 1) has score inf"]),
    ({"segmentation": {**rect_rle(10, 10, 86, 50), "size": [W, H]}},  # a mask of the transposed grid
     [f"result 1 (image_id 1) has a {H}x{W} RLE mask", f"image 1 is {W}x{H} in the ground truth"]),
])
def test_corrupt_results_stop_the_run_naming_the_first(tmp_path, corrupt, words):
    """COCOeval would score these silently: a NaN score is ranked anywhere, a mask of another size is
    compared pixel by pixel with a mask of another grid."""
    gt = write_gt(tmp_path / "gt.json", RECTS)
    results = [result(1, *RECTS[0][0], 0.9), {**result(1, *RECTS[0][1], 0.8), **corrupt}, result(2, 0, 0, 5, 5, float("nan"))]
    (tmp_path / "r.json").write_text(json.dumps(results))  # Python writes NaN and Infinity, as other tools do
    with pytest.raises(FastMaskError) as error:
        evaluate(gt, tmp_path / "r.json")
    assert all(w in str(error.value) for w in words), str(error.value)
    out = run("eval", str(gt), str(tmp_path / "r.json"))
    lines = out.output.strip().splitlines()
    assert out.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: result 1 ")


def test_eval_reads_json_lines(tmp_path):
    gt = write_gt(tmp_path / "gt.json", RECTS)
    lines = [{"image_id": i, "file_name": f"{i}.png", "width": W, "height": H, "proposals": [result(i, *r, 0.9) for r in rects]}
             for i, rects in enumerate(RECTS, start=1)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert evaluate(gt, tmp_path / "r.jsonl").results["segm"].metrics["AR@100"] == 1.0


def test_empty_segmentation_in_results_is_a_box_result(tmp_path):
    """`"segmentation": []` beside a right box (detectors and box proposers write it) is scored as a box,
    as pycocotools scores the same results without the key; never as an empty mask."""
    gt = write_gt(tmp_path / "gt.json", RECTS)
    boxes = [{"image_id": i, "category_id": 1, "bbox": list(r), "score": 0.9} for i, rects in enumerate(RECTS, start=1) for r in rects]
    for empty in ([], {}, None):
        evaluation = evaluate(gt, [{**b, "segmentation": empty} for b in boxes])
        assert list(evaluation.results) == ["bbox"] and any("masks not evaluated: all 4 results" in n for n in evaluation.notes)
        assert evaluation.results["bbox"].metrics == pytest.approx(cocoeval_ar(gt, boxes, "bbox"))
        assert evaluation.results["bbox"].metrics["AR@100"] == 1.0


def test_box_only_records_leave_the_rest_of_the_mask_figure(tmp_path):
    """One box-only result, or one box-only ground-truth object, among masks: mask AR over the rest (equal
    to pycocotools on a copy without them), box AR over all, and a note saying how many were left out."""
    gt = write_gt(tmp_path / "gt.json", RECTS)
    masks = [result(1, *RECTS[0][0], 0.9), result(2, 40, 100, 60, 50, 0.8)]
    boxed = {"image_id": 1, "category_id": 1, "bbox": list(RECTS[0][1]), "score": 0.7, "segmentation": []}
    evaluation = evaluate(gt, [dict(r) for r in masks] + [dict(boxed)])
    assert evaluation.results["segm"].metrics == pytest.approx(cocoeval_ar(gt, masks, "segm"))
    del boxed["segmentation"]
    assert evaluation.results["bbox"].metrics == pytest.approx(cocoeval_ar(gt, masks + [boxed], "bbox"))
    assert any("mask AR from the 2 results with a mask: 1 are boxes only" in n for n in evaluation.notes)

    data = json.loads(gt.read_text())
    data["annotations"][1]["segmentation"] = []  # as CVAT writes a box-only object
    (tmp_path / "mixed.json").write_text(json.dumps(data))
    cleaned = dict(data, annotations=[a for a in data["annotations"] if a["segmentation"]])
    (tmp_path / "cleaned.json").write_text(json.dumps(cleaned))
    boxes_gt = dict(data, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in data["annotations"]])
    (tmp_path / "boxes.json").write_text(json.dumps(boxes_gt))
    found = [result(1, *RECTS[0][0], 0.9), result(1, *RECTS[0][1], 0.8), result(2, *RECTS[1][1], 0.7)]
    evaluation = evaluate(tmp_path / "mixed.json", [dict(r) for r in found])
    assert list(evaluation.results) == ["segm", "bbox"]
    assert evaluation.results["segm"].metrics == pytest.approx(cocoeval_ar(tmp_path / "cleaned.json", found, "segm"))
    assert evaluation.results["segm"].metrics["AR@100"] == pytest.approx(2 / 3)  # 2 of the 3 objects with masks
    as_boxes = [{k: v for k, v in r.items() if k != "segmentation"} for r in found]
    assert evaluation.results["bbox"].metrics == pytest.approx(cocoeval_ar(tmp_path / "boxes.json", as_boxes, "bbox"))
    assert evaluation.results["bbox"].metrics["AR@100"] == pytest.approx(3 / 4)
    assert any("mask AR over the 3 ground-truth objects with a mask: 1 are boxes only" in n for n in evaluation.notes)


def test_masks_written_as_arrays_are_read_as_masks(tmp_path):
    """`mask.tolist()` (rows of 0/1 or true/false, how Segment Anything's masks get saved) is the mask,
    scored as its RLE is; an array of another size is refused in one line, never read as polygon rings."""
    gt = write_gt(tmp_path / "gt.json", [[(10, 10, 86, 50)]])
    mask = np.zeros((H, W), dtype=bool)
    mask[10:60, 10:96] = True
    as_rle = [result(1, 10, 10, 86, 50, 0.9)]
    for rows in (mask.tolist(), mask.astype(int).tolist()):
        evaluation = evaluate(gt, [{"image_id": 1, "score": 0.9, "segmentation": rows}])
        assert evaluation.results["segm"].metrics == pytest.approx(cocoeval_ar(gt, as_rle, "segm"))
        assert evaluation.results["segm"].metrics["AR@10"] == 1.0
    with pytest.raises(FastMaskError, match="a mask array .rows of 0/1., not polygons, but not a 300x200 one"):
        evaluate(gt, [{"image_id": 1, "score": 0.9, "segmentation": mask.T.tolist()}])

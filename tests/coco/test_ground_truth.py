"""One reading of COCO ground truth and results: every kind of broken file gives either the
AR of its clean copy, as pycocotools measures it on that clean copy, or a one-line refusal."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastmask_cli import FastMaskError
from fastmask_cli.coco.evaluate import evaluate
from fastmask_cli.coco.ground_truth import read_ground_truth
from fastmask_cli.coco.rle import check_rle_strings, decode_rle_strings
from fastmask_cli.training.dataset import CocoInstances
from support import draw_scene, write_image
from support.cli import propose, run
from support.coco_data import CocoData, cocoeval_ar

H, W = 120, 160


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _polygon(rng: np.random.Generator) -> list[float]:
    """A convex polygon (a jittered circle of 5-9 points) inside the image."""
    cx, cy, r = rng.uniform(25, W - 25), rng.uniform(25, H - 25), rng.uniform(6, 24)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 10))))
    return np.round(np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel(), 2).tolist()


def clean_scene(seed: int = 0, images: int = 4) -> tuple[dict, list[dict]]:
    """Ground truth (polygons, RLE, a crowd; area and box from the mask, as COCO computes them) and
    results (jittered copies of the objects and junk) for `images` drawn images."""
    rng = np.random.default_rng(seed)
    coco = CocoData(((1, "thing"),))
    data = coco.data
    results = []
    for image_id in range(1, images + 1):
        coco.image(f"{image_id}.png", W, H)
        for k in range(5):
            if k < 3:
                seg = [_polygon(rng)]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W))
            else:
                mask = np.zeros((H, W), np.uint8)
                x, y = int(rng.integers(0, W - 30)), int(rng.integers(0, H - 30))
                mask[y : y + int(rng.integers(4, 30)), x : x + int(rng.integers(4, 30))] = 1
                seg = _rle(mask)
                rle = mask_utils.encode(np.asfortranarray(mask))
            coco.annotation(image_id, seg, mask_utils.toBbox(rle).tolist(), float(mask_utils.area(rle)), iscrowd=int(k == 4))
            mask = mask_utils.decode(rle)
            for _ in range(3):  # proposals near the object
                shifted = np.roll(mask, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
                results.append({"image_id": image_id, "segmentation": _rle(shifted), "score": float(rng.random())})
        for _ in range(20):  # junk
            junk = np.zeros((H, W), np.uint8)
            x, y = int(rng.integers(0, W - 20)), int(rng.integers(0, H - 20))
            junk[y : y + 20, x : x + 20] = 1
            results.append({"image_id": image_id, "segmentation": _rle(junk), "score": float(rng.random() * 0.5)})
    return data, results


def pycocotools_metrics(data: dict, results: list[dict]) -> dict[str, dict[str, float | None]]:
    """What pycocotools measures on a clean file, class-agnostic, the reference every case is held to."""
    return {iou_type: cocoeval_ar(data, results, iou_type) for iou_type in ("segm", "bbox")}


def our_metrics(tmp_path: Path, data: dict, results: list[dict]) -> tuple[dict, list[str]]:
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "r.json").write_text(json.dumps(results))
    evaluation = evaluate(tmp_path / "gt.json", tmp_path / "r.json")
    return {t: r.metrics for t, r in evaluation.results.items()}, evaluation.notes


def assert_same(ours: dict, reference: dict) -> None:
    for iou_type, metrics in reference.items():
        for key, value in metrics.items():
            assert ours[iou_type][key] == pytest.approx(value, abs=1e-12), (iou_type, key)


def _ids_per_image(data, results):
    seen: dict = {}
    for a in data["annotations"]:
        seen[a["image_id"]] = seen.get(a["image_id"], 0) + 1
        a["id"] = seen[a["image_id"]]


def _id_zero(data, results):
    data["annotations"][0]["id"] = 0  # pycocotools counts a match to annotation 0 as no match


def _string_image_ids(data, results):
    for item in data["images"]:
        item["id"] = f"cat_{item['id']:03d}"
    for item in data["annotations"] + results:
        item["image_id"] = f"cat_{item['image_id']:03d}"


def _no_area(data, results):
    for a in data["annotations"]:
        del a["area"]


def _bad_boxes(data, results):
    del data["annotations"][0]["bbox"]
    data["annotations"][1]["bbox"] = [5, 5, -3, 4]
    data["annotations"][3]["bbox"] = [5, 5, 0, 0]


def _boxes_of_other_types(data, results):
    data["annotations"][0]["bbox"] = [str(v) for v in data["annotations"][0]["bbox"]]  # strings are not numbers
    data["annotations"][1]["bbox"] = [True, True] + data["annotations"][1]["bbox"][2:]


def _mask_results_with_odd_boxes(data, results):
    results[0]["bbox"] = [1, 2, 3]  # pycocotools reads every result's box when the first has one
    results[1]["bbox"] = None
    results[2]["bbox"] = ["1", "2", "3", "4"]


def _size_only_in_rle(data, results):
    """No width or height: the size comes from the image's RLE objects, not from a broken one before them."""
    for item in data["images"]:
        del item["width"], item["height"]
        data["annotations"].insert(0, {"id": 900 + item["id"], "image_id": item["id"], "iscrowd": 0,
                                       "segmentation": {"size": [100, 100], "counts": "garbage"}})
    data["annotations"] = [a for a in data["annotations"] if not isinstance(a["segmentation"], list)]


def _no_iscrowd_and_no_categories(data, results):
    for a in data["annotations"]:
        if not a["iscrowd"]:
            del a["iscrowd"]
        del a["category_id"]
    del data["categories"]


def _float_ids_and_sizes(data, results):
    for item in data["images"]:  # 1.0 is the number 1 to JSON; 160.0 a width of 160
        item.update(id=float(item["id"]), width=float(item["width"]), height=float(item["height"]))


def _flat_polygons(data, results):
    for a in data["annotations"]:  # as roboflow/supervision#205 wrote them
        if isinstance(a["segmentation"], list):
            (a["segmentation"],) = a["segmentation"]


@pytest.mark.parametrize("spoil,note", [
    (_flat_polygons, "12 polygons written as one flat list"),
    (_float_ids_and_sizes, None),
    (_ids_per_image, "annotation ids renumbered"),
    (_id_zero, "annotation ids renumbered"),
    (_string_image_ids, None),
    (_no_area, "without a usable 'area': derived from the mask"),
    (_bad_boxes, "derived from the mask"),
    (_no_iscrowd_and_no_categories, None),
    (_boxes_of_other_types, "without a usable 'bbox': derived from the mask"),
    (_mask_results_with_odd_boxes, None),
])
def test_fixable_ground_truth_gives_the_clean_files_ar(tmp_path, spoil, note):
    data, results = clean_scene()
    reference = pycocotools_metrics(data, results)
    spoil(data, results)
    ours, notes = our_metrics(tmp_path, data, results)
    assert_same(ours, reference)
    assert note is None or any(note in n for n in notes), notes
    assert 0 < reference["segm"]["AR@100"] < 1 and 0 < reference["bbox"]["AR@100"] < 1


BROKEN_ANNOTATIONS = {
    "degenerate polygon": [
        {"segmentation": [[10, 10, 20, 20]]},  # 2 points: pycocotools takes 4 numbers for a box and fails
        {"segmentation": [[10, 10, 20, 20, 30, 30]]},  # collinear: no area
        {"segmentation": [[10, 10, 20, 10, 20, 20, 10]]},  # odd length
        {"segmentation": [[10, 10, 20, "x", 20, 20]]},  # not numbers
        {"segmentation": [[10, 10, 20, 10, float("nan"), 20]]},  # not finite
        {"segmentation": [[10, 10, 1e9, 10, 50, 50]]},  # finite, but pycocotools' rasteriser would exhaust memory
        {"segmentation": [[10, 10, True, 10, 20, 20]]},  # a boolean is not a coordinate
        {"segmentation": [["10", "10", "20", "10", "20", "20"]]},  # nor is a string
    ],
    "empty segmentation and no usable 'bbox'": [{"segmentation": [], "bbox": [3, 3, 0, 5]}, {"segmentation": {}, "bbox": None}],
    "RLE that does not decode": [
        {"segmentation": {"size": [W, H], "counts": "PQ1"}},  # the transposed grid
        {"segmentation": {"size": [H, W], "counts": "b'" + _rle(np.ones((H, W)))["counts"] + "'"}},  # str(bytes)
        {"segmentation": {"size": [H, W], "counts": [5, 10]}},  # runs that do not fill the image
    ],
    "empty mask": [
        {"segmentation": _rle(np.zeros((H, W)))},
        {"segmentation": [[500, 500, 520, 500, 520, 520]]},  # wholly outside the image
        {"segmentation": [[10.1, 10.1, 10.4, 10.1, 10.4, 10.4]]},  # within one pixel: no pixel's centre
    ],
    "on an image id that no image has": [{"image_id": 999, "segmentation": [[1, 1, 30, 1, 30, 30]]}],
    "box of no size and no mask": [{"segmentation": None, "bbox": [3, 3, 0, 5]}],
    "not a JSON object": [["id", 7]],
}


@pytest.mark.parametrize("kind", sorted(BROKEN_ANNOTATIONS))
def test_unusable_annotations_are_skipped_counted_and_leave_the_clean_ar(tmp_path, kind):
    data, results = clean_scene()
    reference = pycocotools_metrics(data, results)  # the clean copy: without the broken annotations
    for n, extra in enumerate(BROKEN_ANNOTATIONS[kind]):
        if isinstance(extra, dict):
            extra = {"id": 1000 + n, "image_id": 2, "iscrowd": 0, "area": 50.0, "bbox": [10, 10, 10, 10], **extra}
            if extra["segmentation"] is None:
                del extra["segmentation"]
        data["annotations"].insert(3, extra)
    ours, notes = our_metrics(tmp_path, data, results)
    assert_same(ours, reference)
    count = len(BROKEN_ANNOTATIONS[kind])
    assert any(n.startswith(f"{count} annotations skipped: {kind}") for n in notes), notes
    # training reads the same file the same way: the same notes
    images = tmp_path / "images"
    images.mkdir()
    for item in data["images"]:
        write_image(images / item["file_name"], draw_scene(H, W, seed=item["id"]))
    if kind != "box of no size and no mask":
        dataset = CocoInstances(tmp_path / "gt.json", images)
        assert {n for n in notes if not n.startswith("at most")} <= set(dataset.report.notes)  # the results' own note aside
        assert dataset.report.objects + dataset.report.crowds == len(clean_scene()[0]["annotations"])


def test_box_only_objects_written_with_an_empty_segmentation_are_evaluated_as_boxes(tmp_path):
    """CVAT and coco-annotator write a box-only object as "segmentation": [] (or {}): its box counts."""
    data, results = clean_scene()
    reference = pycocotools_metrics(data, results)["bbox"]  # box AR reads the ground truth's boxes and areas only
    for n, a in enumerate(data["annotations"]):
        a["segmentation"] = [] if n % 2 else {}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "r.json").write_text(json.dumps(results))
    evaluation = evaluate(tmp_path / "gt.json", tmp_path / "r.json", ("bbox",))
    assert_same({"bbox": evaluation.results["bbox"].metrics}, {"bbox": reference})
    assert any(n.startswith(f"{len(data['annotations'])} annotations with an empty 'segmentation'") for n in evaluation.notes)
    out = run("eval", tmp_path / "gt.json", tmp_path / "r.json")  # the default, both: boxes, and a note on masks
    assert out.exit_code == 0 and "masks not evaluated" in out.flat
    out = run("eval", tmp_path / "gt.json", tmp_path / "r.json", "--iou-type", "segm")  # masks alone: one line
    assert out.exit_code == 1 and "mask AR needs masks" in out.flat and "--iou-type bbox" in out.flat


def test_file_names_that_are_not_utf8_are_read_as_written(tmp_path):
    """Python's json writes a listed name that is not UTF-8 with `\\udcXX` escapes: it must come back as it went in."""
    data, _ = clean_scene()
    data["images"][0]["file_name"] = "caf\udce9.jpg"
    (tmp_path / "gt.json").write_text(json.dumps(data))
    assert read_ground_truth(tmp_path / "gt.json").file_names[0] == "caf\udce9.jpg"


PANOPTIC = {"annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": [
    {"id": 3226956, "category_id": 1, "iscrowd": 0, "bbox": [10, 10, 20, 20], "area": 400}]}]}


@pytest.mark.parametrize("spoil,words", [
    (lambda d: d.update(PANOPTIC), "is a COCO panoptic file"),
    (lambda d: d["images"].append({**d["images"][0], "file_name": "other.png"}), "image id 1 is used by two images"),
    (lambda d: d["annotations"][2].update(iscrowd="yes"), "has iscrowd 'yes'"),
    (lambda d: d.pop("annotations"), "is not COCO"),
    (lambda d: d["annotations"][1].update(segmentation=np.ones((H, W), bool).tolist()), "has a mask array"),
])
def test_ground_truth_that_cannot_be_read_right_is_refused_in_one_line(tmp_path, spoil, words):
    data, results = clean_scene(images=2)
    spoil(data)
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "r.json").write_text(json.dumps(results))
    with pytest.raises(FastMaskError, match=words):
        read_ground_truth(tmp_path / "gt.json")
    out = run("eval", tmp_path / "gt.json", tmp_path / "r.json")
    lines = out.output.strip().splitlines()
    assert out.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:") and words in out.flat


def _bytes_repr(results):
    results[7]["segmentation"]["counts"] = repr(results[7]["segmentation"]["counts"].encode())


def _garbage_counts(results):
    results[7]["segmentation"]["counts"] = "zz" + results[7]["segmentation"]["counts"]


def _truncated_counts(results):
    results[7]["segmentation"]["counts"] = results[7]["segmentation"]["counts"][:-3]


def _bool_score(results):
    results[7]["score"] = True


def _text_score(results):
    results[7]["score"] = "0.5"


def _no_image_id(results):
    del results[7]["image_id"]


def _wrong_size(results):
    results[7]["segmentation"]["size"] = [H + 1, W]


@pytest.mark.parametrize("spoil,words", [
    (_bytes_repr, "result 7 (image_id 1) has RLE counts that do not decode"),
    (_garbage_counts, "result 7 (image_id 1) has RLE counts that do not decode"),
    (_truncated_counts, "result 7 (image_id 1) has RLE counts that do not decode"),
    (_bool_score, "result 7 (image_id 1) has score True"),
    (_text_score, "result 7 (image_id 1) has score '0.5'"),
    (_no_image_id, "result 7 has no 'image_id'"),
    (_wrong_size, "result 7 (image_id 1) has a 160x121 RLE mask"),
])
def test_results_that_would_score_silently_wrong_are_refused_naming_the_first(tmp_path, spoil, words):
    data, results = clean_scene(images=2)
    spoil(results)
    with pytest.raises(FastMaskError, match=words.replace("(", r"\(").replace(")", r"\)")):
        our_metrics(tmp_path, data, results)
    out = run("eval", tmp_path / "gt.json", tmp_path / "r.json")
    lines = out.output.strip().splitlines()
    assert out.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: result 7")


def test_degenerate_result_polygons_are_empty_masks_and_other_encodings_still_work(tmp_path):
    data, results = clean_scene(images=2)
    reference = pycocotools_metrics(data, results[:5] + [{**results[5], "segmentation": _rle(np.zeros((H, W)))}] + results[6:])
    spoiled = copy.deepcopy(results)
    spoiled[5]["segmentation"] = [[10, 10, 20, 20]]  # 2 points: an empty mask, not an internal error
    on_object = data["annotations"][0]["segmentation"]  # a polygon result right on image 1's first object
    spoiled[6].update(segmentation=on_object, score=0.99)
    decoded = mask_utils.decode({"size": [H, W], "counts": results[8]["segmentation"]["counts"].encode()})
    spoiled[8]["segmentation"] = {"size": [H, W], "counts": _uncompressed(decoded)}  # uncompressed RLE
    clean = copy.deepcopy(results)
    clean[5]["segmentation"] = _rle(np.zeros((H, W)))
    clean[6].update(segmentation=_rle(mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(on_object, H, W)))), score=0.99)
    expected = pycocotools_metrics(data, clean)
    ours, _ = our_metrics(tmp_path, data, spoiled)
    assert_same(ours, expected)
    assert expected != reference  # the polygon result changed the figures: it was read, not dropped


def _uncompressed(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], change])).tolist()


def test_rle_strings_decode_as_pycocotools_encodes_them():
    rng = np.random.default_rng(3)
    masks = [(rng.random((int(h), int(w))) < rng.random()).astype(np.uint8) for h, w in rng.integers(1, 40, (200, 2))]
    masks += [np.zeros((5, 7), np.uint8), np.ones((9, 4), np.uint8)]
    strings = [mask_utils.encode(np.asfortranarray(m))["counts"] for m in masks]
    counts, offsets, well_formed = decode_rle_strings(strings)
    assert well_formed.all()
    for s, mask in enumerate(masks):
        assert counts[offsets[s] : offsets[s + 1]].tolist() == _uncompressed(mask) or mask.sum() == 0
        runs = counts[offsets[s] : offsets[s + 1]]
        assert (np.repeat(np.arange(len(runs)) % 2, runs) == mask.ravel(order="F")).all()
    valid, area = check_rle_strings(strings, [m.size for m in masks])
    assert valid.all() and area.tolist() == [int(m.sum()) for m in masks]
    wrong_size, _ = check_rle_strings(strings, [m.size + 1 for m in masks])
    assert not wrong_size.any()


def test_string_image_ids_go_through_propose_merge_and_eval(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    gt = {"images": [], "annotations": [], "categories": []}
    for n, image_id in enumerate(["cat_001", 7, "7"]):  # a string, a number, and the same digits as a string
        write_image(folder / f"{n}.png", draw_scene(seed=n))
        gt["images"].append({"id": image_id, "file_name": f"{n}.png", "width": 128, "height": 96})
        mask = np.zeros((96, 128), np.uint8)
        mask[20:60, 30:90] = 1
        gt["annotations"].append({"id": n + 1, "image_id": image_id, "iscrowd": 0, "segmentation": _rle(mask)})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    for k in (1, 2):
        out = propose(folder, tmp_path / f"s{k}.json", tiny_checkpoint, "--ann", tmp_path / "gt.json", "--shard", f"{k}/2")
        assert out.exit_code == 0, out.output
    merged = run("merge", tmp_path / "s1.json", tmp_path / "s2.json", "--out", tmp_path / "r.json")
    assert merged.exit_code == 0, merged.output
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["image_id"] for r in results if r["image_id"] in ("cat_001", 7, "7")] == [r["image_id"] for r in results]
    assert {json.dumps(r["image_id"]) for r in results} == {'"cat_001"', "7", '"7"'}
    evaluated = run("eval", tmp_path / "gt.json", tmp_path / "r.json")
    assert evaluated.exit_code == 0 and "3 images" in evaluated.flat, evaluated.output


def test_duplicate_image_ids_in_ann_are_refused_before_proposing(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        write_image(folder / name, draw_scene())
    gt = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    out = propose(folder, tmp_path / "r.json", tiny_checkpoint, "--ann", tmp_path / "gt.json")
    assert out.exit_code == 1 and "image id 1 is used by two images (a.png and b.png)" in out.flat
    assert not (tmp_path / "r.json").exists()


def test_images_are_found_by_content_and_other_files_are_named(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    bgr = cv2.cvtColor(draw_scene(), cv2.COLOR_RGB2BGR)
    write_image(folder / "plain.png", draw_scene())
    formats = {"photo.avif": ".avif", "anim.gif": ".gif", "jpeg_named.dat": ".jpg"}
    for name, ext in formats.items():
        ok, data = cv2.imencode(ext, bgr)
        if not ok:
            pytest.skip(f"the installed OpenCV cannot write {ext}")
        (folder / name).write_bytes(data.tobytes())
    (folder / "notes.txt").write_text("not a picture")
    (folder / "table.csv").write_text("a,b\n1,2\n")
    out = propose(folder, tmp_path / "r.json", tiny_checkpoint)
    assert out.exit_code == 0, out.output
    listed = sorted(im["file_name"] for im in json.loads((tmp_path / "r.images.json").read_text())["images"])
    assert listed == sorted(["plain.png", *formats])
    assert "ignored (not images) 2: notes.txt, table.csv" in out.flat


def test_a_heic_photo_is_named_as_an_unsupported_format(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "plain.png", draw_scene())
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    out = propose(folder, tmp_path / "r.json", tiny_checkpoint)
    assert out.exit_code == 0, out.output
    assert "skipped phone.heic: a HEIC file that the installed OpenCV cannot decode" in out.flat


@pytest.mark.parametrize("where", ["/proc/fastmask-cannot-exist/r.json", "FILE/r.json"])
def test_out_in_a_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, tiny_checkpoint, where):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", draw_scene())
    (tmp_path / "FILE").write_text("a file where a folder should be")
    out_path = Path(where.replace("FILE", str(tmp_path / "FILE")))
    out = propose(folder, out_path, tiny_checkpoint)
    lines = out.output.strip().splitlines()
    assert out.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: cannot write the results in")
    assert str(out_path.parent) in out.flat and "Internal error" not in out.output


def test_an_image_list_alone_serves_propose_ann_and_null_segmentations_are_boxes(tmp_path, tiny_checkpoint):
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", draw_scene())
    (tmp_path / "info.json").write_text(json.dumps({"images": [{"id": "test-1", "file_name": "a.png"}]}))  # no annotations
    out = propose(folder, tmp_path / "r.json", tiny_checkpoint, "--ann", tmp_path / "info.json")
    assert out.exit_code == 0, out.output
    assert {r["image_id"] for r in json.loads((tmp_path / "r.json").read_text())} == {"test-1"}

    data, results = clean_scene(images=1)
    boxes = [{"image_id": 1, "bbox": mask_utils.toBbox(mask_utils.frPyObjects(a["segmentation"], H, W)
                                                        if isinstance(a["segmentation"], list) else
                                                        {**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}
                                                        ).ravel()[:4].tolist(), "score": 0.9, "segmentation": None}
             for a in data["annotations"][:1]]
    (tmp_path / "gt.json").write_text(json.dumps(data))
    evaluation = evaluate(tmp_path / "gt.json", boxes)
    assert list(evaluation.results) == ["bbox"]


def test_polygons_on_an_image_without_a_usable_size_are_refused_by_eval(tmp_path):
    data, results = clean_scene(images=1)
    data["images"][0]["width"] = "160"  # a string: not a size
    (tmp_path / "both.json").write_text(json.dumps(data))  # its RLE objects give the size: evaluated
    assert run("eval", tmp_path / "both.json", _write(tmp_path / "r0.json", results)).exit_code == 0
    data["annotations"] = [a for a in data["annotations"] if isinstance(a["segmentation"], list)]  # polygons only
    (tmp_path / "gt.json").write_text(json.dumps(data))
    (tmp_path / "r.json").write_text(json.dumps(results))
    out = run("eval", tmp_path / "gt.json", tmp_path / "r.json")
    assert out.exit_code == 1 and "has no usable 'width' and 'height'" in out.flat and len(out.output.strip().splitlines()) == 1


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_size_from_rle_objects_and_polygons_as_written(tmp_path):
    """The size of an image without width and height comes from its good RLE objects (a broken one first
    is skipped, not believed); polygon coordinates are kept exactly (a float32 copy rasterises a quarter
    of COCO-style polygons differently); a self-crossing ring whose signed areas cancel covers pixels."""
    data, results = clean_scene()
    clean = copy.deepcopy(data)
    clean["annotations"] = [a for a in clean["annotations"] if not isinstance(a["segmentation"], list)]
    reference = pycocotools_metrics(clean, results)
    _size_only_in_rle(data, results)
    ours, notes = our_metrics(tmp_path, data, results)
    assert_same(ours, reference)
    assert any("RLE that does not decode" in n for n in notes)

    data, _ = clean_scene(seed=5, images=2)
    bowtie = [20, 20, 80, 80, 80, 20, 20, 80]  # a box with its corners in Z order: signed area 0
    rle = mask_utils.merge(mask_utils.frPyObjects([bowtie], H, W))
    data["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [bowtie],
                                "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
    exact = [{"image_id": a["image_id"], "score": 1.0 - 0.001 * n,
              "segmentation": _rle(mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], H, W))))}
             for n, a in enumerate(data["annotations"]) if isinstance(a["segmentation"], list)]
    ours, _ = our_metrics(tmp_path, data, exact)
    assert_same(ours, pycocotools_metrics(data, exact))
    assert mask_utils.area(rle) > 0 and ours["segm"]["AR@1000"] > 0.5

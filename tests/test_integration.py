"""End to end on shipped examples and, where present, the real COCO data in ../shared/data."""

import json
import shutil
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from support import SHARED_DATA
from support.cli import run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_readme_first_command_on_the_shipped_photos(tmp_path):
    """What README's first command does: the default weights over examples/photos, overlays beside."""
    out, vis = tmp_path / "results.json", tmp_path / "vis"
    result = run("propose", str(EXAMPLES / "photos"), "--out", str(out), "--vis", str(vis))
    assert result.exit_code == 0, result.output
    photos = sorted(p.name for p in (EXAMPLES / "photos").glob("*.jpg"))
    listing = json.loads((tmp_path / "results.images.json").read_text())
    assert [im["file_name"] for im in listing["images"]] == photos and len(photos) >= 3
    assert len(json.loads(out.read_text())) == 100 * len(photos)
    assert sorted(p.name for p in vis.iterdir()) == [".fastmask-output"] + [f"{name}.png" for name in photos]


def test_the_ann_example_on_the_drawn_scenes(tmp_path):
    """The --ann example: default weights, the drawn example scenes, their ground truth's image ids."""
    out = tmp_path / "results.json"
    result = run("propose", str(EXAMPLES / "images"), "--out", str(out),
                 "--ann", str(EXAMPLES / "annotations.json"))
    assert result.exit_code == 0, result.output
    gt = COCO(str(EXAMPLES / "annotations.json"))
    results = gt.loadRes(str(out))
    assert {a["image_id"] for a in results.anns.values()} == set(gt.getImgIds())
    assert len(results.anns) == 100 * len(gt.getImgIds())


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (real COCO subset) is not present on this machine")
def test_real_coco_images_with_ground_truth_ids(tmp_path):
    ann = SHARED_DATA / "annotations" / "instances_val.json"
    gt = json.loads(ann.read_text())
    folder = tmp_path / "val"
    folder.mkdir()
    picked = gt["images"][:3]
    for im in picked:
        shutil.copy(SHARED_DATA / "val" / im["file_name"], folder / im["file_name"])
    out = tmp_path / "r.json"
    result = run("propose", str(folder), "--out", str(out), "--ann", str(ann), "--top-k", "50")
    assert result.exit_code == 0, result.output
    results = COCO(str(ann)).loadRes(str(out))
    assert {a["image_id"] for a in results.anns.values()} == {im["id"] for im in picked}
    for image_id in {im["id"] for im in picked}:
        info = results.imgs[image_id]
        for a in results.loadAnns(results.getAnnIds(imgIds=image_id)):
            assert a["segmentation"]["size"] == [info["height"], info["width"]]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (real COCO subset) is not present on this machine")
def test_eval_proposes_and_measures_on_real_images(tmp_path):
    ann = SHARED_DATA / "annotations" / "instances_val.json"
    folder = tmp_path / "val"
    folder.mkdir()
    for im in json.loads(ann.read_text())["images"][:2]:
        shutil.copy(SHARED_DATA / "val" / im["file_name"], folder / im["file_name"])
    result = run("eval", str(ann), str(tmp_path / "r.json"), "--images", str(folder), "--top-k", "100",
                 "--allow-missing", "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["segm"]["images"] == 2 and metrics["bbox"]["proposals"] == 200
    assert (tmp_path / "p.png").stat().st_size > 0

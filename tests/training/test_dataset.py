"""Training data: bad ground truth gives clear messages; augmentation keeps masks on their pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastmask_cli.errors import FastMaskError
from fastmask_cli.training.dataset import Augment, CocoInstances, Sample, copy_paste
from support.coco_data import write_shapes_dataset

NO_AUG = Augment(size=192, jitter=(1.0, 1.0), flip=False, copy_paste=0.0)


@pytest.fixture
def shapes(tmp_path: Path) -> tuple[Path, Path]:
    return write_shapes_dataset(tmp_path / "shapes", images=4)


def edit_gt(gt: Path, change) -> Path:
    data = json.loads(gt.read_text())
    change(data)
    gt.write_text(json.dumps(data))
    return gt


def test_not_json_and_not_coco_are_one_line_errors(tmp_path: Path, shapes) -> None:
    _, images = shapes
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FastMaskError, match="is not JSON"):
        CocoInstances(tmp_path / "bad.json", images)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FastMaskError, match="is not COCO"):
        CocoInstances(tmp_path / "list.json", images)
    with pytest.raises(FastMaskError, match="not found"):
        CocoInstances(tmp_path / "missing.json", images)


def test_missing_images_are_skipped_with_a_note_or_refused_when_all_missing(tmp_path: Path, shapes) -> None:
    gt, images = shapes
    (images / "shapes_001.png").unlink()
    dataset = CocoInstances(gt, images)
    assert len(dataset) == 3
    assert any("1 images listed" in n and "shapes_001.png" in n for n in dataset.report.notes)
    with pytest.raises(FastMaskError, match="none of the 4 images"):
        CocoInstances(gt, tmp_path)


def test_one_picture_listed_under_two_ids_is_refused(shapes) -> None:
    gt, images = shapes

    def twice(data: dict) -> None:  # the second entry names the first's file; each keeps some of the objects
        first, second = data["images"][:2]
        second["file_name"] = first["file_name"]

    edit_gt(gt, twice)
    with pytest.raises(FastMaskError, match=r"lists shapes_000.png twice \(image ids 1 and 2\): merge its entries"):
        CocoInstances(gt, images)


def test_degenerate_polygons_unknown_ids_and_empty_images(shapes) -> None:
    gt, images = shapes

    data = json.loads(gt.read_text())
    already_empty = len({im["id"] for im in data["images"]} - {a["image_id"] for a in data["annotations"]})
    first_image = [a for a in data["annotations"] if a["image_id"] == 1]

    def spoil(data: dict) -> None:
        for ann in data["annotations"]:
            if ann["image_id"] == 1:  # two points, or three collinear ones (zero area)
                ann["segmentation"] = [[10, 10, 20, 20]] if ann["id"] % 2 else [[10, 10, 20, 20, 30, 30]]
        data["annotations"].append({"id": 99, "image_id": 12345, "segmentation": [[0, 0, 9, 0, 9, 9]], "iscrowd": 0})
        data["annotations"].append({"id": 98, "image_id": 3, "bbox": [500, 500, 10, 10], "iscrowd": 0})  # box only, off-image

    dataset = CocoInstances(edit_gt(gt, spoil), images, NO_AUG)
    notes = " | ".join(dataset.report.notes)
    assert f"{len(first_image)} annotations skipped: degenerate polygon" in notes
    assert "1 annotations skipped: on an image id that no image has" in notes and "1 annotations skipped: no mask" in notes
    assert f"{already_empty + 1} images have no usable object" in notes  # image 1 lost all its shapes
    sample = dataset[0]
    assert sample.error is None and len(sample.masks) == 0  # still a negative-only training image


def test_unreadable_image_becomes_a_sample_with_an_error(shapes) -> None:
    gt, images = shapes
    (images / "shapes_002.png").write_bytes(b"not a png")
    sample = CocoInstances(gt, images, NO_AUG)[2]
    assert sample.error and "not a decodable image" in sample.error and sample.file == "shapes_002.png"


def test_masks_follow_their_pixels_through_scale_flip_and_crop(shapes) -> None:
    gt, images = shapes
    dataset = CocoInstances(gt, images, Augment(size=256, jitter=(0.8, 1.4), crop=200, flip=True, copy_paste=0.0))
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            assert max(sample.image.shape[:2]) <= 200
            for mask in sample.masks.astype(bool):
                # shapes are bright (>= 150 per channel) on a dark (< 90) background
                assert sample.image[mask].min(axis=1).mean() > 120
                assert sample.image[~mask].min(axis=1).mean() < sample.image[mask].min(axis=1).mean()


def test_samples_are_reproducible_per_epoch_and_differ_across_epochs(shapes) -> None:
    gt, images = shapes
    dataset = CocoInstances(gt, images, Augment(size=192, jitter=(0.5, 1.5), copy_paste=0.5), seed=3)
    first = dataset[1]
    again = dataset[1]
    assert np.array_equal(first.image, again.image) and np.array_equal(first.masks, again.masks)
    dataset.set_epoch(1)
    assert first.image.shape != dataset[1].image.shape or not np.array_equal(first.image, dataset[1].image)


def test_copy_paste_adds_objects_and_hides_what_they_cover() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((50, 50, 3), np.uint8)
    below = np.zeros((1, 50, 50), np.uint8)
    below[0, 10:30, 10:30] = 1
    source_masks = np.zeros((4, 50, 50), np.uint8)
    source_masks[:, 20:40, 20:40] = 1  # four copies, so at least one is drawn (each with probability 1/2)
    source = Sample(np.full((50, 50, 3), 200, np.uint8), source_masks, np.zeros(4, bool))
    merged = copy_paste(Sample(image, below, np.zeros(1, bool)), source, rng)
    assert len(merged.masks) >= 2
    assert merged.masks[0, 20:30, 20:30].sum() == 0 and merged.masks[0, 10:20, 10:20].all()
    assert (merged.image[20:40, 20:40] == 200).all() and (merged.image[:20, :20] == 0).all()


def test_polygons_beyond_the_image_are_clipped_or_dropped(shapes) -> None:
    gt, images = shapes

    def add(data: dict) -> None:
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
        data["annotations"].append({"id": 90, "image_id": 1, "iscrowd": 0, "segmentation": [[-40, -40, 60, -40, 60, 50, -40, 50]]})
        data["annotations"].append({"id": 91, "image_id": 1, "iscrowd": 0, "segmentation": [[900, 900, 990, 900, 990, 990]]})

    sample = CocoInstances(edit_gt(gt, add), images, NO_AUG)[0]
    assert len(sample.masks) == 1  # the polygon wholly outside the image leaves nothing to learn
    # clipped to the image, and a positive like any object COCO annotates at the border (only crops make "ignore")
    assert sample.masks[0].sum() == 60 * 50 and not sample.ignore[0]

"""Paste-back as crops, tight boxes, COCO RLE from crops, suppression: equal to the dense reference."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fastmask_cli.inference.postprocess import box_iou, decode_masks, encode_crops, greedy_nms, mask_nms, paste_crops
from support.reference_masks import dense_finish, dense_mask_nms, encode_masks, paste_binary


def random_binary(k, m, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((k, m, m)) > 0.5).float()


def pasted(masks, boxes, height, width, threshold=0.5):
    """(K, H, W) bool image of each mask, placed from the crops of `paste_crops`."""
    out = torch.zeros((masks.shape[0], width, height), dtype=torch.bool)
    for crops in paste_crops(masks, boxes, height, width, threshold):
        for binary, (x, y), i in zip(crops.binary, crops.origin.tolist(), crops.index.tolist()):
            w, h = min(binary.shape[0], width - x), min(binary.shape[1], height - y)
            out[i, x : x + w, y : y + h] |= binary[:w, :h]
    return out.transpose(1, 2)


def test_paste_at_mask_resolution_lands_on_the_exact_pixels():
    masks = random_binary(2, 40)
    boxes = torch.tensor([[16.0, 24.0, 56.0, 64.0], [50.0, 5.0, 90.0, 45.0]])
    expected = torch.zeros(2, 100, 120, dtype=torch.bool)
    expected[0, 24:64, 16:56] = masks[0] > 0.5
    expected[1, 5:45, 50:90] = masks[1] > 0.5
    assert torch.equal(pasted(masks, boxes, 100, 120), expected)


def test_windows_hanging_over_the_border_are_clipped():
    masks = random_binary(3, 40, seed=1)
    boxes = torch.tensor([[-10.0, -10.0, 30.0, 30.0], [70.0, 75.0, 110.0, 115.0], [-5.0, 60.0, 35.0, 100.0]])
    expected = torch.zeros(3, 90, 80, dtype=torch.bool)
    expected[0, 0:30, 0:30] = masks[0, 10:40, 10:40] > 0.5  # top-left corner cut off
    expected[1, 75:90, 70:80] = masks[1, 0:15, 0:10] > 0.5  # bottom-right corner cut off
    expected[2, 60:90, 0:35] = masks[2, 0:30, 5:40] > 0.5
    assert torch.equal(pasted(masks, boxes, 90, 80), expected)


def test_upscaled_paste_keeps_the_shape():
    mask = torch.zeros(1, 40, 40)
    mask[0, :20, :20] = 1.0  # top-left quadrant of the window
    expected = torch.zeros(1, 120, 120, dtype=torch.bool)
    expected[0, 20:60, 10:50] = True
    assert torch.equal(pasted(mask, torch.tensor([[10.0, 20.0, 90.0, 100.0]]), 120, 120), expected)


def test_only_what_can_reach_the_threshold_is_computed():
    mask = torch.zeros(2, 40, 40)
    mask[0, 10:12, 30:33] = 0.9  # a small blob in a window of 400 x 400 pixels
    crops = paste_crops(mask, torch.tensor([[0.0, 0.0, 400.0, 400.0], [0.0, 0.0, 400.0, 400.0]]), 400, 400, 0.5)
    assert len(crops) == 1 and crops[0].index.tolist() == [0]  # the empty mask is not pasted at all
    width, height = crops[0].binary.shape[1:]
    assert width * height < 60 * 40  # cells 30..32 x 10..11 at 10 px a cell, and a margin: not 400 x 400


def test_masks_just_below_the_threshold_are_pasted_and_found_empty():
    probs = torch.full((3, 8, 8), 0.5 - 1e-5)  # near enough to be computed, never on
    rles, tight, areas = encode_crops(paste_crops(probs, torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 3), 30, 30, 0.5), 3, 30, 30)
    assert rles == [None] * 3 and not tight.any() and not areas.any()


def test_window_wholly_outside_the_image_pastes_nothing():
    assert paste_crops(torch.ones(1, 8, 8), torch.tensor([[200.0, 200.0, 240.0, 240.0]]), 50, 50, 0.5) == []


def drawn_candidates(count: int, height: int, width: int, seed: int = 0):
    """Mask probabilities and window boxes as the decoder gives them, with the hard cases: windows over
    every border and corner, windows larger than the image, empty masks, single-pixel masks, masks
    that are full inside their window, and probabilities that sit exactly on the threshold."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(count, 16, 16, generator=gen) ** 3  # sparse-ish, some empty after thresholding
    probs[::7] = 0.0  # empty
    probs[1::7] = 0.0
    probs[1::7, 8, 8] = 1.0  # one cell: a pixel or a few
    probs[2::7] = 1.0  # full window
    probs[3::7, 4:9, 4:9] = 0.5  # exactly on the threshold
    corner = torch.rand(count, 2, generator=gen) * torch.tensor([width + 120.0, height + 120.0]) - 60
    side = torch.rand(count, 1, generator=gen) * 1.5 * max(height, width) + 2
    boxes = torch.cat([corner, corner + side], dim=1)
    boxes[4::7] = torch.tensor([-20.0, -30.0, width + 40.0, height + 50.0])  # larger than the image
    boxes[5::7, :2] = torch.tensor([width - 3.0, height - 2.0])  # a sliver at the bottom-right corner
    boxes[5::7, 2:] = boxes[5::7, :2] + 50
    boxes[6::7] = torch.tensor([0.0, 0.0, 16.0, height])  # full image height: a crop column ends where the next begins
    return probs, boxes


@pytest.mark.parametrize("height, width, seed", [(150, 200, 0), (37, 53, 1), (64, 64, 2), (1, 9, 3)])
def test_crops_encode_byte_for_byte_as_the_dense_path(height: int, width: int, seed: int) -> None:
    probs, boxes = drawn_candidates(70, height, width, seed)
    probs[6::7, :, :3] = 1.0  # full-height masks touching the left border, one column or several
    expected_rles, expected_boxes, kept = dense_finish(probs, boxes, height, width, 0.5)
    rles, tight, areas = encode_crops(paste_crops(probs, boxes, height, width, 0.5), 70, height, width)
    assert [i for i, r in enumerate(rles) if r is not None] == kept.tolist()
    assert [rles[i] for i in kept] == expected_rles  # the same strings, sizes and order
    assert np.array_equal(tight[kept].numpy(), expected_boxes)
    assert areas[kept].tolist() == mask_utils.area([{**r, "counts": r["counts"].encode()} for r in expected_rles]).tolist()
    assert all(areas[i] == 0 and not tight[i].any() for i in range(70) if rles[i] is None)


def test_full_masks_over_the_whole_image_encode_as_one_run() -> None:
    rles, tight, areas = encode_crops(paste_crops(torch.ones(3, 8, 8), torch.tensor([[0.0, 0.0, 30.0, 20.0]] * 3), 20, 30, 0.5),
                                      3, 20, 30)
    assert [decode_masks([r]).all() for r in rles] == [True] * 3 and areas.tolist() == [600] * 3
    assert tight.tolist() == [[0, 0, 30, 20]] * 3


def test_threshold_zero_turns_on_the_clipped_box_and_nothing_of_a_chunk_s_padding() -> None:
    # (the dense path of 0.1 kept an empty mask with a box for a window just past the right border here)
    probs, boxes = drawn_candidates(20, 60, 80, seed=5)
    rles, tight, _ = encode_crops(paste_crops(probs, boxes, 60, 80, 0.0), 20, 60, 80)
    for rle, box in zip(rles, boxes.tolist()):
        x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        x1, y1 = min(80, int(np.ceil(box[2]))), min(60, int(np.ceil(box[3])))
        expected = np.zeros((60, 80), dtype=bool)
        expected[y0:y1, x0:x1] = True
        assert (rle is None and not expected.any()) or np.array_equal(decode_masks([rle])[0], expected)


def test_rle_round_trip_and_area():
    binary = torch.from_numpy(np.random.default_rng(3).random((5, 37, 53)) > 0.7)
    rles = encode_masks(binary)
    assert np.array_equal(decode_masks(rles), binary.numpy())


def test_box_iou_and_greedy_suppression():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 10, 10], [0, 0, 5, 10]], dtype=np.float64)
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(90 / 110)
    assert iou[0, 2] == 0 and iou[0, 3] == pytest.approx(0.5)
    assert greedy_nms(iou, 0.8).tolist() == [0, 2, 3]
    assert greedy_nms(iou, 0.4).tolist() == [0, 2]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
def test_mask_nms_keeps_what_the_full_iou_matrix_keeps(threshold: float) -> None:
    # near-duplicate windows: discs in windows shifted and rescaled a little, some exactly repeated
    gen = torch.Generator().manual_seed(1)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    radius = 3 + 4 * torch.rand(48, 1, 1, generator=gen)
    probs = (((ys - 7.5) ** 2 + (xs - 7.5) ** 2).sqrt() < radius).float()
    shift = (torch.rand(48, 2, generator=gen) * 12).round()
    size = 60 + (torch.rand(48, 1, generator=gen) * 15).round()
    boxes = torch.cat([20 + shift, 20 + shift + size], dim=1)
    boxes[1::4], probs[1::4] = boxes[::4], probs[::4]
    rles, tight, areas = encode_crops(paste_crops(probs, boxes, 120, 140, 0.5), 48, 120, 140)
    assert all(r is not None for r in rles)
    expected = dense_mask_nms(rles, threshold)
    assert 1 < len(expected) < 48  # some suppressed, some kept: the test sees both
    assert mask_nms(rles, tight.numpy(), areas, threshold).tolist() == expected.tolist()


def test_the_old_dense_paste_is_the_reference_it_claims_to_be() -> None:
    """The reference itself: what it pastes is the mask resized to its box (a check that it is not trivially equal)."""
    masks = random_binary(1, 40)
    binary, tight = paste_binary(masks, torch.tensor([[16.0, 24.0, 56.0, 64.0]]), 100, 120, 0.5)
    assert torch.equal(binary[0, 24:64, 16:56], masks[0] > 0.5) and binary.sum() == (masks[0] > 0.5).sum()

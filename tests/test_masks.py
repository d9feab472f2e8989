"""Paste-back, tight boxes, RLE round trip, suppression."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from fastmask_cli.masks import box_iou, decode_masks, encode_masks, greedy_nms, mask_boxes, paste_binary, paste_masks


def random_binary(k, m, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((k, m, m)) > 0.5).float()


def test_paste_at_mask_resolution_lands_on_the_exact_pixels():
    masks = random_binary(2, 40)
    boxes = torch.tensor([[16.0, 24.0, 56.0, 64.0], [50.0, 5.0, 90.0, 45.0]])
    pasted = paste_masks(masks, boxes, height=100, width=120)
    assert pasted.shape == (2, 100, 120)
    expected = torch.zeros(2, 100, 120)
    expected[0, 24:64, 16:56] = masks[0]
    expected[1, 5:45, 50:90] = masks[1]
    assert torch.allclose(pasted, expected, atol=1e-6)


def test_windows_hanging_over_the_border_are_clipped():
    masks = random_binary(3, 40, seed=1)
    boxes = torch.tensor([[-10.0, -10.0, 30.0, 30.0], [70.0, 75.0, 110.0, 115.0], [-5.0, 60.0, 35.0, 100.0]])
    pasted = paste_masks(masks, boxes, height=90, width=80)
    expected = torch.zeros(3, 90, 80)
    expected[0, 0:30, 0:30] = masks[0, 10:40, 10:40]  # top-left corner cut off
    expected[1, 75:90, 70:80] = masks[1, 0:15, 0:10]  # bottom-right corner cut off
    expected[2, 60:90, 0:35] = masks[2, 0:30, 5:40]
    assert torch.allclose(pasted, expected, atol=1e-6)


def test_upscaled_paste_keeps_the_shape():
    mask = torch.zeros(1, 40, 40)
    mask[0, :20, :20] = 1.0  # top-left quadrant of the window
    pasted = paste_masks(mask, torch.tensor([[10.0, 20.0, 90.0, 100.0]]), height=120, width=120)
    expected = torch.zeros(120, 120, dtype=torch.bool)
    expected[20:60, 10:50] = True
    assert torch.equal(pasted[0] >= 0.5, expected)


def test_window_wholly_outside_the_image_pastes_nothing():
    pasted = paste_masks(torch.ones(1, 8, 8), torch.tensor([[200.0, 200.0, 240.0, 240.0]]), 50, 50)
    assert pasted.sum() == 0


def test_tight_boxes_and_empty_masks():
    binary = torch.zeros(3, 20, 30, dtype=torch.bool)
    binary[0, 5:9, 10:20] = True
    binary[1, 0, 29] = True
    boxes, nonempty = mask_boxes(binary)
    assert nonempty.tolist() == [True, True, False]
    assert boxes[0].tolist() == [10, 5, 10, 4]
    assert boxes[1].tolist() == [29, 0, 1, 1]
    assert boxes[2].tolist() == [0, 0, 0, 0]


def test_rle_round_trip_and_area():
    binary = torch.from_numpy(np.random.default_rng(3).random((5, 37, 53)) > 0.7)
    rles = encode_masks(binary)
    assert all(isinstance(r["counts"], str) and r["size"] == [37, 53] for r in rles)
    assert np.array_equal(decode_masks(rles), binary.numpy())
    as_bytes = [{"size": r["size"], "counts": r["counts"].encode()} for r in rles]
    assert mask_utils.area(as_bytes).tolist() == binary.sum(dim=(1, 2)).tolist()
    assert encode_masks(binary[:0]) == []


def test_box_iou_and_greedy_suppression():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 10, 10], [0, 0, 5, 10]], dtype=np.float64)
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(90 / 110)
    assert iou[0, 2] == 0 and iou[0, 3] == pytest.approx(0.5)
    assert greedy_nms(iou, 0.8).tolist() == [0, 2, 3]
    assert greedy_nms(iou, 0.4).tolist() == [0, 2]


def test_paste_binary_equals_thresholded_paste_and_finds_tight_boxes() -> None:
    torch.manual_seed(0)
    probs = torch.rand(40, 16, 16) ** 3  # sparse-ish masks, some empty after thresholding
    probs[5] = 0.0
    corner = torch.rand(40, 2) * torch.tensor([260.0, 200.0]) - 60
    side = torch.rand(40, 1) * 150 + 20
    boxes = torch.cat([corner, corner + side], dim=1)
    reference = paste_masks(probs, boxes, 150, 200) >= 0.5
    binary, tight = paste_binary(probs, boxes, 150, 200, 0.5, chunk=7)
    assert torch.equal(binary, reference)
    expected, nonempty = mask_boxes(reference)
    assert torch.equal(tight, expected) and not nonempty[5]

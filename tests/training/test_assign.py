"""Ground-truth assignment (paper §5.2) and window targets, checked against hand-computed windows."""

from __future__ import annotations

import torch

from fastmask_cli.modeling.windows import WindowGrid
from fastmask_cli.training.assign import IGNORE, NEGATIVE, AssignRule, assign_windows, window_targets

# One stream: strides 16, 32, 64 give windows of 160, 320, 640 px (pad 5 cells, 10-cell windows).
GRID = WindowGrid.for_input(320, 320, [16, 32, 64], pad=5, window=10)


def box_at(cx: float, cy: float, side: float) -> torch.Tensor:
    return torch.tensor([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])


def positives(labels: torch.Tensor) -> set[tuple[int, int, int]]:
    level, ys, xs = GRID.locate((labels >= 0).nonzero().squeeze(1))
    return set(zip(level.tolist(), ys.tolist(), xs.tolist()))


def window_centre(i: int, j: int, stride: int = 16) -> tuple[float, float]:
    return (j - 5) * stride + 5 * stride, (i - 5) * stride + 5 * stride


def test_centred_object_of_six_tenths_lands_on_expected_level_and_cells() -> None:
    cx, cy = window_centre(9, 9)  # (144, 144): the centre of window (9, 9) at stride 16
    labels = assign_windows(GRID, box_at(cx, cy, 0.6 * 160), torch.zeros(1, dtype=torch.bool))
    # centre tolerance is 10% of 160 px = one 16-px cell each way: windows 8..10 on each axis, level 0 only
    assert positives(labels) == {(0, i, j) for i in (8, 9, 10) for j in (8, 9, 10)}
    assert set(labels[labels >= 0].tolist()) == {0}
    assert (labels == NEGATIVE).sum() == GRID.num_windows - 9


def test_too_large_too_small_and_off_centre_are_rejected() -> None:
    cx, cy = window_centre(9, 9)
    no_crowd = torch.zeros(1, dtype=torch.bool)
    large = positives(assign_windows(GRID, box_at(cx, cy, 0.85 * 160), no_crowd))
    assert large and all(level != 0 for level, _, _ in large)  # 0.85 of 160 px is 0.42 of the 320-px windows
    assert not positives(assign_windows(GRID, box_at(cx, cy, 0.35 * 160), no_crowd))  # below every level's range
    shifted = positives(assign_windows(GRID, box_at(cx + 0.15 * 160, cy, 0.6 * 160), no_crowd))
    assert (0, 9, 9) not in shifted  # 24 px off the centre of window (9, 9)
    assert (0, 9, 11) in shifted  # ...but centred enough for the window whose centre is 8 px away


def test_crowd_is_never_positive_and_its_windows_are_ignored() -> None:
    cx, cy = window_centre(9, 9)
    labels = assign_windows(GRID, box_at(cx, cy, 0.6 * 160), torch.ones(1, dtype=torch.bool))
    assert not (labels >= 0).any()
    level, ys, xs = GRID.locate(torch.arange(GRID.num_windows))
    at = lambda lv, i, j: int(labels[((level == lv) & (ys == i) & (xs == j)).nonzero().item()])  # noqa: E731
    assert at(0, 9, 9) == IGNORE
    assert at(0, 0, 0) == NEGATIVE  # the window at the top-left corner does not reach the crowd


def test_nearest_centre_wins_when_two_objects_qualify() -> None:
    cx, cy = window_centre(9, 9)
    boxes = torch.cat([box_at(cx + 12, cy, 96), box_at(cx - 4, cy, 90)])
    labels = assign_windows(GRID, boxes, torch.zeros(2, dtype=torch.bool))
    level, ys, xs = GRID.locate(torch.arange(GRID.num_windows))
    index = ((level == 0) & (ys == 9) & (xs == 9)).nonzero().item()
    assert labels[index] == 1


def test_size_range_is_configurable() -> None:
    cx, cy = window_centre(9, 9)
    original = AssignRule(size_range=(0.42, 0.68))
    assert not positives(assign_windows(GRID, box_at(cx, cy, 0.75 * 160), torch.zeros(1, dtype=torch.bool), original))
    assert positives(assign_windows(GRID, box_at(cx, cy, 0.75 * 160), torch.zeros(1, dtype=torch.bool)))


def test_window_targets_crop_the_mask_and_box_into_the_window() -> None:
    masks = torch.zeros(1, 320, 320, dtype=torch.uint8)
    masks[0, 96:192, 96:192] = 1  # a 96-px square, box (96, 96, 192, 192)
    boxes = torch.tensor([[96.0, 96.0, 192.0, 192.0]])
    window = torch.tensor([[64.0, 64.0, 224.0, 224.0]])  # window (9, 9) at stride 16
    segment, attention = window_targets(masks, boxes, torch.tensor([0]), window, mask_size=40, cells=10)
    expected = torch.zeros(40, 40)
    expected[8:32, 8:32] = 1  # (96 - 64) / 4 px per mask pixel = 8 .. (192 - 64) / 4 = 32
    assert torch.allclose(segment[0], expected)
    cells = torch.zeros(10, 10)
    cells[2:8, 2:8] = 1  # 16-px cells: 32 / 16 = 2 .. 128 / 16 = 8
    assert torch.allclose(attention[0], cells)


def test_window_targets_are_fractional_at_partial_pixels_and_zero_off_image() -> None:
    masks = torch.ones(1, 100, 100, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    window = torch.tensor([[-60.0, -60.0, 100.0, 100.0]])  # hangs 60 px over the top-left border
    segment, _ = window_targets(masks, boxes, torch.tensor([0]), window, mask_size=16, cells=10)
    assert segment[0, :6, :].abs().max() == 0  # mask rows 0..5 cover y in [-60, 0): outside the image
    assert torch.allclose(segment[0, 6:, 6:], torch.ones(10, 10))

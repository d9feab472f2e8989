"""Window geometry: levels, feature sizes, window boxes in image pixels, flat indexing."""

import pytest
import torch

from fastmask_cli.modeling.windows import Level, WindowGrid, feature_size, level_strides, stream_and_depth
from support import tiny_model


def test_level_strides_follow_the_paper():
    assert level_strides(1, 4) == [16, 32, 64, 128]
    # trained with 7 levels: 4 on the stride-2 stream, 3 on the stride-3 stream (§5.2)
    assert level_strides(2, 7) == [16, 24, 32, 48, 64, 96, 128]
    assert level_strides(2, 8) == [16, 24, 32, 48, 64, 96, 128, 192]
    # the stride-8 level comes first and counts as a scale
    assert level_strides(1, 5, stride8=True) == [8, 16, 32, 64, 128]
    assert level_strides(2, 4, stride8=True) == [8, 16, 24, 32]
    assert level_strides(1, 1, stride8=True) == [8]
    assert [stream_and_depth(s) for s in (16, 24, 96, 128)] == [(0, 0), (1, 0), (1, 2), (0, 3)]
    with pytest.raises(ValueError):
        stream_and_depth(40)


@pytest.mark.parametrize("height,width", [(96, 128), (101, 77), (33, 200)])
def test_feature_sizes_match_the_network_at_every_stride(height, width):
    model = tiny_model(scales=8)
    with torch.no_grad():
        pyramid = model(torch.rand(1, 3, height, width) * 255, scales=8)
    expected = WindowGrid.for_input(height, width, level_strides(2, 8), model.config.window_pad, model.config.window)
    for level, feature, scores in zip(expected.levels, pyramid.features, pyramid.scores):
        assert (level.feat_h, level.feat_w) == (feature_size(height, level.stride), feature_size(width, level.stride))
        assert feature.shape[2:] == (level.padded_h, level.padded_w)
        assert scores.shape[1:] == (level.grid_h, level.grid_w)
    assert pyramid.grid.num_windows == expected.num_windows


@pytest.mark.parametrize("stride", level_strides(2, 8))
def test_window_box_in_image_pixels_at_every_stride(stride):
    level = Level(stride, feat_h=20, feat_w=30, pad=5, window=10)
    grid = WindowGrid([level])
    # window (0, 0) is centred on the image's top-left corner: it starts pad cells before it
    i, j = 7, 9
    box = grid.boxes(torch.tensor([i * level.grid_w + j]))[0].tolist()
    assert box == [(j - 5) * stride, (i - 5) * stride, (j - 5) * stride + 10 * stride, (i - 5) * stride + 10 * stride]
    assert grid.boxes(torch.tensor([0]))[0].tolist() == [-5 * stride, -5 * stride, 5 * stride, 5 * stride]
    # windows step by one stride, and the last window is centred on the last cell's far edge
    boxes = grid.boxes(torch.arange(level.num_windows))
    assert torch.all(boxes[1:level.grid_w, 0] - boxes[: level.grid_w - 1, 0] == stride)
    assert boxes[-1].tolist()[:2] == [(30 - 5) * stride, (20 - 5) * stride]
    assert torch.all(boxes[:, 2] - boxes[:, 0] == 10 * stride)


def test_small_levels_are_padded_to_one_window():
    level = Level(128, feat_h=1, feat_w=2, pad=0, window=10)
    assert (level.padded_h, level.padded_w, level.num_windows) == (10, 10, 1)


def test_locate_inverts_flat_indices_across_levels():
    grid = WindowGrid([Level(16, 8, 12, 2, 10), Level(24, 5, 8, 2, 10), Level(32, 4, 6, 5, 10)])
    flat = torch.arange(grid.num_windows)
    level, ys, xs = grid.locate(flat)
    rebuilt = grid.offsets[level] + ys * torch.tensor([lv.grid_w for lv in grid.levels])[level] + xs
    assert torch.equal(rebuilt, flat)
    assert level.tolist() == sorted(level.tolist())
    for index, lv in enumerate(grid.levels):
        assert int((level == index).sum()) == lv.num_windows
        assert int(ys[level == index].max()) == lv.grid_h - 1

"""The network: every body stream, neck and head option runs and learns; torchvision names load."""

from pathlib import Path

import pytest
import torch

from fastmask_cli import FastMask, FastMaskError
from fastmask_cli.modeling.bodies import load_imagenet
from fastmask_cli.modeling.bodies.resnet import ResNetBody as Body
from fastmask_cli.modeling.checkpoint import load_network
from fastmask_cli.modeling.config import PRESETS, FastMaskConfig
from fastmask_cli.modeling.windows import WindowGrid, level_strides
from support import TINY, tiny_model


@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("neck", ["residual", "avgpool", "maxpool", "feedforward"])
@pytest.mark.parametrize("head", ["attentional", "standard"])
def test_every_option_runs_forward_and_backward(streams, neck, head):
    model = tiny_model(streams=streams, neck=neck, head=head).train()
    pyramid = model(torch.rand(2, 3, 96, 128) * 255, scales=4)
    assert [f.shape[1] for f in pyramid.features] == [TINY.reduce_channels] * 4
    flat = torch.topk(pyramid.flat_scores()[1], 5).indices
    masks, attention = model.decode(pyramid, torch.ones_like(flat), flat)
    assert masks.shape == (5, TINY.mask_size, TINY.mask_size)
    assert (attention is None) == (head == "standard")
    loss = pyramid.flat_scores().mean() + masks.mean() + (0 if attention is None else attention.mean())
    loss.backward()
    assert model.body.conv1.weight.grad.abs().sum() > 0
    assert model.head.mask.fc1.weight.grad.abs().sum() > 0
    if neck in ("residual", "feedforward"):
        assert model.neck.conv3x3.weight.grad is not None


def test_scale_count_is_a_runtime_knob():
    model = tiny_model()
    image = torch.rand(1, 3, 96, 128) * 255
    counts = {}
    with torch.no_grad():
        for scales in (1, 3, 5, 8):
            pyramid = model(image, scales=scales)
            expected = WindowGrid.for_input(96, 128, level_strides(2, scales), TINY.window_pad, TINY.window)
            assert [lv.stride for lv in pyramid.grid.levels] == level_strides(2, scales)
            assert pyramid.flat_scores().shape == (1, expected.num_windows)
            counts[scales] = pyramid.grid.num_windows
    assert counts[1] < counts[3] < counts[5] < counts[8]
    # levels already present are the same with more scales: the neck weights are shared
    with torch.no_grad():
        few, many = model(image, scales=3), model(image, scales=8)
    for a, b in zip(few.scores, many.scores[:3]):
        assert torch.allclose(a, b)


def test_dense_scores_equal_a_fully_connected_layer_on_each_window():
    model = tiny_model()
    with torch.no_grad():
        pyramid = model(torch.rand(1, 3, 96, 128) * 255, scales=4)
        flat = torch.tensor([0, 7, pyramid.grid.num_windows // 2, pyramid.grid.num_windows - 1])
        windows = model.window_features(pyramid, torch.zeros_like(flat), flat)
        level, ys, xs = pyramid.grid.locate(flat)
        score = model.head.score
        for k in range(len(flat)):
            crop = pyramid.features[level[k]][0, :, ys[k] : ys[k] + 10, xs[k] : xs[k] + 10]
            assert torch.equal(windows[k], crop)
            pooled = torch.nn.functional.max_pool2d(crop[None], 2, stride=1)[0]  # (C, 9, 9)
            fc1 = score.fc1.weight  # (hidden, C, 5, 5), dilation 2: taps at even offsets
            hidden = torch.relu((fc1 * pooled[None, :, ::2, ::2]).sum(dim=(1, 2, 3)) + score.fc1.bias)
            by_hand = (score.fc2.weight.view(-1) * hidden).sum() + score.fc2.bias
            assert torch.allclose(pyramid.scores[level[k]][0, ys[k], xs[k]], by_hand, atol=1e-5)


def test_stride8_level_is_the_bodys_stride8_map_through_its_own_reduce():
    plain = tiny_model(streams=1, scales=3)
    model = FastMask(plain.config.with_stride8())
    assert model.config.scales == 4 and model.config.train_scales == TINY.train_scales + 1
    assert load_network(model, plain.state_dict(), Path("plain.pt")) == ["reduce8"]  # what starts fresh
    model.eval()
    image = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        pyramid, before = model(image), plain(image)
        bottom = model.body.bottom(model.normalize(image))
    assert [lv.stride for lv in pyramid.grid.levels] == [8, 16, 32, 64]
    assert pyramid.grid.num_windows == WindowGrid.for_input(96, 128, [8, 16, 32, 64], TINY.window_pad, TINY.window).num_windows
    bn, pad = model.norm.bn, TINY.window_pad
    expected = torch.nn.functional.batch_norm(model.reduce8(bottom), bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    assert torch.allclose(pyramid.features[0][..., pad : pad + 12, pad : pad + 16], expected, atol=1e-5)
    for a, b in zip(pyramid.scores[1:], before.scores):  # the coarser levels are the plain model's
        assert torch.equal(a, b)
    model.train()
    pyramid = model(image)
    pyramid.scores[0].sum().backward()
    assert model.reduce8.weight.grad.abs().sum() > 0
    with pytest.raises(FastMaskError, match="no place"):
        load_network(plain, model.state_dict(), Path("stride8.pt"))
    # the image-pyramid baseline has the same levels (its stride-8 level: the image up-sampled by 2)
    with torch.no_grad():
        baseline = model.eval().image_pyramid(image)
    assert baseline.grid.levels == model(image).grid.levels
    # configs without the level are stored as before it existed; with it, it round-trips
    assert "stride8" not in plain.config.to_dict() and FastMaskConfig.from_dict(model.config.to_dict()) == model.config


def test_one_stream_body_has_only_stride_16():
    model = tiny_model(streams=1)
    with torch.no_grad():
        pyramid = model(torch.rand(1, 3, 64, 64) * 255, scales=3)
    assert [lv.stride for lv in pyramid.grid.levels] == [16, 32, 64]


@pytest.mark.parametrize(
    "arch,shapes",
    [
        ("resnet18", {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                      "layer3.0.downsample.0.weight": (256, 128, 1, 1), "layer3.1.bn2.running_var": (256,)}),
        ("resnet50", {"layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer3.0.conv2.weight": (256, 256, 3, 3),
                      "layer3.5.conv3.weight": (1024, 256, 1, 1), "layer2.3.bn3.bias": (512,)}),
    ],
)
def test_body_parameter_names_are_torchvision_names(arch, shapes):
    state = Body(arch).state_dict()
    for name, shape in shapes.items():
        assert tuple(state[name].shape) == shape
    assert not any(k.startswith(("layer4", "fc")) for k in state)


def test_imagenet_checkpoint_loads_with_a_report(tmp_path):
    source = Body("resnet18", width=8)
    torchvision_like = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in source.state_dict().items()}
    torchvision_like["layer4.0.conv1.weight"] = torch.randn(64, 32, 3, 3)
    torchvision_like["fc.weight"] = torch.randn(1000, 64)
    torchvision_like["layer1.0.conv1.weight"] = torch.randn(3, 3, 3, 3)  # wrong shape on purpose
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_like, path)
    body = Body("resnet18", width=8)
    report = load_imagenet(body, path)
    assert set(report.unused) == {"layer4.0.conv1.weight", "fc.weight"}
    assert report.mismatched == ["layer1.0.conv1.weight"]
    assert report.missing == []
    assert len(report.matched) == len(torchvision_like) - 3
    assert torch.equal(body.layer3[1].conv2.weight, torchvision_like["layer3.1.conv2.weight"])
    assert "tensors loaded" in report.summary()
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FastMaskError, match="no tensor matches"):
        load_imagenet(Body("resnet18", width=8), tmp_path / "other.pth")


def test_presets_and_config_validation():
    assert PRESETS["accurate"].body == "efficientnet_lite2" and PRESETS["accurate"].streams == 2
    assert PRESETS["fast"].streams == 1
    assert FastMaskConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(FastMaskError, match="neck"):
        FastMaskConfig(neck="lstm")
    with pytest.raises(FastMaskError, match="unknown keys"):
        FastMaskConfig.from_dict({**TINY.to_dict(), "depth": 3})
    assert FastMask(TINY).strides() == [16, 24, 32, 48]  # two streams interleave: 16, 32 and the pooled-by-3 stream's 24, 48 (paper §5.1)

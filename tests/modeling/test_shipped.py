"""The weights we ship: listed, intact, and finding the objects of a simple drawn image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fastmask_cli import Proposer, load_model
from fastmask_cli.modeling.weights import read_manifest, sha256_of, weights_dir
from support import assert_same_proposals, draw_scene

SHIPPED = read_manifest()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no weights are shipped in weights/manifest.json")


def test_manifest_lists_one_default_with_its_provenance_and_measurements() -> None:
    defaults = [m for m in SHIPPED if m.get("default")]
    assert len(defaults) == 1
    for entry in SHIPPED:
        path = weights_dir() / entry["file"]
        assert path.is_file() and path.stat().st_size < 50 * 2**20
        assert sha256_of(path) == entry["sha256"]
        assert {"segm", "bbox"} <= set(entry["metrics"]) and entry["metrics"]["segm"]["AR@100"] is not None
        assert entry["training"]["epochs"] >= 1 and "train" in entry["commands"] and "eval" in entry["commands"]
        if entry["config"]["body"] == "mobilenet_v2":  # a body from another project's package: where it came from
            assert set(entry["body_source"]) == {"package", "version", "file", "sha256", "licence"}


@pytest.mark.parametrize("entry", SHIPPED, ids=[m["name"] for m in SHIPPED])
def test_every_shipped_model_loads_with_its_listed_config(entry) -> None:
    model, info = load_model(entry["name"])
    assert info.trained and model.config.to_dict() == {**model.config.to_dict(), **entry["config"]}
    assert len(model.strides()) == entry["config"]["scales"]


def test_default_weights_load_and_find_two_shapes_on_a_plain_background() -> None:
    model, info = load_model()
    assert info.trained and info.sha256 == next(m for m in SHIPPED if m.get("default"))["sha256"]
    image = np.full((480, 640, 3), 235, np.uint8)
    circle, square = np.zeros((480, 640), np.uint8), np.zeros((480, 640), np.uint8)
    for canvas, colour in ((image, (200, 40, 40)), (circle, 1)):
        cv2.circle(canvas, (170, 240), 90, colour, -1)
    for canvas, colour in ((image, (40, 60, 200)), (square, 1)):
        cv2.rectangle(canvas, (400, 150), (560, 330), colour, -1)
    masks = Proposer(model, device="cpu", top_k=10).propose(image).masks()
    for shape in (circle.astype(bool), square.astype(bool)):
        iou = (masks & shape).sum(axis=(1, 2)) / (masks | shape).sum(axis=(1, 2))
        assert iou.max() >= 0.5


def test_default_weights_propose_the_same_on_onnx_runtime_as_in_pytorch() -> None:
    """The CPU default (ONNX Runtime) against PyTorch, shipped weights, top-1000 on a drawn street-like scene."""


    model, _ = load_model()
    image = cv2.resize(draw_scene(96, 128, seed=7), (640, 480), interpolation=cv2.INTER_NEAREST)
    onnx = Proposer(model, device="cpu", top_k=1000)
    assert onnx.backend == "onnx"
    assert_same_proposals(onnx.propose(image), Proposer(model, device="cpu", top_k=1000, backend="torch").propose(image))

"""What the tests share besides fixtures (those are in conftest.py): a tiny model config, drawn images,
synthetic COCO data (coco_data.py), bad files (bad_files.py), the CLI runner (cli.py) and dense
reference implementations (reference_masks.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from fastmask_cli import FastMask, FastMaskConfig, Proposals

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[2]

TINY = FastMaskConfig(
    body="resnet18", body_width=8, streams=2, neck_width=16, reduce_channels=8, score_hidden=16,
    mask_hidden=32, mask_size=16, scales=4, train_scales=4, size=128,
)


def tiny_model(seed: int = 0, **overrides) -> FastMask:
    torch.manual_seed(seed)
    return FastMask(TINY.with_overrides(**overrides)).eval()


def draw_scene(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """An RGB image with a bright ellipse and rectangle on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    cv2.ellipse(image, (width // 3, height // 2), (width // 8, height // 5), 0, 0, 360, (230, 40, 40), -1)
    cv2.rectangle(image, (2 * width // 3, height // 4), (2 * width // 3 + width // 6, height // 2), (40, 40, 230), -1)
    return image


def write_image(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def assert_same_proposals(a: Proposals, b: Proposals, tie: float = 1e-5, min_iou: float = 0.99) -> None:
    """Same proposals in the same order, except that proposals whose scores tie within `tie` may swap;
    each mask matched at IoU >= `min_iou`, scores equal within `tie`."""
    assert len(a) == len(b) > 0
    assert np.allclose(a.scores, b.scores, atol=tie, rtol=0)
    iou = np.asarray(mask_utils.iou(a.rles, b.rles, [0] * len(b)))
    start = 0
    for end in range(1, len(a) + 1):  # groups of consecutive proposals whose scores tie
        if end == len(a) or a.scores[end - 1] - a.scores[end] > tie:
            block = iou[start:end, start:end]
            assert (block.max(axis=1) >= min_iou).all() and (block.max(axis=0) >= min_iou).all(), (start, end)
            start = end

"""Shared fixtures: a tiny FastMask config, drawn images, and a saved tiny checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fastmask_cli import FastMask, FastMaskConfig, save_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

@pytest.fixture(autouse=True, scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported ONNX graphs go to a folder of the test session, not the user's cache."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    os.environ["FASTMASK_CACHE"] = str(folder)
    return folder


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


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny_model(), meta={"untrained": True})
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        write_image(folder / f"img_{i}.png", draw_scene(96 + 8 * i, 128, seed=i))
    return folder

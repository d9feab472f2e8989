"""Shared fixtures: the ONNX cache of the session, a saved tiny checkpoint, a folder of drawn images;
and the `slow` / `distributed` markers (`pytest -m "not slow"` runs the fast part)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastmask_cli import save_checkpoint
from support import draw_scene, tiny_model, write_image


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # a multi-process test is a slow one too
        if item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported ONNX graphs go to a folder of the test session, not the user's cache."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    os.environ["FASTMASK_CACHE"] = str(folder)
    return folder


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

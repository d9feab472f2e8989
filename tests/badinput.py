"""The bad-input zoo of the propose issue, drawn by code: each entry is (file name, bytes writer, reason)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from conftest import draw_scene


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_bad_files(folder: Path) -> dict[str, str]:
    """Write unusable files into `folder`; returns file name -> words the skip reason must contain."""
    good = jpeg_bytes(draw_scene())
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes_as_image.png").write_text("this is a text file, not a picture\n")
    cv2.imwrite(str(folder / "tiny_1x1.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(folder / "huge.png"), np.zeros((8100, 8000), np.uint8))  # 64.8 MP, compresses to little
    return {
        "corrupt.jpg": "not a decodable image",
        "empty.jpg": "empty file",
        "notes_as_image.png": "not a decodable image",
        "tiny_1x1.png": "too small",
        "huge.png": "too large",
    }


def make_odd_but_valid_files(folder: Path) -> list[str]:
    """Images in unusual formats that must still be processed."""
    bgr = cv2.cvtColor(draw_scene(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "deep_16bit.png"), bgr.astype(np.uint16) * 257)
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])
    cv2.imwrite(str(folder / "alpha_rgba.png"), rgba)
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    return ["alpha_rgba.png", "deep_16bit.png", "gray.png"]

"""Reading images: every odd format becomes (H, W, 3) uint8 RGB, every unusable file a clear reason."""

import cv2
import numpy as np
import pytest

from fastmask_cli.images import ImageError, list_images, read_image

from badinput import make_bad_files, make_odd_but_valid_files
from conftest import draw_scene, write_image


def test_odd_formats_become_rgb(tmp_path):
    make_odd_but_valid_files(tmp_path)
    scene = draw_scene()
    assert np.array_equal(read_image(tmp_path / "deep_16bit.png"), scene)  # 16-bit scaled back exactly
    assert np.array_equal(read_image(tmp_path / "alpha_rgba.png"), scene)  # alpha dropped, colours kept
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == scene.shape and np.array_equal(gray[..., 0], gray[..., 2])
    assert np.array_equal(read_image(write_image(tmp_path / "plain.png", scene)), scene)  # RGB, not BGR


def test_unusable_files_say_why(tmp_path):
    for name, reason in make_bad_files(tmp_path).items():
        with pytest.raises(ImageError, match=reason):
            read_image(tmp_path / name)


def test_listing_is_sorted_recursive_and_separates_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.jpeg", ".hidden/d.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((10, 10, 3), np.uint8))
    (tmp_path / "readme.txt").write_text("hi")
    images, others = list_images(tmp_path)
    assert images == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert others == ["readme.txt"]

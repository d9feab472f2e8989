"""Reading images: every odd format becomes (H, W, 3) uint8 RGB as viewers show it, every unusable file a clear reason."""

import os

import cv2
import numpy as np
import pytest

from fastmask_cli.io.image_header import ImageHeader, read_header
from fastmask_cli.io.images import ImageError, list_images, load_image, orient, read_image
from support import draw_scene, write_image
from support.bad_files import exif_jpeg, make_bad_files, make_odd_but_valid_files, png_bomb, tiff_bytes


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


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path, orientation):
    stored = draw_scene(64, 48)  # not symmetric under any flip or turn
    path = tmp_path / "phone.jpg"
    path.write_bytes(exif_jpeg(stored, orientation))
    ours = read_image(path)
    viewer = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # OpenCV's own reader applies EXIF orientation
    assert ours.shape == ((64, 48, 3) if orientation <= 4 else (48, 64, 3))
    assert np.array_equal(ours, viewer)
    raw = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.array_equal(ours, raw) == (orientation == 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_once(tmp_path, orientation):
    """OpenCV's TIFF decoder turns the pixels by the Orientation tag itself: turned again, 2-8 came out wrong."""
    stored = draw_scene(64, 48)
    path = tmp_path / "scan.tif"
    path.write_bytes(tiff_bytes(stored, orientation))
    assert np.array_equal(read_image(path), orient(stored, orientation))
    image, note = load_image(path, frame=(48, 64))  # ground truth in the stored grid keeps a turned one in it
    assert np.array_equal(image, orient(stored, orientation) if orientation <= 4 else stored)
    assert (note is None) == (orientation <= 4)


def test_ground_truth_frame_decides_whether_orientation_applies(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(exif_jpeg(draw_scene(64, 48), 6))  # stored 48 wide, 64 high; shown 64 wide, 48 high
    shown, note = load_image(path, frame=(64, 48))
    assert shown.shape[:2] == (48, 64) and note is None
    stored, note = load_image(path, frame=(48, 64))
    assert stored.shape[:2] == (64, 48) and "EXIF orientation 6" in note and "stored grid" in note
    other, note = load_image(path, frame=(100, 100))
    assert other.shape[:2] == (48, 64) and "ground truth says 100x100" in note


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(30000, 30000))
    assert path.stat().st_size < 200_000  # 900 MP in a file of kilobytes

    def decode(*args):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr("fastmask_cli.io.images.cv2.imdecode", decode)
    with pytest.raises(ImageError, match=r"too large \(30000x30000 px = 900 MP"):
        read_image(path)


def test_headers_give_the_size_of_every_accepted_format():
    image = draw_scene(37, 53)
    encodings = {".jpg": [], ".png": [], ".bmp": [], ".tif": [], ".webp": [], "lossless .webp": [cv2.IMWRITE_WEBP_QUALITY, 101]}
    for name, params in encodings.items():
        data = cv2.imencode(name.split()[-1], image, params)[1].tobytes()
        assert read_header(data) == ImageHeader(53, 37, 1), name
    assert read_header(b"not an image") == ImageHeader()
    assert read_header(b"\x89PNG\r\n\x1a\n\x00") == ImageHeader()  # cut short: the decoder decides


def test_linked_folders_are_followed_and_what_is_not_is_named(tmp_path):
    """A linked sub-folder's images are listed (users link `val/` in from elsewhere); a link back into the
    folder, a second link to a listed folder and a link to nothing are named, never silently dropped;
    the order is that of sorted paths ('a/b' before 'a-c'), which results files keep."""
    folder, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    for path in (folder / "a" / "b.png", folder / "a-c.png", elsewhere / "c.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, draw_scene(32, 32))
    (folder / "val").symlink_to(elsewhere)
    (folder / "val-again").symlink_to(elsewhere)
    (folder / "loop").symlink_to(folder)
    (folder / "up").symlink_to(tmp_path)
    (folder / "0-current").symlink_to(folder / "a")  # sorts before its target: the real folder keeps its name
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(folder / "pipe.png")
    images, others = list_images(folder)
    assert images == ["a/b.png", "a-c.png", "val/c.png"]
    assert others == ["0-current/ (a link to a folder inside this one, listed under its own name: not followed)",
                      "gone.png (a link to nothing)",
                      "loop/ (a link to a folder inside this one, listed under its own name: not followed)",
                      "pipe.png (not a regular file)", "up/ (a link to a folder that holds this one: not followed)",
                      "val-again/ (a link to a folder already listed: not followed)"]


def _gif(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height: a header, one 1x1 frame."""
    import struct

    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def _jp2(width: int, height: int) -> bytes:
    """The boxes of a JPEG 2000 file up to its image header (what is read before any pixel)."""
    import struct

    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", 8 + len(body)) + kind + body

    ihdr = box(b"ihdr", struct.pack(">IIHBBBB", height, width, 3, 7, 7, 0, 0))
    colr = box(b"colr", struct.pack(">BBBI", 1, 0, 0, 16))
    return (box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ") + box(b"jp2h", ihdr + colr)
            + box(b"jp2c", b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIIIH", 47, 0, width, height, 0, 0, width, height,
                                                                   0, 0, 3) + b"\x07\x01\x01" * 3))


def _bigtiff(width: int, height: int) -> bytes:
    """A little-endian BigTIFF with one IFD giving width and height (no strips worth decoding)."""
    import struct

    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 1)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *e) for e in entries) + struct.pack("<Q", 0)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd


@pytest.mark.parametrize("name, data", [("bomb.gif", _gif(20000, 15000)), ("bomb.jp2", _jp2(20000, 15000)),
                                        ("bomb.tif", _bigtiff(20000, 15000)), ("bomb.ppm", b"P6\n20000 15000\n255\n" + b"\0" * 64),
                                        ("bomb.hdr", b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 15000 +X 20000\n" + b"\0" * 64),
                                        ("bomb.pam", b"P7\nWIDTH 20000\nHEIGHT 15000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n")])
def test_bombs_in_other_formats_are_refused_before_decoding(tmp_path, monkeypatch, name, data):
    path = tmp_path / name
    path.write_bytes(data)

    def decode(*args):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr("fastmask_cli.io.images.cv2.imdecode", decode)
    with pytest.raises(ImageError, match=r"too large \(20000x15000 px = 300 MP"):
        read_image(path)


def test_a_format_that_cannot_be_sized_first_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "mystery.img"
    path.write_bytes(b"\x00\x11\x22 a format no header reader knows" + b"\0" * 64)
    monkeypatch.setattr("fastmask_cli.io.images.cv2.imdecode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(ImageError, match="size can be read before decoding"):
        read_image(path)
    pam = tmp_path / "small.pam"  # formats OpenCV reads and our header reader sizes still load
    pam.write_bytes(cv2.imencode(".pam", draw_scene(40, 50))[1].tobytes())
    with pytest.raises(ImageError, match="too large"):
        read_image(pam, max_pixels=100)
    monkeypatch.undo()
    small = tmp_path / "small.gif"  # a small GIF still reads
    cv2.imwrite(str(tmp_path / "x.png"), draw_scene(40, 50))
    from PIL import Image

    Image.open(tmp_path / "x.png").convert("P").save(small)
    assert read_image(small).shape == (40, 50, 3)

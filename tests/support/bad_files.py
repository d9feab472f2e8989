"""The bad-input zoo of the propose issue, drawn by code: each entry is (file name, bytes writer, reason)."""

from __future__ import annotations

import resource
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from support import draw_scene


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


def exif_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF block says how to turn the stored pixels to show them, as phones write."""
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 274, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\x00\x00" + tiff
    jpeg = jpeg_bytes(rgb)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def tiff_bytes(rgb: np.ndarray, orientation: int) -> bytes:
    """An uncompressed 8-bit RGB TIFF whose Orientation tag (274) says how to turn the stored pixels to show them."""
    height, width = rgb.shape[:2]
    pixels, bits = rgb.tobytes(), struct.pack("<3H", 8, 8, 8)
    ifd_at = 8 + len(bits) + len(pixels)
    short, long = 3, 4
    entries = [(256, long, 1, width), (257, long, 1, height), (258, short, 3, 8), (259, short, 1, 1), (262, short, 1, 2),
               (273, long, 1, 8 + len(bits)), (274, short, 1, orientation), (277, short, 1, 3), (278, long, 1, height),
               (279, long, 1, len(pixels)), (284, short, 1, 1)]  # 258's value is its offset: three shorts do not fit
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII" if kind == long or tag == 258 else "<HHIH2x", tag, kind, count, value)
        for tag, kind, count, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_at) + bits + pixels + ifd


def png_bomb(width: int, height: int) -> bytes:
    """A black 1-bit PNG: width * height pixels (gigabytes once decoded to RGB) in a file of kilobytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    rows = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.compress(row * (height % 1000))
    idat = rows + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def flip_a_bit_inside_a_tensor(path: Path) -> None:
    """One bit of the largest entry's data flipped, as a bad disk or download would: the zip still opens."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_and_extra = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little") + \
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_and_extra + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


@contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Writes past `size` bytes fail with EFBIG within (ulimit -f), as writes to a full disk fail with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

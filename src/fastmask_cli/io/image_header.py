"""Image size and EXIF orientation read from a file's header, without decoding its pixels.

The size lets a decompression bomb (say a 30000x30000 PNG of a few kilobytes) be refused before
it is decoded into gigabytes. The orientation is EXIF tag 274, which phones use instead of
rotating the pixels: viewers apply it, and so does fastmask by default (see `images.read_image`).
Covers JPEG, PNG, BMP, TIFF, WebP, PAM, PFM and Radiance HDR; `images.load_image` sizes others with
Pillow, and refuses what neither can size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ORIENTATION_TAG, WIDTH_TAG, HEIGHT_TAG = 274, 256, 257


@dataclass(frozen=True)
class ImageHeader:
    width: int | None = None  # None where the header could not be read: the decoder then decides
    height: int | None = None
    orientation: int = 1  # EXIF 1..8; 1 = stored as shown


def read_header(data: bytes | memoryview) -> ImageHeader:
    """What the header of an encoded image says; an unreadable header gives ImageHeader()."""
    readers = ((b"\xff\xd8", _jpeg), (b"\x89PNG\r\n\x1a\n", _png), (b"BM", _bmp), (b"II*\x00", _tiff),
               (b"MM\x00*", _tiff), (b"RIFF", _webp), (b"P7\n", _pam), (b"PF", _pfm), (b"Pf", _pfm),
               (b"#?RADIANCE", _radiance), (b"#?RGBE", _radiance))
    for magic, reader in readers:
        if bytes(data[: len(magic)]) == magic:
            try:
                return reader(data)
            except (struct.error, IndexError, ValueError):
                return ImageHeader()
    return ImageHeader()


def _tiff_tags(block: bytes, wanted: tuple[int, ...]) -> dict[int, int]:
    """Integer values of `wanted` tags in the first IFD of a TIFF structure (a TIFF file or an EXIF block)."""
    if bytes(block[:6]) == b"Exif\x00\x00":
        block = block[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(block[:2]))
    if order is None:
        raise ValueError("not a TIFF structure")
    (ifd,) = struct.unpack_from(order + "I", block, 4)
    (count,) = struct.unpack_from(order + "H", block, ifd)
    tags = {}
    for i in range(count):
        tag, kind, _, value = struct.unpack_from(order + "HHI4s", block, ifd + 2 + 12 * i)
        if tag in wanted and kind in (3, 4):  # SHORT or LONG, stored in the entry itself
            tags[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), value)[0]
    return tags


def _orientation(exif: bytes) -> int:
    value = _tiff_tags(exif, (ORIENTATION_TAG,)).get(ORIENTATION_TAG, 1)
    return value if 1 <= value <= 8 else 1


def _jpeg(data: bytes) -> ImageHeader:
    pos, size, orientation = 2, None, 1
    while pos + 4 <= len(data) and size is None:
        if data[pos] != 0xFF:
            raise ValueError("not at a marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4: pos + 2 + length]
        if marker == 0xE1 and bytes(segment[:6]) == b"Exif\x00\x00":
            try:
                orientation = _orientation(segment)
            except (struct.error, ValueError, IndexError):
                pass  # a broken EXIF block is ignored, as viewers do
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame marker
            height, width = struct.unpack_from(">HH", segment, 1)
            size = (width, height)
        pos += 2 + length
    if size is None:
        return ImageHeader(orientation=orientation)
    return ImageHeader(size[0], size[1], orientation)


def _png(data: bytes) -> ImageHeader:
    width, height = struct.unpack_from(">II", data, 16)  # IHDR is always the first chunk
    pos, orientation = 8, 1
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            orientation = _orientation(data[pos + 8: pos + 8 + length])
        if kind == b"IEND":
            break
        pos += 12 + length
    return ImageHeader(width, height, orientation)


def _bmp(data: bytes) -> ImageHeader:
    (info_size,) = struct.unpack_from("<I", data, 14)
    if info_size == 12:  # OS/2 header: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageHeader(abs(width), abs(height))  # negative height: rows stored top-down


def _tiff(data: bytes) -> ImageHeader:
    tags = _tiff_tags(data, (WIDTH_TAG, HEIGHT_TAG, ORIENTATION_TAG))
    orientation = tags.get(ORIENTATION_TAG, 1)
    return ImageHeader(tags.get(WIDTH_TAG), tags.get(HEIGHT_TAG), orientation if 1 <= orientation <= 8 else 1)


def _webp(data: bytes) -> ImageHeader:
    if bytes(data[8:12]) != b"WEBP":
        return ImageHeader()
    pos, size, orientation = 12, None, 1
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        chunk = data[pos + 8: pos + 8 + length]
        if kind == b"VP8X":  # extended format: the canvas size, 24-bit fields holding size - 1
            size = (int.from_bytes(chunk[4:7], "little") + 1, int.from_bytes(chunk[7:10], "little") + 1)
        elif kind == b"VP8 " and size is None:  # lossy: 14-bit sizes after the frame tag and start code
            width, height = struct.unpack_from("<HH", chunk, 6)
            size = (width & 0x3FFF, height & 0x3FFF)
        elif kind == b"VP8L" and size is None:  # lossless: 14-bit size - 1 fields after a signature byte
            (bits,) = struct.unpack_from("<I", chunk, 1)
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind == b"EXIF":
            orientation = _orientation(chunk)
        pos += 8 + length + (length & 1)  # chunks are padded to even sizes
    if size is None:
        return ImageHeader(orientation=orientation)
    return ImageHeader(size[0], size[1], orientation)


def _text_header(data: bytes, limit: int = 4096) -> list[str]:
    """The lines of a text header (PAM, PFM, Radiance HDR), from its first `limit` bytes."""
    return bytes(data[:limit]).decode("latin-1").split("\n")


def _pam(data: bytes) -> ImageHeader:
    fields = dict(line.split(None, 1) for line in _text_header(data)[1:] if " " in line.strip())
    return ImageHeader(int(fields["WIDTH"]), int(fields["HEIGHT"]))


def _pfm(data: bytes) -> ImageHeader:
    width, height = _text_header(data)[1].split()[:2]
    return ImageHeader(int(width), int(height))


def _radiance(data: bytes) -> ImageHeader:
    for line in _text_header(data)[1:]:  # the resolution line: "-Y 480 +X 640" (or another orientation)
        parts = line.split()
        if len(parts) == 4 and parts[0][1:] in ("Y", "X") and parts[2][1:] in ("Y", "X"):
            sizes = {parts[0][1]: int(parts[1]), parts[2][1]: int(parts[3])}
            return ImageHeader(sizes["X"], sizes["Y"])
    raise ValueError("no resolution line")


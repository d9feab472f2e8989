"""Finding and reading images, with one clear reason for every file that cannot be used.

Images are read as viewers show them (EXIF orientation applied, as detectron2's reader does),
except where ground truth describes the stored grid: see `load_image`.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import FastMaskError
from .files import output_kind
from .image_header import read_header

# Taken as images without opening them; any other file is one when OpenCV recognises its content.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".avif", ".gif", ".jp2", ".j2k", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras"})
# Signatures of image formats, to name one that this OpenCV build cannot decode.
_SIGNATURES = ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
               (b"\xffO\xffQ", "JPEG 2000"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
               (b"v/1\x01", "OpenEXR"), (b"8BPS", "Photoshop"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
_ISO_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}
MIN_SIDE = 8  # pixels; smaller images hold nothing a 160-px window could propose
MAX_PIXELS = 64_000_000  # larger images would need gigabytes for 1000 full-resolution masks


class ImageError(FastMaskError):
    """One image cannot be used; the run skips it and lists it in the summary."""


def list_images(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under `folder` (recursively, as sorted relative POSIX paths), and the other entries.

    A file is an image by its suffix (`IMAGE_SUFFIXES`) or, whatever its suffix, by its content: one
    that the installed OpenCV recognises (`cv2.haveImageReader`), or one in an image format it cannot
    decode (HEIC, JPEG XL, ...: listed, so that the run names it as skipped). Hidden files are left out.
    Links to folders outside `folder` are followed (the first of two links to one); links to folders
    inside it (listed under their own names) or holding it (a loop), links to nothing, pipes and sockets,
    and sub-folders that cannot be listed are named among the others with why.
    A name that is not valid UTF-8 is kept losslessly: its odd bytes as surrogates (`os.fsencode` gives them back)."""
    if not folder.exists():
        raise FastMaskError(f"images folder not found: {folder}")
    if not folder.is_dir():
        raise FastMaskError(f"not a folder: {folder}")
    images, others = [], []
    listed: set[tuple[int, int]] = set()
    top = folder.resolve()

    def followed(link: Path) -> bool:
        target = link.resolve()
        if target == top or top in target.parents:
            why = "a link to a folder inside this one, listed under its own name"
        elif target in top.parents:
            why = "a link to a folder that holds this one"
        else:
            return True
        others.append(f"{link.relative_to(folder).as_posix()}/ ({why}: not followed)")
        return False

    def unreadable(error: OSError) -> None:  # a sub-folder that cannot be listed: named, not silently passed over
        others.append(f"{Path(error.filename).relative_to(folder).as_posix()}/ (cannot be listed: {error.strerror})")

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        here = Path(root)
        rel = here.relative_to(folder)
        stat = here.stat()
        if (stat.st_dev, stat.st_ino) in listed:
            others.append(f"{rel.as_posix()}/ (a link to a folder already listed: not followed)")
            dirs.clear()
            continue
        listed.add((stat.st_dev, stat.st_ino))
        if here != folder and (kind := output_kind(here)) is not None:  # masks, overlays: never images to propose for
            others.append(f"{rel.as_posix()}/ (fastmask's {kind} output: not read)")
            dirs.clear()
            continue
        # sorted: the first of two links to one folder is the one listed
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (not (here / d).is_symlink() or followed(here / d)))
        for name in files:
            path = here / name
            if name.startswith("."):
                continue
            if not path.exists():
                others.append(f"{(rel / name).as_posix()} (a link to nothing)")
            elif not path.is_file():
                others.append(f"{(rel / name).as_posix()} (not a regular file)")  # a pipe, a socket, a device
            else:
                is_image = path.suffix.lower() in IMAGE_SUFFIXES or _opencv_reads(path) or _announces_image(path)
                (images if is_image else others).append((rel / name).as_posix())
    by_parts = lambda name: name.split("/")  # noqa: E731 - the order of sorted Paths, which results keep
    return sorted(images, key=by_parts), sorted(others, key=by_parts)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as viewers show it, given the EXIF orientation its pixels were stored with."""
    transposed = image.swapaxes(0, 1)
    shown = {
        1: image,
        2: image[:, ::-1],  # mirrored left-right
        3: image[::-1, ::-1],  # rotated 180
        4: image[::-1],  # mirrored top-bottom
        5: transposed,  # mirrored about the main diagonal
        6: transposed[:, ::-1],  # rotated 90 clockwise
        7: transposed[::-1, ::-1],  # mirrored about the other diagonal
        8: transposed[::-1],  # rotated 90 counter-clockwise
    }[orientation]
    return np.ascontiguousarray(shown)


_UNDONE_BY = {6: 8, 8: 6}  # the orientation that undoes each quarter turn; every other one undoes itself


def load_image(path: Path, max_pixels: int = MAX_PIXELS, frame: tuple[int, int] | None = None) -> tuple[np.ndarray, str | None]:
    """Read any common image as (H, W, 3) uint8 RGB, as viewers show it (EXIF orientation applied).

    frame (width, height), from ground truth: COCO's annotations are in the grid its width and
    height describe, which for some photos is the stored grid, not the shown one. When the stored
    grid matches the frame and the shown one does not, the stored grid is kept. Returns the image
    and a note when it is not in the shown grid or does not match the frame. Raises ImageError
    saying why a file cannot be used; an image over `max_pixels` is refused from its header,
    before it is decoded.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    if data.size == 0:
        raise ImageError("empty file (0 bytes)")
    header = read_header(memoryview(data))
    size = (header.width, header.height) if header.width is not None and header.height is not None else _header_size(data)
    if size is None:  # a decompression bomb in a format we cannot size would be decoded whole: refused first
        kind = image_format(memoryview(data))
        if kind and not _opencv_reads(path):
            raise ImageError(f"a {kind} file that the installed OpenCV cannot decode (an unsupported format)")
        raise ImageError(f"not a decodable image (a {kind} file whose header gives no size: corrupt, or sized only "
                         "by decoding it)" if kind else "not a decodable image (corrupt, or not an image format whose "
                         "size can be read before decoding)")
    _check_size(*size, max_pixels)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # EXIF orientation is applied below (a TIFF's by OpenCV)
    if image is None:
        kind = image_format(memoryview(data))
        if kind and not _opencv_reads(path):
            raise ImageError(f"a {kind} file that the installed OpenCV cannot decode (an unsupported format)")
        raise ImageError(f"not a decodable image (a corrupt {kind} file)" if kind else
                         "not a decodable image (corrupt or not an image format)")
    _check_size(image.shape[1], image.shape[0], max_pixels)
    if image_format(memoryview(data)) == "TIFF":  # OpenCV's TIFF decoder applies the Orientation tag itself
        shown = _as_rgb(image)
        stored = orient(shown, _UNDONE_BY.get(header.orientation, header.orientation))
    else:
        stored = _as_rgb(image)
        shown = orient(stored, header.orientation)
    if frame is None or shown.shape[1::-1] == tuple(frame):
        return shown, None
    height, width = stored.shape[:2]
    if stored.shape[1::-1] == tuple(frame):
        return stored, (f"stored as {width}x{height} with EXIF orientation {header.orientation}: "
                        "kept in the stored grid, which the ground truth's width and height describe")
    return shown, f"is {shown.shape[1]}x{shown.shape[0]}, the ground truth says {frame[0]}x{frame[1]}"


_PILLOW_LIMIT = threading.Lock()  # Pillow's limit is one global: lifted only while a header is read
if hasattr(os, "register_at_fork"):  # a fork while another thread held it must not leave the child's held
    os.register_at_fork(after_in_child=lambda: globals().__setitem__("_PILLOW_LIMIT", threading.Lock()))


def _header_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the header of a format `read_header` does not cover (GIF, JPEG 2000, BigTIFF,
    PNM, Sun raster, ...), by Pillow, which parses headers lazily without decoding pixels; None where
    Pillow cannot open the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _PILLOW_LIMIT:  # Pillow's own bomb check raises on opening, without the sides: ours decides, with them
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(io.BytesIO(memoryview(data))) as image:
                    width, height = image.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        return None
    return (width, height) if width > 0 and height > 0 else None


def read_image(path: Path, max_pixels: int = MAX_PIXELS, frame: tuple[int, int] | None = None) -> np.ndarray:
    """`load_image` without its note."""
    return load_image(path, max_pixels, frame)[0]


def _opencv_reads(path: Path) -> bool:
    """`cv2.haveImageReader(path)`: whether the installed OpenCV recognises the file's content. A name
    that is not valid UTF-8 (bytes of an old code page, held by Python as surrogates) crashes OpenCV:
    such a file is shown to it through its open descriptor (Linux), else judged by `_announces_image`."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        try:
            with open(path, "rb") as f:
                alias = f"/proc/self/fd/{f.fileno()}"
                return os.path.exists(alias) and cv2.haveImageReader(alias)
        except OSError:
            return False
    return cv2.haveImageReader(str(path))


def _announces_image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return image_format(f.read(32)) is not None
    except OSError:
        return False


def image_format(data: bytes | memoryview) -> str | None:
    """The image format a file's first bytes announce (JPEG, AVIF, HEIC, ...), or None."""
    head = bytes(data[:32])
    if head[4:8] == b"ftyp" and head[8:12] in _ISO_BRANDS:
        return _ISO_BRANDS[head[8:12]]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"too small ({width}x{height} px; at least {MIN_SIDE} px per side needed)")
    if height * width > max_pixels:
        raise ImageError(f"too large ({width}x{height} px = {height * width / 1e6:.0f} MP; limit {max_pixels / 1e6:.0f} MP)")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype} (8- or 16-bit images only)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:  # transparency carries no object evidence here: drop it
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"unsupported number of channels ({channels})")

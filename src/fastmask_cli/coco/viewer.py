"""The proposals of a `fastmask propose` run, without ground truth: a folder a person opens in any
browser, offline (no CDN, no server, from file://), the companion of the evaluation report (report.py).

    write_viewer("results.json", "viewer/")            # pictures from the folder propose recorded
    write_viewer("results.jsonl", "viewer/", images="photos/", page_size=50, top=100)

    viewer/index.html            what was proposed (the run record) and the list of pages
    viewer/pages/0001.html ...   `page_size` images each, with the control for how many proposals to draw
    viewer/thumbs/000001.jpg ... each image at most `MAX_SIDE` pixels on a side
    viewer/viewer.css, viewer.js the pages' style and their few lines of plain JavaScript

Each image is shown with the outlines of its top `top` proposals (by score) as SVG paths over its
thumbnail, one colour per rank; the control draws the first N of them (1 to `top`, `SHOWN` at first,
kept in the address as `#shown=N` from page to page), and hovering over or clicking an outline says its
rank, score and area. Without JavaScript the first `SHOWN` are drawn and each outline's tooltip says the
same. Paged, so that a run over thousands of images opens at once: the results are read an image at a
time and each page is written as soon as its images are, so memory holds one page, whatever the number
of images. Everything that comes from the user's files (file names, the run record) is escaped text,
never markup.
"""

from __future__ import annotations

import colorsys
import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..errors import FastMaskError
from ..io.files import atomic_path, mark_output, room_for, writable_folder
from ..io.images import ImageError, read_image
from ..io.results_file import images_json_path, iter_results, read_run
from .gallery import encode_jpeg

MAX_SIDE = 640  # pixels: a thumbnail's longer side; a page of 50 with 100 outlines each is about 2 MB of HTML
SHOWN = 10  # proposals drawn per image when a page opens
TOLERANCE = 1.0  # thumbnail pixels: outlines simplified to within this (approxPolyDP): 21 points per outline, not 108 at 0.5
GOLDEN_ANGLE = 137.508  # degrees of hue between ranks: neighbouring ranks never share a colour


def write_viewer(results: Path, out_dir: Path, images: Path | None = None, *, page_size: int = 50, top: int = 100,
                 on_image: Callable[[str], None] | None = None) -> Path:
    """Write the viewer of the results file `results` (written by `fastmask propose` or `merge`: a COCO
    results list or JSON Lines, with its `.images.json` beside it) into `out_dir`; returns
    `out_dir/index.html`.

    `images`: the folder the run's file names are relative to; without it, the folder the run record names
    (`images_dir`). Where there is none, or an image cannot be read there, its outlines are drawn on a
    blank box of its size with a note saying why. `page_size`: images per page (pages are
    ceil(images / page_size)); `top`: proposals kept per image, the highest scores first (fewer where an
    image has fewer). Outlines are traced on each mask (an RLE: COCO polygons and boxes are drawn as they
    are) in the image's grid, its width and height in the `.images.json`, and scaled to its thumbnail; areas
    are in pixels of that grid. Every image the `.images.json` lists is shown once, in its order, those
    without proposals too. `on_image(file name)` is called after each image.

    Memory: one page of outlines and the run's image list (a few small fields per image); the results are
    streamed. An earlier viewer's pages and thumbnails in `out_dir` are replaced; `index.html` is written
    last, atomically, so it never points at pages not yet there.

    FastMaskError (one line): `results` or its `.images.json` missing or not written by fastmask, the two
    not matching, `images` not a folder, `out_dir` not writable, `page_size` or `top` under 1."""
    results = Path(results)
    if page_size < 1 or top < 1:
        raise FastMaskError(f"page_size and top must be at least 1, not {page_size} and {top}")
    if not results.is_file():
        raise FastMaskError(f"results file not found: {results}")
    run, entries = read_run(results)
    entries = _image_entries(entries, results)
    pictures, pictures_note = _pictures_folder(images, run)
    out_dir = writable_folder(Path(out_dir), "the viewer")
    mark_output(out_dir, "viewer")  # its thumbnails are never read as images by a later run over a folder holding it
    _clear(out_dir)
    _write_text(out_dir / "viewer.css", STYLE)
    _write_text(out_dir / "viewer.js", SCRIPT)

    title = f"fastmask proposals: {_shown(results.name)}"
    pages = max(1, -(-len(entries) // page_size))
    digits = max(4, len(str(pages)))
    thumb_digits = max(6, len(str(len(entries))))
    position = {entry["id"]: n for n, entry in enumerate(entries)}  # where each image's results must come
    stream = iter_results(results)
    pending = next(stream, None)
    cards: list[str] = []
    rows: list[list[str]] = []  # the index's list of pages: one short row per page
    first_name, page_proposals, total = "", 0, 0
    for n, entry in enumerate(entries):
        proposals: list[dict[str, Any]] = []
        if pending is not None:
            at = position.get(pending[0])
            if at is None or at < n:  # ids unknown, repeated or out of order: not this run's files
                raise FastMaskError(f"{results} holds results for image id {pending[0]!r}, which "
                                    f"{images_json_path(results).name} does not list {'at all' if at is None else 'there'}: "
                                    "the two files are not from one fastmask propose run")
            if at == n:
                proposals, pending = pending[1], next(stream, None)
        name = str(entry["file_name"])
        first_name = first_name or name
        thumb = out_dir / "thumbs" / f"{n + 1:0{thumb_digits}d}.jpg"
        cards.append(_card(n, entry, proposals, pictures, pictures_note, thumb, top))
        page_proposals += len(proposals)
        total += len(proposals)
        if on_image:
            on_image(name)
        if len(cards) == page_size or n == len(entries) - 1:
            page = len(rows) + 1
            _write_page(out_dir, page, pages, digits, cards, title, top)
            rows.append([f"<a href='pages/{page:0{digits}d}.html'>page {page}</a>",
                         f"{n + 2 - len(cards)}–{n + 1}", str(page_proposals), _text(first_name), _text(name)])
            cards, first_name, page_proposals = [], "", 0
    if pending is not None:  # results after the last listed image
        raise FastMaskError(f"{results} holds results for image id {pending[0]!r} after the last image "
                            f"{images_json_path(results).name} lists: the two files are not from one fastmask propose run")
    if not entries:
        _write_page(out_dir, 1, 1, digits, [], title, top)
        rows.append([f"<a href='pages/{1:0{digits}d}.html'>page 1</a>", "none", "0", "", ""])
    index = out_dir / "index.html"
    body = _index(results, run, len(entries), total, pictures, pictures_note, rows, page_size, top)
    _write_text(index, INDEX.format(title=_text(title), body=body))  # last: the pages it links are there
    return index


def _text(value: Any) -> str:
    """User-derived text as page text: never markup."""
    return html.escape(_shown(str(value)), quote=True)


def _shown(name: str) -> str:
    """A name as text that UTF-8 can hold: a file name that is not valid UTF-8 comes from the image list
    with its odd bytes as surrogates (`os.fsencode` gives them back), shown as replacement characters."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if not name.isascii() else name


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _image_entries(entries: list[Any], results: Path) -> list[dict[str, Any]]:
    """The image list's entries, each with an id and a file name; FastMaskError naming the first without."""
    for entry in entries:
        if (not isinstance(entry, dict) or not isinstance(entry.get("id"), (int, str))
                or not isinstance(entry.get("file_name"), str)):
            raise FastMaskError(f"{images_json_path(results)} lists an image without its id or file name "
                                "(not written by fastmask propose)")
    return entries


def _pictures_folder(images: Path | None, run: dict[str, Any]) -> tuple[Path | None, str]:
    """The folder the pictures are read from, and why there is none (shown in place of each picture)."""
    if images is not None:
        if not Path(images).is_dir():
            raise FastMaskError(f"images folder not found: {images}")
        return Path(images), ""
    recorded = run.get("images_dir")
    if not isinstance(recorded, str) or not recorded:
        return None, "no picture: the run records no images folder, and none was given"
    if not Path(recorded).is_dir():
        return None, f"no picture: the images folder the run records, {recorded}, is not there, and none was given"
    return Path(recorded), ""


def _clear(out_dir: Path) -> None:
    """Remove an earlier viewer's index, pages and thumbnails (only the names this module writes), so that
    none is left from a run with more images; the index first, so that it never points at missing pages."""
    (out_dir / "index.html").unlink(missing_ok=True)
    for folder, pattern in (("pages", r"\d+\.html"), ("thumbs", r"\d+\.jpg")):
        (out_dir / folder).mkdir(exist_ok=True)
        for old in (out_dir / folder).iterdir():
            if re.fullmatch(pattern, old.name) and old.is_file():
                old.unlink()


def _grid(entry: dict[str, Any], proposals: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(width, height) of the grid the proposals are in: the image list's, else the first mask's."""
    width, height = entry.get("width"), entry.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    for record in proposals:
        segmentation = record.get("segmentation")
        if isinstance(segmentation, dict) and len(segmentation.get("size") or ()) == 2:
            return int(segmentation["size"][1]), int(segmentation["size"][0])
    return None


def _card(n: int, entry: dict[str, Any], proposals: list[dict[str, Any]], pictures: Path | None, pictures_note: str,
          thumb: Path, top: int) -> str:
    """Image n as HTML: its thumbnail (written to `thumb`) or a blank box with why, the outlines of its
    top `top` proposals over it, and its caption."""
    name = entry["file_name"]
    try:
        ranked = sorted(proposals, key=lambda r: -float(r["score"]))[:top]  # stable: ties keep the file's order
    except (KeyError, TypeError, ValueError):
        raise FastMaskError(f"a result of {_shown(name)} has no numeric score (not written by fastmask propose)") from None
    grid = _grid(entry, ranked)
    picture, note = None, pictures_note
    if pictures is not None:
        try:  # the proposals' grid as the frame: a photo stored turned (EXIF) is read as propose read it
            picture = read_image(pictures / name, frame=grid)
        except (ImageError, OSError) as exc:
            note = f"no picture: {pictures / name}: {exc}"
    if grid is None:
        grid = picture.shape[1::-1] if picture is not None else _extent(ranked)
    width, height = grid
    scale = min(1.0, MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    paths = [_path(record, rank, width, height, size) for rank, record in enumerate(ranked, start=1)]
    paths.sort(key=lambda p: -p[0])  # the largest drawn first: a small outline inside a large one stays on top to point at
    view = f"viewBox='0 0 {size[0]} {size[1]}' width='{size[0]}' height='{size[1]}'"
    outlines = f"<svg class='outlines' {view} preserveAspectRatio='none'>{''.join(p[1] for p in paths)}</svg>"
    alt = _text(name)
    if picture is not None:
        if picture.shape[1::-1] != (width, height):
            note = (f"the picture is {picture.shape[1]}x{picture.shape[0]}, the proposals are in a {width}x{height} grid: "
                    "stretched to it")
        small = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
        with room_for(thumb):
            thumb.write_bytes(encode_jpeg(cv2.cvtColor(small, cv2.COLOR_RGB2BGR)))
        shown = f"<div class='pic'><img src='../thumbs/{thumb.name}' alt='{alt}' width='{size[0]}' height='{size[1]}'>{outlines}</div>"
    else:
        shown = f"<div class='pic blank'>{outlines}</div>"
    counts = (f"{_count(len(proposals), 'proposal')}, the top <span class='drawn'>{min(SHOWN, len(ranked))}</span> drawn"
              if proposals else "no proposals")
    note = f"<br><span class='missing'>{_text(note)}</span>" if note else ""
    return (f"<figure class='card' id='i{n + 1}' data-outlines='{len(ranked)}'>{shown}<figcaption><b>{_text(name)}</b> "
            f"· {counts}{note}<br><span class='info'></span></figcaption></figure>")


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _extent(proposals: list[dict[str, Any]]) -> tuple[int, int]:
    """A grid holding every proposal's box, for an image whose size nothing records (at least 1x1)."""
    boxes = np.array([r.get("bbox", [0, 0, 0, 0]) for r in proposals] or [[0, 0, 1, 1]], dtype=np.float64).reshape(-1, 4)
    return max(1, int(np.ceil((boxes[:, 0] + boxes[:, 2]).max()))), max(1, int(np.ceil((boxes[:, 1] + boxes[:, 3]).max())))


def _colour(rank: int) -> str:
    """A colour per rank (1-based), hues a golden angle apart, as #rrggbb."""
    r, g, b = colorsys.hls_to_rgb(((rank - 1) * GOLDEN_ANGLE % 360) / 360, 0.5, 0.85)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _path(record: dict[str, Any], rank: int, width: int, height: int, size: tuple[int, int]) -> tuple[float, str]:
    """(area in pixels of the image's grid, an SVG path of the proposal's outline in thumbnail pixels)."""
    sx, sy = size[0] / width, size[1] / height
    segmentation = record.get("segmentation")
    parts: list[np.ndarray] = []
    area: float | None = None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        elif isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        area = float(mask_utils.area(rle))
        mask = mask_utils.decode(rle)
        mh, mw = mask.shape
        parts = _contours(mask, size[0] / mw, size[1] / mh)
    elif isinstance(segmentation, list) and segmentation:  # COCO polygons (propose --format polygons)
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))) if polygons else 0.0
        parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) * (sx, sy) for p in polygons]
    if not parts:  # a box result, or a mask with no pixels: its box
        x, y, w, h = (float(v) for v in (record.get("bbox") or [0, 0, 0, 0]))
        area = w * h if area is None else area
        parts = [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]) * (sx, sy)]
    d = "".join("M" + " ".join(f"{_number(px)} {_number(py)}" for px, py in part[:1]) + "L"
                + " ".join(f"{_number(px)} {_number(py)}" for px, py in part[1:]) + "Z" for part in parts)
    score = float(record["score"])
    colour = _colour(rank)
    off = " class='off'" if rank > SHOWN else ""  # drawn or not without JavaScript; the control sets it after
    return area, (f"<path d='{d}' data-rank='{rank}' data-score='{score:.6g}' data-area='{area:.0f}' stroke='{colour}' "
                  f"fill='{colour}'{off}><title>#{rank} · score {score:.3f} · area {area:,.0f} px</title></path>")


def _contours(mask: np.ndarray, sx: float, sy: float) -> list[np.ndarray]:
    """The outer outlines of a mask's parts, scaled by (sx, sy) and simplified to `TOLERANCE`; a part too
    small to keep three points is its box (on the pixels' corners)."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(ys):
        return []
    y0, x0 = int(ys[0]), int(xs[0])
    box = np.ascontiguousarray(mask[y0 : ys[-1] + 1, x0 : xs[-1] + 1])  # traced in the mask's box: far fewer pixels
    contours, _ = cv2.findContours(box, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0))
    parts = []
    for contour in contours:
        points = ((contour.reshape(-1, 2) + 0.5) * (sx, sy)).astype(np.float32)  # through the pixels' centres
        simple = cv2.approxPolyDP(points, TOLERANCE, True).reshape(-1, 2)
        if len(simple) < 3:
            x, y, w, h = cv2.boundingRect(contour)
            simple = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64) * (sx, sy)
        parts.append(simple)
    return parts


def _number(value: float) -> str:
    """A coordinate to a tenth of a thumbnail pixel, without trailing zeros."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _write_page(out_dir: Path, page: int, pages: int, digits: int, cards: list[str], title: str, top: int) -> None:
    name = lambda p: f"{p:0{digits}d}.html"  # noqa: E731
    previous = f"<a class='keep' rel='prev' href='{name(page - 1)}'>← previous</a>" if page > 1 else "<span class='dim'>← previous</span>"
    following = f"<a class='keep' rel='next' href='{name(page + 1)}'>next →</a>" if page < pages else "<span class='dim'>next →</span>"
    controls = (f"<label>proposals drawn per image: <input type='range' id='shown' min='1' max='{top}' value='{min(SHOWN, top)}'> "
                f"<input type='number' id='shown-n' min='1' max='{top}' value='{min(SHOWN, top)}'></label> "
                f"<span class='dim'>of the top {top} (by score)</span>")
    header = (f"<header><nav><a href='../index.html'>all pages</a> · {previous} · page {page} of {pages} · {following}</nav>"
              f"{controls}<p class='dim'>One colour per rank. Point at an outline, or click it (again to let go), for its rank, score and area.</p></header>")
    body = f"{header}<main>{''.join(cards) or '<p>the run has no images</p>'}</main>"
    _write_text(out_dir / "pages" / name(page), PAGE.format(title=_text(f"{title} · page {page} of {pages}"), body=body))


def _index(results: Path, run: dict[str, Any], images: int, proposals: int, pictures: Path | None, pictures_note: str,
           rows: list[list[str]], page_size: int, top: int) -> str:
    facts = [("results", _text(results)), ("pictures", _text(pictures) if pictures else _text(pictures_note)),
             ("images", f"{images:,}"), ("proposals", f"{proposals:,} (at most the top {top} of each image are drawn)")]
    for key, label in (("weights", "weights (sha256)"), ("settings", "settings"), ("images_dir", "images proposed on")):
        if key in run:
            value = run[key] if isinstance(run[key], str) else json.dumps(run[key], sort_keys=True)
            facts.append((label, f"<code>{_text(value)}</code>"))
    skipped = [s for s in run.get("skipped") or [] if isinstance(s, list) and len(s) == 2]
    if skipped:
        listed = "".join(f"<li>{_text(f)}: {_text(why)}</li>" for f, why in skipped[:100])
        more = f"<li>… and {len(skipped) - 100} more</li>" if len(skipped) > 100 else ""
        facts.append(("skipped by propose", f"<details><summary>{_count(len(skipped), 'image')}</summary><ul>{listed}{more}</ul></details>"))
    table = "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for row in rows)
    return ("<table class='facts'><tbody>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in facts)
            + f"</tbody></table><h2>Pages ({page_size} images each)</h2>"
            "<p>Each page shows its images with their proposals outlined, one colour per rank; a control sets how many "
            "are drawn, and an outline says its rank, score and area when pointed at or clicked.</p>"
            "<table class='pages'><thead><tr><th>page</th><th>images</th><th>proposals</th><th>first</th><th>last</th></tr></thead>"
            f"<tbody>{table}</tbody></table>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 1em 2em; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: .6em 0 .2em; border-bottom: 1px solid #ddd; z-index: 1; }
header p { margin: .3em 0; } input[type=range] { width: 16em; vertical-align: middle; } input[type=number] { width: 4.5em; }
main { display: flex; flex-wrap: wrap; gap: 1.2em; margin-top: 1em; align-items: flex-start; }
.card { margin: 0; max-width: 640px; } figcaption { font-size: .9em; margin-top: .3em; overflow-wrap: anywhere; }
.pic { position: relative; display: inline-block; max-width: 100%; line-height: 0; background: #eee; }
.pic img { display: block; max-width: 100%; height: auto; }
.pic svg.outlines { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.pic.blank svg.outlines { position: static; display: block; max-width: 100%; height: auto; }
svg.outlines path { fill-opacity: 0; stroke-width: 2; vector-effect: non-scaling-stroke; cursor: pointer; }
svg.outlines path:hover, svg.outlines path.pinned { fill-opacity: .35; stroke-width: 3; }
svg.outlines path.off { display: none; }
.info { color: #555; display: inline-block; min-height: 1.2em; } .missing { color: #a00; } .dim { color: #777; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc; padding: .2em .5em; text-align: left; }
th { background: #f4f4f4; } .facts td:first-child { white-space: nowrap; }
"""

# How many proposals are drawn (the first N by rank, on every image of the page), kept in the address as
# #shown=N so that the next page opens with the same; and what an outline is, pointed at or clicked.
# Text is set with textContent only. No framework: the page must open offline, from file://.
SCRIPT = """
(function () {
  'use strict';
  var range = document.getElementById('shown'), number = document.getElementById('shown-n');
  if (!range || !number) { return; }
  var max = parseInt(range.max, 10);
  var paths = Array.prototype.slice.call(document.querySelectorAll('svg.outlines path'));
  var cards = Array.prototype.slice.call(document.querySelectorAll('figure.card'));
  var pinned = new Map();

  function describe(path) {
    return '#' + path.dataset.rank + ' · score ' + Number(path.dataset.score).toFixed(3) +
      ' · area ' + Number(path.dataset.area).toLocaleString('en') + ' px';
  }
  function say(card) {
    var info = card.querySelector('.info'), held = pinned.get(card);
    if (info) { info.textContent = held ? describe(held) + ' (clicked)' : ''; }
  }
  function show(n, remember) {
    n = Math.max(1, Math.min(max, parseInt(n, 10) || 1));
    range.value = n;
    number.value = n;
    paths.forEach(function (path) { path.classList.toggle('off', parseInt(path.dataset.rank, 10) > n); });
    cards.forEach(function (card) {
      var drawn = card.querySelector('.drawn');
      if (drawn) { drawn.textContent = String(Math.min(n, parseInt(card.dataset.outlines, 10))); }
    });
    document.querySelectorAll('a.keep').forEach(function (a) { a.hash = 'shown=' + n; });
    if (remember) {
      try { location.replace('#shown=' + n); } catch (e) { /* the address is only a convenience */ }
    }
  }
  range.addEventListener('input', function () { show(range.value, false); });
  range.addEventListener('change', function () { show(range.value, true); });
  number.addEventListener('change', function () { show(number.value, true); });
  paths.forEach(function (path) {
    var card = path.closest('figure.card');
    path.addEventListener('mouseenter', function () {
      var info = card.querySelector('.info');
      if (info) { info.textContent = describe(path); }
    });
    path.addEventListener('mouseleave', function () { say(card); });
    path.addEventListener('click', function () {
      var held = pinned.get(card);
      if (held) { held.classList.remove('pinned'); }
      if (held === path) { pinned.delete(card); } else { pinned.set(card, path); path.classList.add('pinned'); }
      say(card);
    });
  });
  var asked = /^#shown=(\\d+)$/.exec(location.hash);
  show(asked ? asked[1] : range.value, false);
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><link rel="stylesheet" href="../viewer.css"></head>
<body>{body}
<script src="../viewer.js"></script>
</body></html>
"""

INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><link rel="stylesheet" href="viewer.css"></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""

"""`write_viewer`: the pages of a propose run without ground truth, on drawn pictures whose proposals are
known: every image once, paged; each outline where its mask is, with its score and area; names escaped;
and the pages render in a browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastmask_cli.coco.viewer import write_viewer
from fastmask_cli.errors import FastMaskError
from fastmask_cli.io.results_file import images_json_path, images_writer, results_writer

ODD = "<script>alert(1)</script>.png"  # markup, and a folder "<script>alert(1)<" holding "script>.png"
LATIN1 = "caf\udce9.png"  # café.png in Latin-1: not UTF-8, held as Python holds such names
BIG = (1000, 800)  # width, height: its thumbnail is 640x512
CLICK = "<script>document.querySelector('path[data-rank=\"1\"]').dispatchEvent(new MouseEvent('click'));</script>"


def rle(width, height, x, y, w, h):
    mask = np.zeros((height, width), np.uint8, order="F")
    mask[y : y + h, x : x + w] = 1
    encoded = mask_utils.encode(mask)
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def rectangles(image_id, width, height, boxes_scores):
    return [{"image_id": image_id, "category_id": 1, "segmentation": rle(width, height, *box), "bbox": list(box),
             "score": score} for box, score in boxes_scores]


# file name, (width, height), drawn (False: listed but not in the folder), proposals as ((x, y, w, h), score)
IMAGES = [
    ("a.png", (160, 120), True, [((60, 50, 20, 20), 0.2), ((10, 10, 40, 30), 0.9), ((100, 60, 50, 50), 0.5)]),
    (ODD, (160, 120), True, [((5 + 2 * i, 5, 30, 30 + i), 0.8 - 0.05 * i) for i in range(8)]),
    ("empty.png", (160, 120), True, []),
    ("gone.png", (160, 120), False, [((0, 0, 16, 12), 0.7)]),
    ("sub/big.png", BIG, True, [((100, 200, 300, 400), 0.95), ((0, 0, 1000, 800), 0.1)]),
    (LATIN1, (160, 120), True, [((20, 20, 10, 10), 0.6)]),
]


def write_run(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """The drawn pictures and a results file with its .images.json, as `fastmask propose` writes them."""
    pictures = tmp_path / "images"
    for name, (width, height), drawn, _ in IMAGES:
        if drawn:
            (pictures / name).parent.mkdir(parents=True, exist_ok=True)
            picture = np.full((height, width, 3), 90, np.uint8)
            cv2.circle(picture, (width // 2, height // 2), height // 3, (250, 250, 250), -1)
            (pictures / name).write_bytes(cv2.imencode(".png", picture)[1].tobytes())
    out = tmp_path / ("r.jsonl" if fmt == "jsonl" else "r.json")
    run = {"weights": "sha256:abc", "settings": {"top_k": 100}, "ann": None, "images_dir": str(pictures), "shard": None,
           "results_format": fmt, "planned": len(IMAGES) + 1, "skipped": [["bad<b>.png", "not a decodable image"]], "notes": []}
    with images_writer(images_json_path(out), run) as add_image, results_writer(out, fmt) as add_results:
        for n, (name, (width, height), _, boxes) in enumerate(IMAGES, start=1):
            image = {"id": n * 10, "file_name": name, "width": width, "height": height}
            results = rectangles(n * 10, width, height, boxes)
            add_results(image, results)
            add_image({**image, "proposals": len(results)})
    return out, pictures


class _Page(HTMLParser):
    """A page's links and sources, and per figure: its name, its outlines' attributes, its caption text."""

    def __init__(self) -> None:
        super().__init__()
        self.links, self.figures, self.text = [], [], []
        self._in_name = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "figure":
            self.figures.append({"name": "", "paths": [], "text": [], "img": None})
        elif tag == "b" and self.figures:
            self._in_name = True
        elif tag == "path":
            self.figures[-1]["paths"].append(attrs)
        elif tag == "img":
            self.figures[-1]["img"] = attrs

    def handle_endtag(self, tag):
        if tag == "b":
            self._in_name = False

    def handle_data(self, data):
        self.text.append(data)
        if self.figures:
            self.figures[-1]["text"].append(data)
            if self._in_name:
                self.figures[-1]["name"] += data


def parse(path: Path) -> tuple[_Page, str]:
    source = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(source)
    return page, source


def pages_of(index: Path) -> list[Path]:
    page, _ = parse(index)
    return [index.parent / link for link in page.links if link.startswith("pages/")]


def figures(index: Path) -> dict[str, dict]:
    found = [figure for path in pages_of(index) for figure in parse(path)[0].figures]
    named = {figure["name"]: figure for figure in found}
    assert len(named) == len(found)
    return named


def points(d: str) -> np.ndarray:
    return np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]).reshape(-1, 2)


def test_pages_hold_every_image_once_and_link_only_what_is_there(tmp_path):
    results, pictures = write_run(tmp_path, "jsonl")
    seen = []
    index = write_viewer(results, tmp_path / "viewer", page_size=2, on_image=seen.append)
    assert index == tmp_path / "viewer" / "index.html"
    assert seen == [name for name, *_ in IMAGES]
    pages = pages_of(index)
    assert [p.name for p in pages] == ["0001.html", "0002.html", "0003.html"]  # ceil(6 / 2)
    names = []
    for path in [index, *pages]:
        page, _ = parse(path)
        for link in page.links:
            assert (path.parent / link.split("#")[0]).is_file(), (path.name, link)
        names += [figure["name"] for figure in page.figures]
        if path != index:
            assert len(page.figures) == 2
    assert names == [name.replace("\udce9", "\ufffd") for name, *_ in IMAGES]  # once each, in the run's order
    assert len(list((tmp_path / "viewer" / "thumbs").glob("*.jpg"))) == 5  # not the missing one

    # written again with fewer pages: nothing of the first is left
    write_viewer(results, tmp_path / "viewer", page_size=4)
    assert sorted(p.name for p in (tmp_path / "viewer" / "pages").iterdir()) == ["0001.html", "0002.html"]

    # the pictures moved: blank boxes saying why, unless the folder is given
    pictures.rename(tmp_path / "moved")
    shown = figures(write_viewer(results, tmp_path / "viewer", page_size=4))
    assert all(f["img"] is None and "is not there" in "".join(f["text"]) and len(f["paths"]) == min(len(IMAGES[n][3]), 100)
               for n, f in enumerate(shown.values()))
    assert not list((tmp_path / "viewer" / "thumbs").iterdir())
    shown = figures(write_viewer(results, tmp_path / "viewer", tmp_path / "moved"))
    assert sum(f["img"] is not None for f in shown.values()) == 5


@pytest.mark.parametrize("fmt", ["coco", "jsonl", "polygons"])
def test_each_image_has_its_top_outlines_with_score_and_area(tmp_path, fmt):
    results, _ = write_run(tmp_path, fmt)
    top = 5
    index = write_viewer(results, tmp_path / "viewer", top=top)
    shown = figures(index)
    for name, _, _, boxes in IMAGES:
        assert len(shown[name.replace("\udce9", "\ufffd")]["paths"]) == min(top, len(boxes)), name
    ranked = {int(p["data-rank"]): p for p in shown["a.png"]["paths"]}
    assert [(float(ranked[r]["data-score"]), int(ranked[r]["data-area"])) for r in (1, 2, 3)] == [(0.9, 1200), (0.5, 2500), (0.2, 400)]
    assert "score 0.900 · area 1,200 px" in " ".join(shown["a.png"]["text"])  # the tooltip without JavaScript
    first = points(ranked[1]["d"])  # the 40x30 box at (10, 10), at full size
    assert np.allclose(first.min(0), (10, 10), atol=0.6) and np.allclose(first.max(0), (50, 40), atol=0.6)
    big = {int(p["data-rank"]): p for p in shown["sub/big.png"]["paths"]}
    assert shown["sub/big.png"]["img"]["width"] == "640" and shown["sub/big.png"]["img"]["height"] == "512"
    outline = points(big[1]["d"]) / 0.64  # scaled to the thumbnail
    assert np.allclose(outline.min(0), (100, 200), atol=2) and np.allclose(outline.max(0), (400, 600), atol=2)
    assert int(big[1]["data-area"]) == 120_000 and len({p["stroke"] for p in shown[ODD]["paths"]}) == top  # a colour per rank
    assert "no proposals" in " ".join(shown["empty.png"]["text"])
    assert shown["gone.png"]["img"] is None and "no picture" in " ".join(shown["gone.png"]["text"])
    assert len(shown["gone.png"]["paths"]) == 1  # the outlines on a blank box
    drawn = [p for p in shown[ODD]["paths"] if "off" not in p.get("class", "")]
    assert len(drawn) == 5  # all of the top 5: the first 10 are drawn before any control is touched


def test_file_names_are_text_not_markup(tmp_path):
    results, _ = write_run(tmp_path, "coco")
    index = write_viewer(results, tmp_path / "viewer")
    for path in [index, *pages_of(index)]:
        page, source = parse(path)
        assert "<script>alert" not in source and "<b>.png" not in source, path.name
        assert source.count("<script") == (0 if path == index else 1)  # the page's own viewer.js only
    page, _ = parse(pages_of(index)[0])
    assert ODD in page.figures[1]["name"] and page.figures[1]["img"]["alt"] == ODD
    assert "bad<b>.png" in "".join(parse(index)[0].text)  # listed as skipped, as text
    latin1 = figures(index)["caf\ufffd.png"]  # shown with a replacement character, its picture read by its own name
    assert latin1["img"]["alt"] == "caf\ufffd.png" and (index.parent / "pages" / latin1["img"]["src"]).is_file()


def test_files_not_from_propose_are_one_line_errors(tmp_path):
    results, pictures = write_run(tmp_path, "coco")
    images_json_path(results).rename(tmp_path / "elsewhere.json")
    with pytest.raises(FastMaskError, match="images.json not found"):
        write_viewer(results, tmp_path / "viewer")
    (tmp_path / "elsewhere.json").rename(images_json_path(results))
    with pytest.raises(FastMaskError, match="page_size and top must be at least 1"):
        write_viewer(results, tmp_path / "viewer", page_size=0)
    with pytest.raises(FastMaskError, match="images folder not found"):
        write_viewer(results, tmp_path / "viewer", images=tmp_path / "nowhere")
    other = tmp_path / "other.json"
    other.write_text(results.read_text().replace('"image_id":20', '"image_id":99'))
    shutil.copy(images_json_path(results), images_json_path(other))
    with pytest.raises(FastMaskError, match="image id 99, which r?.*not list at all"):
        write_viewer(other, tmp_path / "viewer")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_a_page_renders_in_a_browser_without_console_errors(tmp_path):
    results, _ = write_run(tmp_path, "jsonl")
    index = write_viewer(results, tmp_path / "viewer", page_size=3)
    first = pages_of(index)[0]
    probe = first.with_name("probe.html")  # the page, then a click on image 1's best proposal
    probe.write_text(first.read_text(encoding="utf-8").replace("</body>", CLICK + "</body>"), encoding="utf-8")
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*browser, "--dump-dom", probe.as_uri() + "#shown=2"], capture_output=True, text=True, timeout=30)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    drawn = _Page()
    drawn.feed(dom.stdout)  # after the scripts: the control read #shown=2 from the address
    assert [sum("off" not in p.get("class", "") for p in f["paths"]) for f in drawn.figures] == [2, 2, 0]
    assert all(link.endswith("#shown=2") for link in drawn.links if link.endswith(".html") and "index" not in link)
    assert "#1 · score 0.900 · area 1,200 px (clicked)" in "".join(drawn.figures[0]["text"])
    shot = tmp_path / "shot.png"
    done = subprocess.run([*browser, "--window-size=1200,900", f"--screenshot={shot}", first.as_uri()],
                          capture_output=True, text=True, timeout=30)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.std() > 10  # not blank

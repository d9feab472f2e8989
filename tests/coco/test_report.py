"""`fastmask eval --report`: per-object matches against COCOeval's own arrays, and the page built from
them, on drawn scenes whose fates are known."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastmask_cli.coco.evaluate import evaluate
from fastmask_cli.coco.matches import FOUND, LOOSE, MISSED
from fastmask_cli.coco.report import report
from support.cli import run
from support.coco_data import CocoData

H, W = 120, 160
ODD = "<img src=x onerror=alert(1)>.png"  # a file name that is markup
ODD_CATEGORY = "<b>cat & dog</b>"


def rle(x, y, w, h):
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[y : y + h, x : x + w] = 1
    encoded = mask_utils.encode(mask)
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def proposal(image_id, x, y, w, h, score):
    return {"image_id": image_id, "category_id": 1, "segmentation": rle(x, y, w, h), "score": score}


@pytest.fixture
def scene(tmp_path: Path):
    """Image 1 (named as markup): A found exactly at rank 1, B loosely (IoU 0.6), a crowd. Image 2: C
    found only by the proposal ranked 101st (IoU 0.8 there, 0.3 in the top 100), D by nothing."""
    coco = CocoData(((1, "person"), (7, ODD_CATEGORY)))
    first, second = coco.image(ODD, W, H), coco.image("two.png", W, H)
    objects = {"A": (first, (10, 10, 40, 40), 1), "B": (first, (80, 20, 50, 50), 7), "crowd": (first, (0, 90, 30, 20), 1),
               "C": (second, (20, 20, 60, 60), 7), "D": (second, (120, 80, 30, 30), 1)}
    for name, (image_id, box, category) in objects.items():
        coco.annotation(image_id, rle(*box), list(box), float(box[2] * box[3]), iscrowd=int(name == "crowd"),
                        category_id=category)
    gt = coco.write(tmp_path / "gt.json")
    results = [proposal(first, 10, 10, 40, 40, 0.99), proposal(first, 80, 20, 50, 30, 0.9)]  # B: IoU 1500/2500
    results += [proposal(second, 20, 20, 60, 20, 0.9 - i * 1e-4) for i in range(100)]  # C: IoU 1200/3600, x100
    results.append(proposal(second, 20, 20, 60, 48, 0.01))  # C: IoU 0.8, ranked 101st
    (tmp_path / "r.json").write_text(json.dumps(results))
    pictures = tmp_path / "images"
    pictures.mkdir()
    for name in (ODD, "two.png"):  # drawn: grey with the objects in white
        picture = np.full((H, W, 3), 90, np.uint8)
        cv2.imwrite(str(pictures / name), picture)
    return gt, tmp_path / "r.json", pictures


def by_annotation(matches):
    return {int(a): row for row, a in enumerate(matches.annotation)}


def test_each_object_has_its_fate_best_proposal_and_rank(scene):
    gt, results, _ = scene
    evaluation = evaluate(gt, results)
    matches = evaluation.matches["segm"]
    row = by_annotation(matches)  # annotations in file order: A B crowd C D
    status = matches.status()
    assert [status[row[a]] for a in (0, 1, 3, 4)] == [FOUND, LOOSE, MISSED, MISSED]
    assert matches.crowd[row[2]] and not matches.crowd[row[0]]
    assert matches.best_iou_top[row[1]] == pytest.approx(0.6) and matches.rank_top[row[1]] == 1
    assert matches.best_iou_top[row[3]] == pytest.approx(1 / 3) and matches.best_iou[row[3]] == pytest.approx(0.8)
    assert matches.rank[row[3]] == 100  # 0-based: the 101st proposal
    assert matches.proposals[row[3]]["score"] == 0.01 and row[4] not in matches.proposals  # nothing overlaps D
    assert "at most 101 results per image: AR@1000 counts those (propose with --top-k 1000 to measure it)" in evaluation.notes


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_recall_from_the_matches_is_cocoevals_own(scene, iou_type):
    gt, results, _ = scene
    evaluation = evaluate(gt, results)
    matches, recall = evaluation.matches[iou_type], evaluation.results[iou_type]
    for n in (10, 100, 1000):
        assert np.allclose(matches.recall(n), recall.curves[n]) and matches.recall(n).mean() == pytest.approx(recall.metrics[f"AR@{n}"])
    curve = matches.recall(np.array([1, 100, 101]))
    assert curve.shape == (3, 10) and (np.diff(curve, axis=0) >= 0).all()
    assert curve[2].mean() > curve[1].mean()  # the 101st proposal finds C
    per_image = matches.image_recall()
    assert set(per_image) == {0, 1} and per_image[1] < per_image[0]


class _Page(HTMLParser):
    """The page's text, image sources and table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.text, self.sources, self.rows, self._row, self._tables = [], [], [], None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag == "table":
            self._tables.append(attrs.get("class"))
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append((self._tables[-1], self._row))
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None:
            self._row.append(data)


def read_page(index: Path) -> tuple[_Page, str]:
    source = index.read_text(encoding="utf-8")
    page = _Page()
    page.feed(source)
    return page, source


def test_the_report_counts_colours_and_escapes(scene, tmp_path):
    gt, results, pictures = scene
    evaluation = evaluate(gt, results)
    index = report(evaluation, tmp_path / "report", images=pictures, results=results, report_images=2)
    page, source = read_page(index)
    assert "onerror=alert" not in source.replace("onerror=alert(1)&gt;", "")  # only ever as text
    assert ODD in "".join(page.text) and ODD_CATEGORY in "".join(page.text)
    missed = [cells for kind, cells in page.rows if kind == "sortable" and cells[0] != "image"]
    assert sorted((c[0], c[1], c[2]) for c in missed) == sorted([("two.png", "person", "900"), ("two.png", ODD_CATEGORY, "3600")])
    assert {c[1]: c[-1] for c in missed} == {ODD_CATEGORY: "101", "person": "—"}  # rank of the best proposal, 1-based
    text = " ".join(" ".join(page.text).split())
    assert "1 found (IoU ≥ 0.75) · 1 loose (0.5–0.75) · 0 missed" in text and "0 found (IoU ≥ 0.75) · 0 loose (0.5–0.75) · 2 missed" in text
    for src in page.sources:
        assert (index.parent / src).is_file(), src
    assert len([s for s in page.sources if s.startswith("gallery/")]) == 3  # the misses beside only where there are some
    # the worst image (two.png) first: D outlined red, C red with its proposal tinted beside
    fates = cv2.imread(str(index.parent / "gallery" / "0000-fates.jpg"))
    assert fates.shape[:2] == (H, W)
    red = (fates[..., 2] > 180) & (fates[..., 1] < 100)
    assert red[80:110, 118:152].any() and not red[40:60, 40:60].any()  # D's outline, nothing inside C
    found = cv2.imread(str(index.parent / "gallery" / "0001-fates.jpg"))
    green = (found[..., 1] > 140) & (found[..., 2] < 120) & (found[..., 0] < 120)
    assert green[8:52, 8:52].any() and not green[60:, :].any()  # A only


def test_without_pictures_or_masks_the_page_says_so(scene, tmp_path):
    gt, results, pictures = scene
    boxes = [{k: v for k, v in r.items() if k != "segmentation"} | {"bbox": list(mask_utils.toBbox(r["segmentation"]))}
             for r in json.loads(results.read_text())]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes, default=float))
    (pictures / "two.png").unlink()
    evaluation = evaluate(gt, tmp_path / "boxes.json")
    assert set(evaluation.matches) == {"bbox"}
    index = report(evaluation, tmp_path / "report", images=pictures, report_images=4)
    page, _ = read_page(index)
    text = " ".join(" ".join(page.text).split())
    assert "masks not evaluated" in text and "figures are for boxes only" in text
    assert re.search(r"no picture: \S*two\.png", text)
    assert all((index.parent / s).is_file() for s in page.sources)


def test_eval_and_propose_write_a_report_from_the_command_line(scene, tmp_path):
    gt, results, pictures = scene
    out = run("eval", gt, results, "--report", tmp_path / "page", "--report-pictures", pictures, "--report-images", "1")
    assert out.exit_code == 0, out.output
    assert f"report: {tmp_path / 'page' / 'index.html'}" in out.flat
    assert len(list((tmp_path / "page" / "gallery").glob("*.jpg"))) == 2
    (tmp_path / "file").write_text("")
    blocked = run("eval", gt, results, "--report", tmp_path / "file" / "page")
    assert blocked.exit_code == 1 and "is a file, not a folder" in blocked.output
    assert "average recall" not in blocked.output  # refused before the evaluation
    # without ground truth, the page is the proposals viewer (tests/coco/test_viewer.py)
    no_gt = run("propose", pictures, "--out", tmp_path / "p.json", "--top-k", "5", "--report", tmp_path / "p")
    assert no_gt.exit_code == 0, no_gt.output
    index = (tmp_path / "p" / "index.html").read_text()
    assert "pages/0001.html" in index and "average recall" not in no_gt.output
    assert "--ann" not in no_gt.output and len(list((tmp_path / "p" / "thumbs").glob("*.jpg"))) == len(list(pictures.iterdir()))
    pictures_only = run("propose", pictures, "--out", tmp_path / "q", "--format", "labels", "--report", tmp_path / "q-page")
    assert pictures_only.exit_code == 1 and "--report reads the results back" in pictures_only.output
    lonely = run("eval", gt, results, "--report-bench", tmp_path / "bench.json")
    assert lonely.exit_code == 1 and "--report-bench goes with --report DIR" in lonely.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_renders_in_a_browser_without_console_errors(scene, tmp_path):
    gt, results, pictures = scene
    index = report(evaluate(gt, results), tmp_path / "report", images=pictures, results=results)
    shot = tmp_path / "shot.png"
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           "--window-size=1200,1600", f"--screenshot={shot}", index.as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.std() > 10  # not blank

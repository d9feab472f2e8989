"""`fastmask eval --report DIR`: a folder a person opens in any browser, offline (no CDN, no server):
`DIR/index.html`, its figures in `DIR/figures/` and pictures in `DIR/gallery/`.

    evaluation = evaluate("instances_val.json", "results.json")
    report(evaluation, "report/", images="val/", results="results.json")

The page holds the AR table beside the paper's; what was evaluated (files, counts, notes, and the
weights and settings of the run recorded beside the results); the standard figures (figures.py); the
images with the lowest recall and a random sample of the others, each with its objects outlined by
what happened to them and the best proposal for each missed one (gallery.py); and a sortable table of
the missed objects. Everything that comes from the user's files is escaped text, never markup.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import FastMaskError
from ..io.files import atomic_path, room_for, writable_folder
from ..io.images import ImageError, read_image
from ..io.results_file import read_run
from .evaluate import PAPER, PAPER_SOURCE, Evaluation
from .figures import plot_accuracy_against_speed, plot_recall, plot_recall_against_proposals, plot_recall_by_area
from .gallery import draw_fates, encode_jpeg
from .matches import FOUND, LOOSE, MISSED, TOP, Matches

REPORT_IMAGES = 20  # pictures in the gallery: half the worst images, half a random sample of the rest
TABLE_ROWS = 2000  # missed objects listed (the largest first): the page stays light on COCO-size sets
TITLES = {"segm": "masks", "bbox": "boxes"}
FATES = {FOUND: "found (IoU ≥ 0.75)", LOOSE: "loose (0.5–0.75)", MISSED: "missed"}


def report(evaluation: Evaluation, out_dir: Path, *, images: Path | None = None, results: Path | None = None,
           bench: dict[str, Any] | None = None, report_images: int = REPORT_IMAGES, seed: int = 0) -> Path:
    """Write the report of `evaluation` (from `evaluate`) into `out_dir`; returns index.html's path.

    `images`: the folder the ground truth's file names are relative to (without it, or where a file is
    missing, gallery entries are named without a picture); `results`: the results file, whose
    `.images.json` names the weights and settings; `bench`: `fastmask bench --ann --json` output, whose
    accuracy table and plot are added; `report_images`: pictures in the gallery. FastMaskError where
    `out_dir` cannot be written or the evaluation holds no per-object matches."""
    if evaluation.truth is None or not evaluation.matches:
        raise FastMaskError("the evaluation holds no per-object matches: run evaluate() on a ground-truth file first")
    if report_images < 0:
        raise FastMaskError("--report-images must be 0 or more")
    out_dir = writable_folder(Path(out_dir), "the report")
    (out_dir / "figures").mkdir(exist_ok=True)
    (out_dir / "gallery").mkdir(exist_ok=True)
    for old in (out_dir / "gallery").glob("[0-9][0-9][0-9][0-9]-*.jpg"):  # an earlier report's pictures
        old.unlink()
    plot_recall(evaluation, out_dir / "figures" / "recall_iou.png")
    plot_recall_against_proposals(evaluation, out_dir / "figures" / "recall_proposals.png")
    plot_recall_by_area(evaluation, out_dir / "figures" / "recall_area.png")
    iou_type = "segm" if "segm" in evaluation.matches else "bbox"
    matches = evaluation.matches[iou_type]
    sections = [_summary(evaluation, results), _figures(evaluation),
                _gallery(evaluation.truth, matches, images, out_dir, report_images, seed), _missed_table(evaluation.truth, matches)]
    if bench:
        sections.insert(2, _bench(bench, out_dir))
    title = f"fastmask report: {Path(results).name if results else 'results'} against {evaluation.truth.path.name}"
    links = [("summary", "summary"), ("figures", "figures")] + [("bench", "accuracy against speed")] * bool(bench) + [
        ("gallery", "gallery"), ("missed", "missed objects")]
    nav = " · ".join(f"<a href='#{anchor}'>{name}</a>" for anchor, name in links)
    page = PAGE.format(title=_text(title), nav=nav, sections="\n".join(sections), script=SCRIPT, style=STYLE)
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:  # written last: a page never points at pictures not yet there
        tmp.write_text(page, encoding="utf-8")
    return index


def _text(value: Any) -> str:
    """User-derived text as page text: never markup."""
    return html.escape(str(value), quote=True)


def _table(header: list[str] | None, rows: list[list[str]], attrs: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header or [])
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table {attrs}>{head}<tbody>\n{body}\n</tbody></table>"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"


def _summary(evaluation: Evaluation, results: Path | None) -> str:
    truth = evaluation.truth
    first = next(iter(evaluation.results.values()))
    header = ["metric"] + [h for t in evaluation.results for h in (f"{TITLES[t]} (ours)", f"{TITLES[t]} (paper)")]
    rows = []
    for metric in first.metrics:
        row = [_text(metric)]
        for t, recall in evaluation.results.items():
            paper = PAPER[t].get(metric)
            row += [_percent(recall.metrics[metric]), "" if paper is None else f"{paper:.1f}"]
        rows.append(row)
    counted = int((~next(iter(evaluation.matches.values())).crowd).sum())
    facts = [("ground truth", _text(truth.path)), ("results", _text(results) if results else "(a list in memory)"),
             ("images evaluated", str(first.images)), ("objects (crowds left out)", str(counted)),
             ("proposals", str(first.proposals))]
    if results is not None:
        try:
            run, _ = read_run(Path(results))
            for key, label in (("weights", "weights (sha256)"), ("settings", "settings"), ("images_dir", "images proposed on")):
                if key in run:
                    value = run[key] if isinstance(run[key], str) else json.dumps(run[key], sort_keys=True)
                    facts.append((label, f"<code>{_text(value)}</code>"))
        except FastMaskError:
            facts.append(("run", "no fastmask run record beside the results (written by another tool?)"))
    if "segm" not in evaluation.results:
        facts.append(("masks", "not evaluated (the results or the ground truth have no masks): the figures are for boxes only"))
    notes = "".join(f"<li>{_text(n)}</li>" for n in evaluation.notes) or "<li>none</li>"
    return (f"<section id='summary'><h2>Average recall (%), class-agnostic, IoU 0.50:0.95</h2>{_table(header, rows)}"
            f"<p class='dim'>{PAPER_SOURCE}</p><h3>What was evaluated</h3>"
            + _table(None, [[k, v] for k, v in facts], "class='facts'") + f"<h3>Notes</h3><ul>{notes}</ul></section>")


def _figures(evaluation: Evaluation) -> str:
    figures = [("recall_iou.png", "Recall against IoU threshold at 10, 100 and 1000 proposals (the paper's Fig. 8)."),
               ("recall_proposals.png", "Recall against the number of proposals per image, at IoU 0.5, 0.75 and averaged."),
               ("recall_area.png", f"Objects by area: found (IoU ≥ 0.5 with one of the top {TOP}) and missed.")]
    body = "".join(f"<figure><a href='figures/{name}'><img src='figures/{name}' alt='{_text(caption)}'></a>"
                   f"<figcaption>{_text(caption)}</figcaption></figure>" for name, caption in figures)
    return f"<section id='figures'><h2>Figures</h2>{body}</section>"


def _chosen_images(recall: dict[int, float], count: int, seed: int) -> list[tuple[int, str]]:
    """(image index, why) for the gallery: the worst half by `recall` (AR@100 per image), then a random
    sample of the others."""
    order = sorted(recall, key=lambda i: (recall[i], i))
    worst = order[: (count + 1) // 2]
    others = np.array(order[len(worst):], dtype=np.int64)
    sample = np.random.default_rng(seed).choice(others, size=min(count - len(worst), len(others)), replace=False)
    return [(i, "worst") for i in worst] + [(int(i), "sample") for i in sorted(sample)]


def _gallery(truth: Any, matches: Matches, images: Path | None, out_dir: Path, count: int, seed: int) -> str:
    recall, status = matches.image_recall(), matches.status()
    cards = []
    for n, (i, why) in enumerate(_chosen_images(recall, count, seed)):
        rows = np.flatnonzero(matches.image == i)
        name = truth.file_names[i] or str(truth.ids[i])
        fates = np.bincount(status[rows][~matches.crowd[rows]], minlength=3)
        caption = (f"<b>{_text(name)}</b> · AR@{TOP} {recall[i] * 100:.1f} · " +
                   " · ".join(f"<span class='f{k}'>{fates[k]} {FATES[k]}</span>" for k in (FOUND, LOOSE, MISSED)))
        picture = _picture(truth, matches, i, rows, images, out_dir, n, missed=bool(fates[MISSED]))
        cards.append(f"<div class='card {why}'><p>{'lowest recall' if why == 'worst' else 'random sample'}: {caption}</p>"
                     f"{picture}</div>")
    legend = ("<p>Outlines: <span class='f2'>found at IoU ≥ 0.75</span>, <span class='f1'>found at 0.5–0.75</span>, "
              f"<span class='f0'>missed</span> within the top {TOP}, <span class='crowd'>crowd</span> (not counted). "
              "Right, where an object was missed: each missed object with the best proposal for it (any rank), its IoU and rank. "
              "Click for full size.</p>")
    return f"<section id='gallery'><h2>Gallery</h2>{legend}{''.join(cards) or '<p>no image has an object to show</p>'}</section>"


def _picture(truth: Any, matches: Matches, i: int, rows: np.ndarray, images: Path | None, out_dir: Path, n: int,
             missed: bool) -> str:
    """The pictures of image i as HTML (its fates, and its misses where it has some), or why there are none."""
    name = truth.file_names[i]
    if images is None or name is None:
        return "<p class='missing'>no picture: no --images folder given</p>" if images is None else \
            "<p class='missing'>no picture: the ground truth gives this image no file_name</p>"
    frame = truth.frame(i)
    try:
        image = read_image(Path(images) / name, frame=frame)
    except (ImageError, OSError) as exc:
        return f"<p class='missing'>no picture: {_text(Path(images) / name)}: {_text(exc)}</p>"
    if frame is not None and image.shape[1::-1] != frame:
        image = cv2.resize(image, frame, interpolation=cv2.INTER_AREA)  # the objects are in the ground truth's grid
    links = []
    fates, misses = draw_fates(image, truth, matches, rows)
    for suffix, picture in [("fates", fates)] + [("misses", misses)] * missed:
        path = out_dir / "gallery" / f"{n:04d}-{suffix}.jpg"
        with room_for(path):
            path.write_bytes(encode_jpeg(picture))
        links.append(f"<a href='gallery/{path.name}'><img src='gallery/{path.name}' alt='{suffix}'></a>")
    return f"<div class='pair'>{''.join(links)}</div>"


def _missed_table(truth: Any, matches: Matches) -> str:
    missed = np.flatnonzero((matches.status() == MISSED) & ~matches.crowd)
    missed = missed[np.argsort(-matches.area[missed], kind="stable")]
    shown = missed[:TABLE_ROWS]
    rows = []
    for row in shown:
        i, a = int(matches.image[row]), int(matches.annotation[row])
        category = truth.categories.get(int(truth.category[a]), str(int(truth.category[a])))
        rank = int(matches.rank[row])
        rows.append([_text(truth.file_names[i] or truth.ids[i]), _text(category), f"{matches.area[row]:.0f}",
                     f"{matches.best_iou_top[row]:.2f}", f"{matches.best_iou[row]:.2f}", str(rank + 1) if rank >= 0 else "—"])
    header = ["image", "category", "area (px)", f"best IoU in top {TOP}", "best IoU (any rank)", "rank of that proposal"]
    more = f" (the {len(shown)} largest of {len(missed)})" if len(shown) < len(missed) else ""
    return (f"<section id='missed'><h2>Missed objects{more}</h2><p>Not found at IoU ≥ 0.5 within the top {TOP} "
            f"({TITLES[matches.iou_type]}). Click a column to sort.</p>"
            + _table(header, rows, "class='sortable'") + "</section>")


def _bench(bench: dict[str, Any], out_dir: Path) -> str:
    rows = bench.get("accuracy_rows") or []
    if not rows:
        return "<section id='bench'><h2>Accuracy against speed</h2><p>the bench JSON has no accuracy rows (run bench with --ann)</p></section>"
    plot_accuracy_against_speed(rows, out_dir / "figures" / "accuracy_speed.png")
    header = ["scales", "mode", "s/img", "masks AR@10", "masks AR@100", "boxes AR@10", "boxes AR@100"]
    body = [[str(r["scales"]), _text(r["mode"]), f"{r['s_per_image']:.3f}",
             *[_percent((r.get(t) or {}).get(m)) for t in ("segm", "bbox") for m in ("AR@10", "AR@100")]] for r in rows]
    return ("<section id='bench'><h2>Accuracy against speed (the paper's Table 4 for these images)</h2>"
            + _table(header, body) + "<figure><img src='figures/accuracy_speed.png' alt='AR against seconds per image'>"
            "</figure></section>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ccc; padding: .2em .5em; text-align: right; }
td:first-child, th:first-child, .facts td { text-align: left; } .dim { color: #777; }
figure { display: inline-block; margin: .5em; } figure img { max-width: 100%; } figcaption { font-size: .9em; }
.card { margin: 1em 0; } .pair { display: flex; gap: .5em; align-items: flex-start; }
.pair img { max-width: 100%; max-height: 420px; } .pair a { flex: 0 1 auto; } .f2 { color: #28aa3c; } .f1 { color: #e69a00; } .f0 { color: #e62828; } .crowd { color: #999; }
.missing { color: #a00; } th { cursor: pointer; background: #f4f4f4; }
"""

# Sorting without a framework: a click on a header sorts by that column, numbers as numbers.
SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var up = th.dataset.order !== 'up';
    th.dataset.order = up ? 'up' : 'down';
    rows.sort(function (a, b) {
      var x = a.cells[column].textContent, y = b.cells[column].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return up ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body><h1>{title}</h1>
<nav>{nav}</nav>
{sections}
<script>{script}</script>
</body></html>
"""

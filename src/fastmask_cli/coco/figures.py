"""The standard figures of proposal evaluation, drawn with matplotlib (no display needed; imported only
when a figure is drawn): one panel per IoU type (masks, boxes).

- recall against IoU threshold at 10/100/1000 proposals (the paper's Fig. 8; Hosang et al., TPAMI 2016);
- recall against the number of proposals, 1 to 1000 on a log axis, at IoU 0.5, 0.75 and averaged (AR);
- recall by object area: how many objects of each size were found (IoU >= 0.5 in the top 100) or missed;
- AR against seconds per image, one point per scale count (the paper's Table 4 as a plot).

Every function writes a PNG atomically and returns nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.files import atomic_path
from .matches import LOOSE_IOU, TOP

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .evaluate import Evaluation

TITLES = {"segm": "masks", "bbox": "boxes"}
COLOURS = {10: "#1f77b4", 100: "#2ca02c", 1000: "#d62728"}
PANEL = (4.6, 3.6)  # inches per panel


def _figure(panels: int) -> tuple["Figure", list["Axes"]]:
    from matplotlib.figure import Figure  # not pyplot: no global state, no display

    figure = Figure(figsize=(PANEL[0] * max(panels, 1), PANEL[1]), layout="constrained", dpi=100)
    axes = figure.subplots(1, max(panels, 1), squeeze=False)[0]
    return figure, list(axes)


def _save(figure: "Figure", path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png")


def plot_recall(evaluation: "Evaluation", path: Path) -> None:
    """Recall against IoU threshold (0.5 to 0.95) at 10, 100 and 1000 proposals, with each AR."""
    figure, axes = _figure(len(evaluation.results))
    for ax, (iou_type, recall) in zip(axes, evaluation.results.items()):
        for n, curve in sorted(recall.curves.items()):
            ar = recall.metrics[f"AR@{n}"]
            ax.plot(recall.iou_thresholds, curve, color=COLOURS.get(n), marker="o", markersize=3,
                    label=f"N={n}  AR={ar * 100:.1f}" if ar is not None else f"N={n}")
        _axes(ax, f"recall of {TITLES[iou_type]} against IoU", "IoU threshold", (0.5, 0.95))
    _save(figure, path)


def plot_recall_against_proposals(evaluation: "Evaluation", path: Path) -> None:
    """Recall against the number of proposals per image (1 to 1000, log axis) at IoU 0.5, 0.75 and
    averaged over 0.5:0.95 (AR), from each object's matches."""
    figure, axes = _figure(len(evaluation.matches))
    ns = np.unique(np.round(np.logspace(0, 3, 40)).astype(int))
    for ax, (iou_type, matches) in zip(axes, evaluation.matches.items()):
        recall = matches.recall(ns)  # (len(ns), T)
        thresholds = list(np.round(matches.iou_thresholds, 2))
        for label, values in (("IoU 0.5", recall[:, thresholds.index(0.5)]), ("IoU 0.75", recall[:, thresholds.index(0.75)]),
                              ("AR (0.5:0.95)", recall.mean(axis=1))):
            ax.plot(ns, values, label=label)
        ax.set_xscale("log")
        _axes(ax, f"recall of {TITLES[iou_type]} against proposals", "proposals per image", (1, 1000))
    _save(figure, path)


def plot_recall_by_area(evaluation: "Evaluation", path: Path) -> None:
    """Objects by area (log bins, pixels): found (IoU >= 0.5 with one of the top 100) against missed.
    COCO's small / medium / large limits (32², 96²) are marked."""
    figure, axes = _figure(len(evaluation.matches))
    for ax, (iou_type, matches) in zip(axes, evaluation.matches.items()):
        counted = ~matches.crowd
        area = np.maximum(matches.area[counted], 1.0)
        found = matches.best_iou_top[counted] >= LOOSE_IOU
        bins = np.logspace(0, max(np.log10(area.max(initial=1.0)) + 0.01, 1.0), 25)
        ax.hist([area[found], area[~found]], bins=bins, stacked=True, color=["#2ca02c", "#d62728"],
                label=[f"found ({int(found.sum())})", f"missed ({int((~found).sum())})"])
        for limit in (32**2, 96**2):
            ax.axvline(limit, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(f"{TITLES[iou_type]}: objects by area, top {TOP}")
        ax.set_xlabel("object area (pixels; dotted: small | medium | large)")
        ax.set_ylabel("objects")
        ax.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def plot_accuracy_against_speed(rows: list[dict[str, Any]], path: Path) -> None:
    """AR@100 against seconds per image, one point per scale count, a line per mode (one shot, pyramid);
    `rows` as `bench --ann` records them (scales, mode, s_per_image, segm / bbox AR)."""
    types = [t for t in ("segm", "bbox") if any(r.get(t) for r in rows)]
    figure, axes = _figure(len(types))
    for ax, iou_type in zip(axes, types):
        for mode in sorted({r["mode"] for r in rows}):
            points = sorted((r["s_per_image"], r[iou_type]["AR@100"], r["scales"]) for r in rows
                            if r["mode"] == mode and r.get(iou_type))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
            for x, y, scales in points:
                ax.annotate(f"{scales}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_title(f"{TITLES[iou_type]}: AR@100 against speed (labels: scales)")
        ax.set_xlabel("seconds per image")
        ax.set_ylabel("AR@100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(figure, path)


def _axes(ax: "Axes", title: str, xlabel: str, xlim: tuple[float, float]) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("recall")
    ax.set_xlim(*xlim)
    ax.set_ylim(0, 1.02)  # a curve at recall 1 stays visible
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

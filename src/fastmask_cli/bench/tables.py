"""What a `BenchReport` says, as rich tables and lines: the speed table (whose default columns fit an
80-column terminal; `wide` adds the rest), the folder runs, the speed-ups read run by run, and AR against
scales beside the paper's Table 4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import RenderableType
from rich.table import Table

from .measure import STAGES, BenchReport, FolderRow


def speed_table(report: BenchReport, title: str, wide: bool = False) -> Table:
    """Seconds per image (and images/s) of each timed configuration, `title` above its parameters and FLOPs."""
    first = report.rows[0]
    table = Table(title=f"{title} ({report.settings['parameters_m']} M parameters, {first.network_gflops:.1f} GFLOPs at "
                  f"{first.scales} scales)")
    columns = {
        "scales": lambda r: str(r.scales), "mode": lambda r: r.mode, "top-k": lambda r: str(r.top_k),
        "backend": lambda r: r.backend, "img/s": lambda r: f"{r.images_per_second:.2f}", "s/img": lambda r: f"{r.median_s:.3f}",
        "network s": lambda r: f"{r.stages_s['network']:.3f}",
        "net/floor": lambda r: f"{r.stages_s['network'] / r.flop_floor_s:.2f}x",
    }
    if wide:
        columns |= {"p90 s": lambda r: f"{r.p90_s:.3f}",
                    **{f"{s} s": (lambda r, s=s: f"{r.stages_s[s]:.3f}") for s in STAGES if s != "network"},
                    "GFLOPs": lambda r: f"{r.network_gflops:.1f}", "windows": lambda r: str(r.windows),
                    "peak MB": lambda r: f"{r.peak_memory_mb:.0f}"}
    for column in columns:
        table.add_column(column, justify="right")
    for r in report.rows:
        table.add_row(*[cell(r) for cell in columns.values()])
    return table


def machine_line(report: BenchReport) -> str:
    m = report.machine
    return (f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}" + (f", {m['gpu']}" if "gpu" in m else "")
            + f"; measured matmul rate {m['matmul_gflops']} GFLOP/s (net/floor = network time / (FLOPs / that "
            "rate)); s/img: one image from pixels in memory to encoded, suppressed proposals")


def folder_table(rows: list[FolderRow], title: str, wide: bool = False) -> Table:
    """`propose` over a folder, files to results file, per top-k, backend and process count; `wide`: its stages
    (timed in one process only: blank with jobs) and what is left outside them."""
    table = Table(title=title)
    columns = ["top-k", "backend", "jobs × threads", "img/s", "s/img"] + ([*STAGES, "other"] if wide else [])
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        cells = [str(r.top_k), r.backend, f"{r.jobs} × {r.threads}", f"{r.images_per_second:.2f}", f"{1 / r.images_per_second:.3f}"]
        if wide:
            cells += ([f"{r.stages_s[name]:.3f}" for name in STAGES] + [f"{r.other_s:.3f}"] if r.stages_s
                      else ["—"] * (len(STAGES) + 1))
        table.add_row(*cells)
    return table


def speedup_lines(report: BenchReport) -> list[str]:
    """Each speed-up read run by run (timed in turn): processes against one, ONNX Runtime against PyTorch,
    one shot against the image pyramid."""
    lines = []
    one = {(r.top_k, r.backend): r for r in report.folder_rows if r.jobs == 1}
    for r in report.folder_rows:
        base = one.get((r.top_k, r.backend))
        if r.jobs > 1 and base is not None:
            ratios = [b / m for b, m in zip(base.seconds, r.seconds)]
            lines.append(f"top-{r.top_k}, {r.backend}: {r.jobs} processes × {r.threads} threads propose the folder "
                         f"{float(np.median(ratios)):.2f}x as fast as 1 × {base.threads} (runs side by side: "
                         f"{min(ratios):.2f}x to {max(ratios):.2f}x)")
    for config, (ratio, low, high) in report.backend_speedup().items():
        lines.append(f"{config.scales} scales, top-{config.top_k}: ONNX Runtime runs {ratio:.2f}x as fast as PyTorch end "
                     f"to end (runs side by side: {low:.2f}x to {high:.2f}x)")
    for config, (ratio, low, high) in report.speedup().items():
        lines.append(f"{config.scales} scales, top-{config.top_k}, {config.backend}: one shot is {ratio:.2f}x faster than "
                     f"the image pyramid (runs side by side: {low:.2f}x to {high:.2f}x; paper, 8 scales: 1.7x)")
    return lines


PAPER_TABLE_4 = ("paper, Table 4 (masks, COCO val, Titan X): FastMask 8 scales 16.9 / 31.3 at 0.26 s, 4 scales 13.3 / 26.6 "
                 "at 0.14 s; DeepMask* (an image pyramid) 8 scales 14.3 / 27.3 at 0.45 s, 4 scales 11.3 / 22.2 at 0.24 s")


def accuracy_table(report: BenchReport, ann: Path) -> Table:
    """AR@10 / AR@100 beside seconds per image, per scale count and mode (the paper's Table 4: PAPER_TABLE_4)."""
    rows = report.accuracy_rows
    table = Table(title=f"AR (%) against scales on {Path(ann).name} ({rows[0].images} images, top 100; s/img: "
                  "propose over the folder, files to results)")
    for column in ("scales", "mode", "s/img", "masks AR@10", "masks AR@100", "boxes AR@10", "boxes AR@100"):
        table.add_column(column, justify="right")
    for r in rows:
        cells = [f"{v * 100:.1f}" if v is not None else "n/a" for t in (r.segm, r.bbox) for v in
                 ((t or {}).get("AR@10"), (t or {}).get("AR@100"))]
        table.add_row(str(r.scales), r.mode, f"{r.s_per_image:.3f}", *cells)
    return table


def summary(report: BenchReport, title: str, folder_title: str | None, ann: Path | None, wide: bool = False) -> list[RenderableType]:
    """Everything `fastmask bench` prints of `report`, in order: tables and plain lines."""
    out: list[RenderableType] = [speed_table(report, title, wide), machine_line(report)]
    if report.folder_rows and folder_title:
        out.append(folder_table(report.folder_rows, folder_title, wide))
    out += speedup_lines(report)
    if report.accuracy_rows and ann is not None:
        out += [accuracy_table(report, ann), PAPER_TABLE_4]
    return out

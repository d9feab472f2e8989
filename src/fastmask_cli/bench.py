"""Speed (paper §6.2, Tables 4-5): one shot against an image pyramid, for several numbers of scales.

For each scale count (and mode), warm-up runs, then timed runs on real images resized to one fixed
size, with the device synchronised before every clock reading. The configurations are interleaved run
by run (run 1 of every configuration, then run 2 ...), so that drift on a shared machine moves them
alike, and the one-shot speed-up is taken run by run and reported with its spread. Each run is split into its stages (network,
top-k + mask decoding, paste-back, RLE encoding). The pyramid baseline runs the same body, reduce,
norm and head on the image resized once per level (`FastMask.image_pyramid`), the multi-shot way.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .errors import FastMaskError
from .inference import Proposer, StageTimer

STAGES = ("network", "decode", "paste", "rle")


@dataclass
class BenchRow:
    scales: int
    mode: str  # "one-shot" or "pyramid"
    windows: int
    images_per_second: float
    median_s: float
    p90_s: float
    peak_memory_mb: float
    stages_s: dict[str, float]  # median seconds per stage
    network_gflops: float | None = None
    flop_floor_s: float | None = None  # network FLOPs / the device's measured matmul rate
    latencies_s: list[float] = field(default_factory=list, repr=False)  # every timed run, in run order


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)

    def speedup(self) -> dict[int, tuple[float, float, float]]:
        """Pyramid latency / one-shot latency per scale count (the paper's Table 4 ratio): the median,
        lowest and highest of the ratios of runs timed side by side."""
        by = {(r.scales, r.mode): r.latencies_s for r in self.rows}
        out = {}
        for (scales, mode), one_shot in by.items():
            if mode == "one-shot" and (scales, "pyramid") in by:
                ratios = [p / o for p, o in zip(by[scales, "pyramid"], one_shot)]
                out[scales] = (float(np.median(ratios)), min(ratios), max(ratios))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "rows": [asdict(r) for r in self.rows],
                "speedup_one_shot_vs_pyramid": {str(k): {"median": m, "min": lo, "max": hi}
                                                for k, (m, lo, hi) in self.speedup().items()}}


def parse_size(text: str) -> tuple[int, int]:
    """'800x600' -> (800, 600) as width, height."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FastMaskError(f"--size must be WIDTHxHEIGHT such as 800x600, not {text!r}") from None
    if min(width, height) < 32:
        raise FastMaskError(f"--size {text} is too small (at least 32 px a side)")
    return width, height


def parse_scales(text: str) -> list[int]:
    """'4' or '2,4,6,8' -> [4] or [2, 4, 6, 8]."""
    try:
        scales = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FastMaskError(f"--scales must be a number or a list such as 2,4,6,8, not {text!r}") from None
    if not scales or min(scales) < 1:
        raise FastMaskError("--scales must be positive")
    return scales


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5) -> float:
    """The device's measured dense matrix-multiply rate: the yardstick of the network's FLOP floor."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    timer = StageTimer(device)
    best = float("inf")
    for _ in range(runs):
        with timer.stage("matmul"):
            a @ b
        best = min(best, timer.reset()["matmul"])
    return 2 * n**3 / best / 1e9


def network_flops(proposer: Proposer, image: np.ndarray) -> tuple[float, int]:
    """FLOPs of one forward of the proposer's network (multiply-add = 2), and the windows it scores.
    Counted on the eager network: the counter sees aten operators, which compiled kernels bypass."""
    batch, _, _ = proposer._batch([image])
    with torch.inference_mode(), proposer._autocast(), FlopCounterMode(display=False) as counter:
        pyramid = proposer.network(eager=True)(batch, proposer.scales)
    return float(counter.get_total_flops()), pyramid.grid.num_windows


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS, KiB on Linux


def bench(
    proposer: Proposer,
    images: list[np.ndarray],
    scale_counts: list[int],
    size: tuple[int, int] = (800, 600),
    runs: int = 10,
    warmup: int = 2,
    pyramid: bool = False,
    on_run: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time `proposer` on `images` (resized to `size` = width, height) for each scale count."""
    if not images:
        raise FastMaskError("no images to benchmark")
    if runs < 1 or warmup < 0:
        raise FastMaskError("--runs must be at least 1 and --warmup at least 0")
    width, height = size
    frames = [cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA) for im in images]
    proposer.size = max(width, height)  # the frames are already at the benchmark size: no resizing inside
    device = proposer.device
    rate = matmul_gflops(device, torch.bfloat16 if proposer.precision == "bf16" else
                         torch.float16 if proposer.precision == "fp16" else torch.float32)
    report = BenchReport(machine={**machine_info(device), "matmul_gflops": round(rate, 1)},
                         settings={"size": f"{width}x{height}", "runs": runs, "warmup": warmup, "top_k": proposer.top_k,
                                   "precision": proposer.precision, "compiled": proposer.compiled,
                                   "config": proposer.model.config.to_dict()})
    report.settings["parameters_m"] = round(sum(p.numel() for p in proposer.model.parameters()) / 1e6, 2)
    timer = StageTimer(device)
    configs = [(scales, multi_shot) for scales in scale_counts for multi_shot in ([False, True] if pyramid else [False])]
    latencies = {c: [] for c in configs}
    stages = {c: {name: [] for name in STAGES} for c in configs}
    peak = {c: 0.0 for c in configs}
    for scales, multi_shot in configs:
        proposer.scales, proposer.multi_shot = scales, multi_shot
        for i in range(warmup):
            proposer.propose(frames[i % len(frames)])
    for i in range(runs):
        for config in configs:  # interleaved: drift on a shared machine moves every configuration alike
            proposer.scales, proposer.multi_shot = config
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            proposer.timer = timer
            timer.reset()
            start = time.perf_counter()
            proposer.propose(frames[i % len(frames)])
            latencies[config].append(time.perf_counter() - start)  # the last stage synchronised the device
            for name, seconds in timer.reset().items():
                stages[config][name].append(seconds)
            proposer.timer = None
            peak[config] = max(peak[config], _peak_memory_mb(device))
            if on_run:
                on_run(f"{'pyramid' if config[1] else 'one-shot'}, {config[0]} scales")
    for config in configs:
        proposer.scales, proposer.multi_shot = config
        flops, windows = network_flops(proposer, frames[0])
        median = float(np.median(latencies[config]))
        report.rows.append(BenchRow(
            scales=config[0], mode="pyramid" if config[1] else "one-shot", windows=windows, images_per_second=1.0 / median,
            median_s=median, p90_s=float(np.percentile(latencies[config], 90)), peak_memory_mb=peak[config],
            stages_s={name: float(np.median(v)) if v else 0.0 for name, v in stages[config].items()},
            network_gflops=flops / 1e9, flop_floor_s=flops / (rate * 1e9), latencies_s=latencies[config],
        ))
    proposer.multi_shot = False
    return report

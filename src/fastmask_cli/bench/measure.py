"""Speed (paper §6.2, Tables 4-5): what a user gets per image, and one shot against an image pyramid.

For each configuration (scale count, one shot or the pyramid, top-k, network backend), warm-up runs, then
timed runs of `Proposer.propose` on real images resized to one fixed size, with the device synchronised
before every clock reading. Configurations are interleaved run by run (run 1 of every configuration,
then run 2 ...), so that drift on a shared machine moves them alike, and the speed-ups (one shot against
the pyramid, ONNX Runtime against PyTorch) are taken run by run and reported with their spread. Each run
is split into its stages (network, top-k + mask decoding, paste-back, RLE encoding, suppression). The
pyramid baseline runs the same body, reduce, norm and head on the image resized once per level
(`FastMask.image_pyramid`), the multi-shot way.

With ground truth (`bench_accuracy`), each scale count and mode also proposes over the whole folder
and is measured: the paper's Table 4 (AR@10 and AR@100 beside the speed) for the user's images.
"""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..coco.evaluate import evaluate
from ..errors import FastMaskError, ParameterError
from ..inference.options import ProposerOptions
from ..inference.preprocess import pad_batch
from ..inference.proposer import Proposer, StageTimer
from ..runs.jobs import propose_jobs, worker_threads

STAGES = ("network", "detector", "decode", "paste", "rle", "nms")  # detector: the fused ranker's, else 0


@dataclass(frozen=True)
class BenchConfig:
    """One timed configuration: scale count, one shot or the image pyramid, proposals kept, network backend."""

    scales: int
    mode: str  # "one-shot" or "pyramid"
    top_k: int
    backend: str  # "onnx" or "torch" (the pyramid baseline always runs in PyTorch)

    def label(self) -> str:
        return f"{self.mode}, {self.scales} scales, top-{self.top_k}, {self.backend}"


@dataclass
class BenchRow:
    scales: int
    mode: str  # "one-shot" or "pyramid"
    top_k: int
    backend: str
    windows: int
    images_per_second: float
    median_s: float
    p90_s: float
    peak_memory_mb: float
    stages_s: dict[str, float]  # median seconds per stage
    network_gflops: float | None = None
    flop_floor_s: float | None = None  # network FLOPs / the device's measured matmul rate
    latencies_s: list[float] = field(default_factory=list, repr=False)  # every timed run, in run order

    @property
    def config(self) -> BenchConfig:
        return BenchConfig(self.scales, self.mode, self.top_k, self.backend)


@dataclass
class FolderRow:
    """`propose` over a folder, from image files on disk to the results file: what a dataset run gets."""

    top_k: int
    backend: str
    images: int
    images_per_second: float  # median over runs
    seconds: list[float]  # wall time of each run
    stages_s: dict[str, float]  # seconds per image in each stage of the model's work (median over runs); {} with jobs
    jobs: int = 1  # worker processes (runs/jobs.py)
    threads: int = 1  # threads of each

    @property
    def other_s(self) -> float | None:
        """Seconds per image outside the model's stages: reading, decoding, resizing, writing (None with jobs,
        whose stages run in the workers)."""
        return 1.0 / self.images_per_second - sum(self.stages_s.values()) if self.stages_s else None


@dataclass
class AccuracyRow:
    """One scale count and mode measured on ground truth: AR@10 / AR@100 of masks and boxes ([0, 1]; None
    where not measured) beside the seconds per image of that proposing run (files to results file)."""

    scales: int
    mode: str
    images: int
    s_per_image: float
    segm: dict[str, float | None] | None
    bbox: dict[str, float | None] | None


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    folder_rows: list[FolderRow] = field(default_factory=list)
    accuracy_rows: list[AccuracyRow] = field(default_factory=list)

    def _ratios(self, slow: Callable[[BenchConfig], BenchConfig | None]) -> dict[BenchConfig, tuple[float, float, float]]:
        """For each row whose `slow(config)` counterpart was timed: that one's latency / this one's, run by run
        (they were timed side by side): the median, lowest and highest ratio."""
        by = {r.config: r.latencies_s for r in self.rows}
        out = {}
        for config, fast in by.items():
            other = slow(config)
            if other is not None and other != config and other in by:
                ratios = [s / f for s, f in zip(by[other], fast)]
                out[config] = (float(np.median(ratios)), min(ratios), max(ratios))
        return out

    def speedup(self) -> dict[BenchConfig, tuple[float, float, float]]:
        """Pyramid latency / one-shot latency (the paper's Table 4 ratio), per one-shot configuration."""
        return self._ratios(lambda c: replace(c, mode="pyramid", backend="torch") if c.mode == "one-shot" else None)

    def backend_speedup(self) -> dict[BenchConfig, tuple[float, float, float]]:
        """PyTorch latency / ONNX Runtime latency, end to end, per one-shot ONNX configuration."""
        return self._ratios(lambda c: replace(c, backend="torch") if c.mode == "one-shot" and c.backend == "onnx" else None)

    def to_dict(self) -> dict[str, Any]:
        def table(ratios: dict[BenchConfig, tuple[float, float, float]]) -> list[dict[str, Any]]:
            return [{**asdict(c), "median": m, "min": lo, "max": hi} for c, (m, lo, hi) in ratios.items()]

        return {"machine": self.machine, "settings": self.settings, "rows": [asdict(r) for r in self.rows],
                "folder_rows": [{**asdict(r), "other_s": r.other_s} for r in self.folder_rows],
                "accuracy_rows": [asdict(r) for r in self.accuracy_rows],
                "speedup_one_shot_vs_pyramid": table(self.speedup()), "speedup_onnx_vs_torch": table(self.backend_speedup())}


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
    batch = pad_batch([proposer.prepare(image).image], proposer.device)
    with torch.inference_mode(), proposer.autocast(), FlopCounterMode(display=False) as counter:
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
    top_ks: list[int] | None = None,
    backends: list[str] | None = None,
) -> BenchReport:
    """Time `proposer` on `images` (resized to `size` = width, height) for each scale count, top-k
    (default: the proposer's) and network backend (default: the proposer's), one shot and, with
    `pyramid`, the image-pyramid baseline: each configuration a `Proposer.variant` of it."""
    if not images:
        raise FastMaskError("no images to benchmark")
    if runs < 1 or warmup < 0:
        raise ParameterError(("runs", "warmup"), "{0} must be at least 1 and {1} at least 0")
    top_ks, backends = top_ks or [proposer.top_k], backends or [proposer.backend]
    for top_k in top_ks:  # checked as every proposer's is, before any timing
        ProposerOptions(top_k=top_k)
    width, height = size
    frames = [cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA) for im in images]
    device = proposer.device
    rate = matmul_gflops(device, torch.bfloat16 if proposer.precision == "bf16" else
                         torch.float16 if proposer.precision == "fp16" else torch.float32)
    report = BenchReport(machine={**machine_info(device), "matmul_gflops": round(rate, 1)},
                         settings={"size": f"{width}x{height}", "runs": runs, "warmup": warmup, "top_k": top_ks,
                                   "backends": backends, "precision": proposer.precision, "compiled": proposer.compiled,
                                   "config": proposer.model.config.to_dict(), "proposer": proposer.options.stored()})
    report.settings["parameters_m"] = round(sum(p.numel() for p in proposer.model.parameters()) / 1e6, 2)
    configs = [BenchConfig(scales, "one-shot", k, backend) for scales in scale_counts for k in top_ks for backend in backends]
    if pyramid:
        configs += [BenchConfig(scales, "pyramid", k, "torch") for scales in scale_counts for k in top_ks]
    configs.sort(key=lambda c: (c.scales, c.top_k))  # each scale count and top-k together, as the table shows them

    timer = StageTimer(device)
    # the frames are already at the benchmark size: no resizing inside
    variants = {c: proposer.variant(timer=timer, size=max(width, height), scales=c.scales, multi_shot=c.mode == "pyramid",
                                    top_k=c.top_k, backend=c.backend) for c in configs}
    latencies: dict[BenchConfig, list[float]] = {c: [] for c in configs}
    stages = {c: {name: [] for name in STAGES} for c in configs}
    peak = {c: 0.0 for c in configs}
    for config in configs:
        for i in range(warmup):
            variants[config].propose(frames[i % len(frames)])
    timer.reset()
    for i in range(runs):
        for config in configs:  # interleaved: drift on a shared machine moves every configuration alike
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            variants[config].propose(frames[i % len(frames)])
            latencies[config].append(time.perf_counter() - start)  # the last stage synchronised the device
            for name, seconds in timer.reset().items():
                stages[config][name].append(seconds)
            peak[config] = max(peak[config], _peak_memory_mb(device))
            if on_run:
                on_run(config.label())
    counted: dict[tuple[int, str], tuple[float, int]] = {}
    for config in configs:
        if (config.scales, config.mode) not in counted:
            counted[config.scales, config.mode] = network_flops(variants[config], frames[0])
        flops, windows = counted[config.scales, config.mode]
        median = float(np.median(latencies[config]))
        report.rows.append(BenchRow(
            scales=config.scales, mode=config.mode, top_k=config.top_k, backend=config.backend, windows=windows,
            images_per_second=1.0 / median, median_s=median, p90_s=float(np.percentile(latencies[config], 90)),
            peak_memory_mb=peak[config],
            stages_s={name: float(np.median(v)) if v else 0.0 for name, v in stages[config].items()},
            network_gflops=flops / 1e9, flop_floor_s=flops / (rate * 1e9), latencies_s=latencies[config],
        ))
    return report


def bench_folder(proposer: Proposer, report: BenchReport, folder: Path, runs: int, top_ks: list[int], backends: list[str],
                 workers: int | None = None, batch_size: int = 1, jobs: list[int] = (1,),
                 on_run: Callable[[str], None] | None = None) -> None:
    """Time `propose_jobs` over every image of `folder` into a temporary results file, for each top-k, backend
    and count of worker processes (`jobs`, each of the cores over that many threads; interleaved run by run,
    after one untimed run each), adding `report.folder_rows`. Stages are timed in one process only."""
    timer = StageTimer(proposer.device)
    configs = [(k, b, j) for k in top_ks for b in backends for j in jobs]
    staged = {(k, b): proposer.variant(timer=timer, top_k=k, backend=b) for k in top_ks for b in backends}
    # On a GPU the stage timer's synchronisations would stall the pipeline (readers, transfers, writer thread):
    # the timed runs go without it there, and one more run per configuration splits the stages.
    split_apart = proposer.device.type != "cpu"
    variants = {key: proposer.variant(top_k=key[0], backend=key[1]) for key in staged} if split_apart else staged
    seconds: dict[tuple[int, str, int], list[float]] = {c: [] for c in configs}
    stages: dict[tuple[int, str, int], list[dict[str, float]]] = {c: [] for c in configs}
    images = 0
    with tempfile.TemporaryDirectory(prefix="fastmask-bench-") as tmp:
        for i in range(runs + 1 + split_apart):
            for config in configs:
                stage_run = split_apart and i == runs + 1
                if stage_run and config[2] != 1:
                    continue
                timer.reset()
                start = time.perf_counter()
                summary = propose_jobs((staged if stage_run else variants)[config[:2]], folder, Path(tmp) / f"run-{i}.json",
                                       weights_id="bench", jobs=config[2], workers=workers, batch_size=batch_size)
                if i == 0:  # warm-up: caches, the exported graph, the file system
                    continue
                if not stage_run:
                    seconds[config].append(time.perf_counter() - start)
                if config[2] == 1 and (stage_run or not split_apart):
                    stages[config].append({k: v / max(summary.images, 1) for k, v in timer.reset().items()})
                images = summary.images
                if on_run and not stage_run:  # the staged run is not one of the `runs` counted
                    on_run(f"folder, top-{config[0]}, {config[1]}, {config[2]} processes")
    if images == 0:
        raise FastMaskError(f"no readable images in {folder}")
    for config in configs:
        report.folder_rows.append(FolderRow(
            top_k=config[0], backend=config[1], images=images, images_per_second=images / float(np.median(seconds[config])),
            seconds=seconds[config], jobs=config[2],
            threads=torch.get_num_threads() if config[2] == 1 else worker_threads(config[2]),
            stages_s={name: float(np.median([run.get(name, 0.0) for run in stages[config]])) for name in STAGES}
            if stages[config] else {},
        ))


ACCURACY_TOP_K = 100  # AR@10 and AR@100, as the paper's Table 4


def bench_accuracy(proposer: Proposer, report: BenchReport, gt: Path, folder: Path, scale_counts: list[int],
                   pyramid: bool = False, jobs: int = 1, on_run: Callable[[str], None] | None = None) -> None:
    """For each scale count, one shot and (with `pyramid`) the image pyramid: propose the top 100 over
    `folder` (image ids from `gt`) at the proposer's own size, and measure masks and boxes AR@10 / AR@100,
    adding `report.accuracy_rows`; the seconds per image are that run's own. Raises what `evaluate` and
    `propose_jobs` raise."""
    modes = ["one-shot"] + ["pyramid"] * pyramid
    with tempfile.TemporaryDirectory(prefix="fastmask-bench-ann-") as tmp:
        for scales in scale_counts:
            for mode in modes:
                variant = proposer.variant(scales=scales, multi_shot=mode == "pyramid", top_k=ACCURACY_TOP_K,
                                           backend="torch" if mode == "pyramid" else proposer.backend)
                out = Path(tmp) / f"{mode}-{scales}.json"
                start = time.perf_counter()
                summary = propose_jobs(variant, folder, out, jobs=jobs, weights_id="bench", ann=gt)
                seconds = time.perf_counter() - start
                if summary.images == 0:
                    raise FastMaskError(f"no image of {gt.name} was found in {folder}")
                evaluation = evaluate(gt, out)
                measured = {t: {k: r.metrics[k] for k in ("AR@10", "AR@100")} for t, r in evaluation.results.items()}
                report.accuracy_rows.append(AccuracyRow(scales, mode, summary.images, seconds / summary.images,
                                                        measured.get("segm"), measured.get("bbox")))
                if on_run:
                    on_run(f"AR of {mode}, {scales} scales")

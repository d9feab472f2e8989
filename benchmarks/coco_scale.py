"""Training at COCO scale, simulated: indexing time and memory per process, rerunnable.

Writes (once) a synthetic ground truth the size of COCO train2017 (118,287 images, each a link to one
drawn 640x480 photo, and 863,633 polygon annotations of 24 points: about 500 MB of JSON), then trains
on it in this process with DataLoader workers and reports:

- indexing: seconds to read and check the ground truth (`CocoInstances`, through `coco.read_ground_truth`);
- the main process's RSS, and each worker's proportional (PSS) and private memory from
  /proc/PID/smaps_rollup, at a few iterations up to --iterations;
- how long a SIGTERM takes to become a checkpoint (the run then stops, as under Slurm).

    python benchmarks/coco_scale.py --folder /tmp/coco-scale --iterations 500 --workers 2

The figures go in docs/training.md ("At COCO scale"). Needs Linux (/proc) and about 4 GB of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fastmask_cli.modeling.config import preset
from fastmask_cli.training.dataset import CocoInstances
from fastmask_cli.training.engine import train
from fastmask_cli.training.events import TrainEvents
from fastmask_cli.training.settings import TrainSettings

COCO_IMAGES, COCO_OBJECTS, POINTS = 118_287, 863_633, 24
WIDTH, HEIGHT = 640, 480


def write_dataset(folder: Path, images: int, objects: int, seed: int = 0) -> tuple[Path, Path]:
    """gt.json and images/ (links to one photo) under `folder`; kept between runs."""
    gt, image_dir = folder / "gt.json", folder / "images"
    if gt.is_file() and image_dir.is_dir():
        return gt, image_dir
    rng = np.random.default_rng(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    photo = folder / "photo.jpg"
    canvas = rng.integers(60, 200, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for _ in range(12):
        centre = (int(rng.integers(40, WIDTH - 40)), int(rng.integers(40, HEIGHT - 40)))
        cv2.circle(canvas, centre, int(rng.integers(10, 80)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    cv2.imwrite(str(photo), canvas)
    names = [f"{i:012d}.jpg" for i in range(1, images + 1)]
    for name in names:
        link = image_dir / name
        if not link.exists():
            link.symlink_to(photo)
    owners = np.sort(rng.integers(1, images + 1, objects))
    tmp = gt.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write('{"categories":[{"id":1,"name":"object"}],"images":[')
        f.write(",".join(json.dumps({"id": i, "file_name": n, "width": WIDTH, "height": HEIGHT})
                         for i, n in enumerate(names, start=1)))
        f.write('],"annotations":[')
        for start in range(0, objects, 50_000):
            count = min(50_000, objects - start)
            centre = rng.uniform([60, 60], [WIDTH - 60, HEIGHT - 60], (count, 1, 2))
            radius = rng.uniform(8, 55, (count, 1, 1))
            angle = np.sort(rng.uniform(0, 2 * np.pi, (count, POINTS)), axis=1)[..., None]
            points = np.round(centre + radius * np.concatenate([np.cos(angle), np.sin(angle)], axis=2), 2)
            parts = []
            for k in range(count):
                ring = points[k].ravel().tolist()
                xs, ys = ring[0::2], ring[1::2]
                box = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
                parts.append(json.dumps({"id": start + k + 1, "image_id": int(owners[start + k]), "category_id": 1,
                                         "iscrowd": 0, "area": round(box[2] * box[3] * 0.7, 2), "bbox": box,
                                         "segmentation": [ring]}, separators=(",", ":")))
            f.write(("," if start else "") + ",".join(parts))
        f.write("]}")
    os.replace(tmp, gt)
    return gt, image_dir


def memory(pid: int) -> dict[str, float]:
    """MB: rss from /proc/PID/status; pss and private (clean + dirty) from /proc/PID/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1]) / 1024
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        rollup[key] = int(value.split()[0]) / 1024
    out["pss"] = rollup.get("Pss", 0.0)
    out["private"] = rollup.get("Private_Clean", 0.0) + rollup.get("Private_Dirty", 0.0)
    return out


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


class Probe(TrainEvents):
    """Records memory at the chosen iterations, then sends this process SIGTERM after the last one."""

    def __init__(self, at: list[int]) -> None:
        self.at, self.rows, self.started = at, [], None
        self.signalled = None

    def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None:
        self.started = time.perf_counter()

    def step(self, metrics: dict[str, float]) -> None:
        iteration = int(metrics["iteration"])
        if iteration in self.at:
            workers = [memory(pid) for pid in children(os.getpid())]
            row = {"iteration": iteration, "main": memory(os.getpid()), "workers": workers,
                   "seconds": time.perf_counter() - self.started}
            self.rows.append(row)
            print(json.dumps(row), flush=True)
        if iteration == self.at[-1]:
            self.signalled = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fastmask-coco-scale"))
    parser.add_argument("--images", type=int, default=COCO_IMAGES)
    parser.add_argument("--objects", type=int, default=COCO_OBJECTS)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args()

    started = time.perf_counter()
    gt, images = write_dataset(args.folder, args.images, args.objects)
    print(f"ground truth: {gt} ({gt.stat().st_size / 1e6:.0f} MB), written or found in {time.perf_counter() - started:.0f} s",
          flush=True)

    started = time.perf_counter()
    dataset = CocoInstances(gt, images)
    indexing = time.perf_counter() - started
    after_index = memory(os.getpid())
    print(f"indexing: {indexing:.1f} s, {dataset.report.images} images, {dataset.report.objects} objects; "
          f"main RSS {after_index['rss']:.0f} MB", flush=True)
    del dataset

    at = sorted({min(args.iterations, n) for n in (10, 100, 250, args.iterations)})
    probe = Probe(at)
    run = args.folder / "run"
    settings = TrainSettings(epochs=1, batch_size=2, size=args.size, workers=args.workers, checkpoint_every=0,
                             bn_images=0, train_sample=0, copy_paste=0.5)
    started = time.perf_counter()
    summary = train(gt, images, run, config=preset("fast"), settings=settings, init="none", device="cpu",
                    events=probe, resume=False) if not (run / "checkpoint.pt").exists() else None
    if summary is None:
        sys.exit(f"{run} holds a run already: remove it to measure again")
    stopped = time.perf_counter() - probe.signalled if probe.signalled else None
    figures = {"images": args.images, "objects": args.objects, "json_mb": gt.stat().st_size / 1e6,
               "indexing_seconds": indexing, "main_rss_after_indexing_mb": after_index["rss"],
               "probes": probe.rows, "sigterm_to_exit_seconds": stopped, "stopped_by": summary.stopped_by,
               "iterations": summary.iterations, "seconds_per_iteration": summary.seconds_per_iteration}
    print(json.dumps({k: v for k, v in figures.items() if k != "probes"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

"""CUDA proposals against the CPU path's on real photos, for the shipped default (run by gpu.sh on a GPU).

    python benchmarks/gpu_check.py FOLDER [--json OUT.json]

For each image and top-k (100, 1000): PyTorch fp32 on the CPU is the reference; CUDA fp32 with TF32 off must
give the same proposals in the same order (swaps only among scores tied within 1e-5, masks IoU >= 0.99,
tests/support.assert_same_proposals); CUDA with PyTorch's default TF32 convolutions and bf16 are reported as
the fraction of the reference's top-10 / top-100 masks they find at IoU >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fastmask_cli import Proposer, load_model, read_image  # noqa: E402
from fastmask_cli.io.images import list_images  # noqa: E402
from support import assert_same_proposals  # noqa: E402


def found(reference, other, k: int) -> float:
    """Fraction of the reference's best k masks that `other` holds at IoU >= 0.9."""
    ref = reference.first(k)
    iou = np.asarray(mask_utils.iou(ref.rles, other.rles, [0] * len(other)))
    return float((iou.max(axis=1) >= 0.9).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="the first N images only (0: all)")
    args = parser.parse_args()
    files = list_images(args.folder)[0][: args.limit or None]
    model, info = load_model()
    report = {"weights": info.name, "images": len(files), "top_k": {}}
    for top_k in (100, 1000):
        rows = {"exact": 0, "failures": [], "tf32_top10": [], "tf32_top100": [], "bf16_top10": [], "bf16_top100": []}
        for name in files:
            image = read_image(args.folder / name)
            torch.backends.cudnn.allow_tf32 = False
            cpu = Proposer(model, device="cpu", top_k=top_k, backend="torch").propose(image)
            exact = Proposer(model, device="cuda", top_k=top_k).propose(image)
            try:
                assert_same_proposals(exact, cpu, tie=1e-5)
                rows["exact"] += 1
            except AssertionError as e:
                rows["failures"].append(f"{name}: {e}")
            torch.backends.cudnn.allow_tf32 = True  # PyTorch's default
            tf32 = Proposer(model, device="cuda", top_k=top_k).propose(image)
            bf16 = Proposer(model, device="cuda", top_k=top_k, precision="bf16").propose(image)
            for label, other in (("tf32", tf32), ("bf16", bf16)):
                for k in (10, 100):
                    rows[f"{label}_top{k}"].append(found(cpu, other, k))
        summary = {k: (round(float(np.mean(v)), 4) if isinstance(v, list) and k != "failures" else v) for k, v in rows.items()}
        report["top_k"][top_k] = summary
        print(f"top-{top_k}: {rows['exact']}/{len(files)} images exact (fp32, TF32 off); found at IoU 0.9 of the CPU's "
              f"top-10/100: TF32 {summary['tf32_top10']:.3f}/{summary['tf32_top100']:.3f}, "
              f"bf16 {summary['bf16_top10']:.3f}/{summary['bf16_top100']:.3f}")
        for failure in rows["failures"][:5]:
            print("  not exact:", failure)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

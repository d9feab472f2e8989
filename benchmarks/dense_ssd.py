"""Dense SSD-MobileNetV2-COCO as a class-agnostic box proposer, from fastmask's own port (no TensorFlow):
the figures `../shared/peers/ssd_dense.py` gives with TensorFlow, reproduced.

    python benchmarks/dense_ssd.py GT.json IMAGES_DIR --out ssd.json [--objectness max] [--nms 0.7]
    fastmask eval GT.json ssd.json --iou-type bbox

Every one of the 1,917 anchors' decoded boxes (`modeling/ssd.py`, the shipped detector), scored by a
class-agnostic objectness (max: the largest of the 90 class sigmoids; foreground: 1 - background;
noisy-or), boxes under a pixel dropped, one class-agnostic greedy suppression at --nms, up to 1000 kept.
Writes COCO box results; prints seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fastmask_cli.inference.detector import Detector, load_detector
from fastmask_cli.inference.postprocess import box_iou, greedy_nms
from fastmask_cli.io.images import read_image
from fastmask_cli.modeling.ssd import OBJECTNESS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gt", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--objectness", choices=OBJECTNESS, default="max")
    parser.add_argument("--nms", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=1000)
    args = parser.parse_args()
    detector = Detector(load_detector()[0], torch.device("cpu"), kind=args.objectness, backend="onnx")
    results, seconds = [], []
    for image in json.loads(args.gt.read_text())["images"]:
        rgb = read_image(args.images / image["file_name"])
        start = time.perf_counter()
        boxes, scores = (t.numpy().astype(np.float64) for t in detector([rgb])[0])
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        ok = np.flatnonzero((xywh[:, 2] > 1) & (xywh[:, 3] > 1))
        ok = ok[np.argsort(-scores[ok], kind="stable")]
        keep = ok[greedy_nms(box_iou(xywh[ok], xywh[ok]), args.nms)][: args.top_k]
        seconds.append(time.perf_counter() - start)
        results += [{"image_id": image["id"], "category_id": 1, "bbox": [round(float(v), 2) for v in xywh[i]],
                     "score": float(scores[i])} for i in keep]
    args.out.write_text(json.dumps(results))
    print(f"{len(seconds)} images, {len(results) / max(1, len(seconds)):.0f} boxes an image, "
          f"{np.median(seconds):.3f} s/img median (ONNX Runtime, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

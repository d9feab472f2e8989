"""A peer side by side: YOLOv8n-seg (int8 TFLite, LiteRT) as a class-agnostic proposer, over a COCO folder.

Not part of fastmask and never a dependency: run it in a scratch environment.

    python -m venv /tmp/peer && /tmp/peer/bin/pip install ai-edge-litert opencv-python-headless pycocotools numpy
    /tmp/peer/bin/python benchmarks/peer_yolo.py MODEL.tflite GT.json IMAGES_DIR --out peer.json --threads 2
    fastmask eval GT.json peer.json --top-k 1000        # its AR, as ours is measured

MODEL: Ultralytics' YOLOv8n-seg converted to TFLite with int8 weights (640x640 input; the weights are
AGPL-3.0: measure against them, never ship or train on their outputs). Each image: letterboxed to 640
(longer side 640, centred, padded with 114), inference, score = the highest class score, scores above
0.001 kept, boxes suppressed by IoU > 0.7, up to 1000 kept; each mask sigmoid(prototypes . coefficients)
over the 160x160 grid, cropped to its box on that grid (as Ultralytics' `process_mask` crops before
upsampling), resized to the image and thresholded at 0.5, as COCO RLE; empty masks are dropped (a result
that covers nothing only takes a place in the top 10).
Prints seconds per image (the loop of letterbox, inference, suppression, masks and RLE; reading the file
not counted) and writes COCO results.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from pycocotools import mask as mask_utils

SIZE = 640


def letterbox(rgb: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    h, w = rgb.shape[:2]
    scale = SIZE / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    canvas[top : top + nh, left : left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, top, left


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, keep_at_most: int) -> np.ndarray:
    """Greedy suppression of (x0, y0, x1, y1) boxes sorted by `scores`."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size and len(keep) < keep_at_most:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) <= iou]
    return np.asarray(keep, dtype=np.int64)


def propose(interpreter: Interpreter, rgb: np.ndarray, image_id: int) -> list[dict]:
    h, w = rgb.shape[:2]
    canvas, scale, top, left = letterbox(rgb)
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()
    interpreter.set_tensor(inputs["index"], (canvas[None].astype(np.float32) / 255.0))
    interpreter.invoke()
    found = {tuple(o["shape"]): interpreter.get_tensor(o["index"]) for o in outputs}
    pred = next(v for s, v in found.items() if len(s) == 3)[0]  # (116, 8400)
    protos = next(v for s, v in found.items() if len(s) == 4)[0]  # (160, 160, 32)
    scores = pred[4:84].max(axis=0)
    cand = np.flatnonzero(scores > 0.001)
    cx, cy, bw, bh = (pred[:4, cand] * SIZE)
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    keep = cand[nms(boxes, scores[cand], 0.7, 1000)]
    boxes = boxes[np.searchsorted(cand, keep)]
    coeffs = pred[84:, keep].T  # (K, 32)
    maps = 1 / (1 + np.exp(-(protos.reshape(-1, 32) @ coeffs.T)))  # (160*160, K)
    maps = maps.T.reshape(-1, 160, 160)
    results = []
    cells = np.arange(160, dtype=np.float32)
    for box, grid, score in zip(boxes, maps, scores[keep]):
        x0, y0, x1, y1 = box * (160 / SIZE)  # Ultralytics' crop_mask: cell index c kept where x0 <= c < x1
        inside = ((cells >= y0) & (cells < y1))[:, None] & ((cells >= x0) & (cells < x1))[None, :]
        full = cv2.resize(grid * inside, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        nh, nw = round(h * scale), round(w * scale)
        mask = cv2.resize(full[top : top + nh, left : left + nw], (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        if not mask.any():
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        results.append({"image_id": image_id, "category_id": 1, "score": float(score),
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("gt", type=Path, help="COCO ground truth: the images it lists, with their ids")
    parser.add_argument("images", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    interpreter = Interpreter(model_path=str(args.model), num_threads=args.threads)
    interpreter.allocate_tensors()
    images = json.loads(args.gt.read_text())["images"]
    results, seconds = [], []
    for image in images:
        bgr = cv2.imread(str(args.images / image["file_name"]), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        start = time.perf_counter()
        results += propose(interpreter, rgb, image["id"])
        seconds.append(time.perf_counter() - start)
    args.out.write_text(json.dumps(results))
    print(f"{len(seconds)} images, {len(results) / max(len(seconds), 1):.1f} masks an image, "
          f"{np.median(seconds):.3f} s/img median, {np.mean(seconds):.3f} mean ({args.threads} threads)")


if __name__ == "__main__":
    main()

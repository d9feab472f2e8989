"""The COCO detector as a ranker: dense class-agnostic SSD boxes, the windows that match them, and the
score that fuses the detector's objectness with our own (issue: detector ranking).

    detector = Detector(load_detector(), device)          # the shipped SSD-MobileNetV2-COCO
    boxes, objectness = detector([image])[0]               # (1917, 4) x0, y0, x1, y1 pixels; (1917,)

SSD was trained on 118k COCO images and knows what a COCO object is; FastMask's windows find objects
outside COCO's classes. Each keeps its part: the detector's best boxes become windows of our pyramid
(`match_windows`), decoded by our head like any other window, and every candidate is ranked by `fuse`
(our window's score and the detector's prior for its box, `detector_prior`) with weights fitted on the
training images (`export.fit_fusion`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import FastMaskError
from ..modeling.checkpoint import load_payload, save_payload
from ..modeling.ssd import INPUT_SIZE, SSD, decode_boxes, objectness, resize_legacy
from ..modeling.windows import WindowGrid
from .backend import ProcessSession, cached_onnx, trace_onnx, weights_digest
from .postprocess import box_iou, greedy_nms

DETECTOR_FORMAT = "fastmask-ssd"
DETECTOR_FILE = "ssd-mobilenet-v2-coco.pt"
# the detector boxes given windows: its best, after class-agnostic suppression at DETECTOR_NMS
DETECTOR_BOXES, DETECTOR_NMS = 100, 0.7
PRIOR_IOU = 0.5  # a candidate's prior: the best objectness among detector boxes overlapping its box this much
PRIOR_FLOOR = 1e-3  # a candidate no detector box overlaps: its prior, so that its logit is finite
OBJECT_FILL = 0.6  # an object fills this much of the window assigned to it (the middle of training's 0.4-0.8)


def write_detector(graph: str | Path, out: str | Path, source: dict) -> None:
    """Convert the SSD graph (`bodies/coco_ssd.load_ssd`) and save it at `out`, its tensors in fp16
    (half the size; val boxes AR equal to the fp32 port's), with `source` (package, version, file, sha256,
    licence)."""
    from ..modeling.bodies.coco_ssd import load_ssd

    ssd = SSD()
    load_ssd(ssd, graph)
    state = {name: tensor.half() for name, tensor in ssd.state_dict().items() if tensor.is_floating_point()}
    save_payload(Path(out), {"format": DETECTOR_FORMAT, "state_dict": state, "source": source})


def detector_path() -> Path:
    """Where the detector's weights are: the weights folder's, else the ones shipped with fastmask."""
    from ..modeling.weights import shipped_dir, weights_dir

    return next((d / DETECTOR_FILE for d in (weights_dir(), shipped_dir()) if (d / DETECTOR_FILE).is_file()),
                shipped_dir() / DETECTOR_FILE)


def load_detector(path: str | Path | None = None) -> tuple[SSD, dict]:
    """The SSD written by `write_detector` (default: the weights folder's, else the one shipped with
    fastmask), in fp32, and its source. FastMaskError if the file is missing or not such a file."""
    path = Path(path) if path is not None else detector_path()
    if not path.is_file():
        raise FastMaskError(f"the detector's weights {path} are missing: reinstall fastmask, or use --ranker windows")
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != DETECTOR_FORMAT:
        raise FastMaskError(f"{path} is not a fastmask detector file")
    ssd = SSD()
    missing, unexpected = ssd.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()}, strict=False)
    if unexpected or [m for m in missing if not m.endswith("num_batches_tracked")]:
        raise FastMaskError(f"{path} does not hold the SSD-MobileNetV2 network")
    return ssd.eval(), payload.get("source", {})


class DetectorGraph(nn.Module):
    """What runs on the resized batch: (N, 3, 300, 300) RGB in [0, 255] -> boxes (N, 1917, 4) (ymin, xmin,
    ymax, xmax, normalised) and objectness (N, 1917); the graph exported for ONNX Runtime."""

    def __init__(self, ssd: SSD, kind: str) -> None:
        super().__init__()
        self.ssd, self.kind = ssd, kind

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        codes, logits = self.ssd.predict(images)
        return decode_boxes(codes, self.ssd.anchors), objectness(logits.float(), self.kind)


class Detector:
    """Dense class-agnostic boxes of the SSD, on `device`: each image resized to 300x300 on its own (no
    batch padding in its view), the network on the batch, in PyTorch or (`backend` "onnx", the CPU) ONNX
    Runtime, its graph cached as the FastMask network's is. `kind` is the objectness (`modeling.ssd.objectness`)."""

    def __init__(self, ssd: SSD, device: torch.device, kind: str = "max", backend: str = "torch") -> None:
        self.graph, self.device, self.backend = DetectorGraph(ssd.to(device).eval(), kind), device, backend
        if backend == "onnx":
            key = f"ssd-{weights_digest(ssd, {'kind': kind})[:24]}"
            self.session = ProcessSession(cached_onnx(key, lambda path: trace_onnx(
                copy.deepcopy(self.graph).cpu(), torch.full((1, 3, INPUT_SIZE, INPUT_SIZE), 128.0), path, ["images"],
                ["boxes", "objectness"], {"images": {0: "batch"}, "boxes": {0: "batch"}, "objectness": {0: "batch"}})))

    def _run(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        if self.backend == "torch":
            return self.graph(batch)
        boxes, scores = self.session.get().run(None, {"images": np.ascontiguousarray(batch.float().cpu().numpy())})
        return torch.from_numpy(boxes), torch.from_numpy(scores)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[tuple[Tensor, Tensor]]:
        """RGB (h, w, 3) uint8 images -> per image, boxes (1917, 4) x0, y0, x1, y1 in its pixels, clipped
        to it, and objectness (1917,) in [0, 1]."""
        batch = torch.cat([resize_legacy(torch.from_numpy(im).to(self.device).permute(2, 0, 1)[None], INPUT_SIZE)
                           for im in images])
        boxes, scores = self._run(batch)
        out = []
        for im, b, s in zip(images, boxes.float(), scores):
            height, width = im.shape[:2]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=b.device)
            out.append((b[:, [1, 0, 3, 2]].clamp(0, 1) * scale, s))
        return out


def best_boxes(boxes: Tensor, scores: Tensor, count: int = DETECTOR_BOXES, iou: float = DETECTOR_NMS) -> Tensor:
    """Indices of the `count` best detector boxes after greedy class-agnostic suppression at `iou`, best
    first; boxes narrower or shorter than a pixel are left out."""
    sizes = boxes[:, 2:] - boxes[:, :2]
    valid = ((sizes > 1).all(dim=1)).nonzero().squeeze(1)
    order = valid[torch.argsort(scores[valid], descending=True, stable=True)][: 4 * count]  # few beyond count survive
    xywh = torch.cat([boxes[order, :2], sizes[order]], dim=1).cpu().numpy().astype(np.float64)
    keep = greedy_nms(box_iou(xywh, xywh), iou)[:count]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def match_windows(grid: WindowGrid, boxes: Tensor) -> Tensor:
    """The window of `grid` whose field matches each box (K, 4) x0, y0, x1, y1 in input pixels: the level
    where the box's longer side is nearest OBJECT_FILL of the window's side (in log scale, as training
    assigns objects of 0.4-0.8 of it), the window there whose centre is nearest the box's. (K,) flat indices."""
    strides = torch.tensor([lv.stride for lv in grid.levels], dtype=torch.float32, device=boxes.device)
    window = grid.levels[0].window
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values.clamp(min=1.0)
    level = (torch.log(side[:, None] / (OBJECT_FILL * window * strides[None])).abs()).argmin(dim=1)
    stride = strides[level]
    pads = torch.tensor([lv.pad for lv in grid.levels], device=boxes.device)[level]
    rows = torch.tensor([lv.grid_h for lv in grid.levels], device=boxes.device)[level]
    cols = torch.tensor([lv.grid_w for lv in grid.levels], device=boxes.device)[level]
    # window (i, j) is centred on input pixel ((j - pad) + window / 2) * stride (windows.py)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    j = torch.round(centre[:, 0] / stride - window / 2).long() + pads
    i = torch.round(centre[:, 1] / stride - window / 2).long() + pads
    i = torch.minimum(i.clamp(min=0), rows - 1)
    j = torch.minimum(j.clamp(min=0), cols - 1)
    return grid.offsets.to(boxes.device)[level] + i * cols + j


def detector_prior(boxes: np.ndarray, detector_boxes: Tensor, detector_scores: Tensor) -> np.ndarray:
    """(K,) prior of candidates with (K, 4) x, y, w, h boxes from the detector's boxes (D, 4) (x0, y0, x1,
    y1) and objectness (D,), best first: each detector box, in turn, claims the unclaimed candidate whose box
    overlaps it most, if by IoU >= PRIOR_IOU, and gives it its objectness; the others get PRIOR_FLOOR.
    One candidate a box: its near-duplicates would otherwise share its prior and crowd the first ranks."""
    prior = np.full(len(boxes), PRIOR_FLOOR)
    if len(boxes) == 0 or detector_boxes.shape[0] == 0:
        return prior
    det = detector_boxes.cpu().numpy().astype(np.float64)
    det = np.concatenate([det[:, :2], det[:, 2:] - det[:, :2]], axis=1)
    overlap = box_iou(det, np.asarray(boxes, dtype=np.float64))  # (D, K)
    scores = detector_scores.cpu().numpy().astype(np.float64)
    for d in range(len(det)):
        best = int(overlap[d].argmax())
        if overlap[d, best] >= PRIOR_IOU:
            prior[best] = max(scores[d], PRIOR_FLOOR)
            overlap[:, best] = -1.0  # claimed
    return prior


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), finite for p in [0, 1]."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fuse(window: np.ndarray, prior: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """(K,) fused probability that a candidate is an object, a noisy-OR of two calibrated ones:
    1 - (1 - sigmoid(w0 logit(window) + w1)) (1 - sigmoid(w2 logit(prior) + w3)). Either source alone can
    rank a candidate high: an object SSD knows, or one only our windows see (what a COCO detector cannot
    give); a product or a linear blend of the two logits lets the detector's silence bury the second kind."""
    w0, w1, w2, w3 = weights
    ours = 1.0 / (1.0 + np.exp(-(w0 * logit(window) + w1)))
    theirs = 1.0 / (1.0 + np.exp(-(w2 * logit(prior) + w3)))
    return 1.0 - (1.0 - ours) * (1.0 - theirs)

"""One-shot inference (paper §5.3): score every window, keep the top-k, decode and paste their masks.

    proposer = Proposer(model, top_k=100)        # or Proposer(model, ProposerOptions(...))
    proposals = proposer.propose(rgb_image)      # numpy (H, W, 3) uint8
    proposals.masks(), proposals.boxes, proposals.scores
    proposer.variant(top_k=1000)                 # the same network, other options
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from ..device import autocast, check_precision, limit_onednn_cache, resolve_device
from ..errors import FastMaskError, ParameterError
from ..modeling.model import FastMask, Pyramid
from .backend import OnnxNetwork, not_exportable
from .detector import Detector, best_boxes, detector_prior, fuse, load_detector, match_windows
from .options import OWN_FRACTION, ProposerOptions, area_limit, check_backend, stored_settings
from .postprocess import box_iou, decode_masks, encode_crops, greedy_nms, mask_nms, paste_crops
from .preprocess import Prepared, pad_batch, prepare

# With suppression, windows decoded beyond top-k: top-k of them, but at least 100 (an object has
# several near-duplicate windows, so a short list needs room to reach the next objects) and at most 200.
NMS_EXTRA = (100, 200)


class StageTimer:
    """Wall time per stage of `Proposer.propose_batch`, synchronising the device before each reading."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def reset(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


@dataclass
class Proposals:
    """Segment proposals of one image, best first. Boxes are (x, y, w, h) tight boxes of the masks."""

    rles: list[dict]
    boxes: np.ndarray  # (K, 4) float
    scores: np.ndarray  # (K,) probabilities
    strides: np.ndarray  # (K,) stride of the pyramid level each proposal came from
    areas: np.ndarray  # (K,) mask areas, pixels
    height: int
    width: int
    # with the fused ranker, what `scores` fuses: each proposal's window score and its detector prior
    parts: np.ndarray | None = None  # (K, 2)

    def __len__(self) -> int:
        return len(self.rles)

    def masks(self) -> np.ndarray:
        """(K, H, W) bool masks."""
        if not self.rles:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return decode_masks(self.rles)

    def select(self, index: np.ndarray, scores: np.ndarray | None = None) -> "Proposals":
        """The proposals at `index`, in that order (with new `scores` if given)."""
        return Proposals([self.rles[i] for i in index], self.boxes[index], self.scores[index] if scores is None else scores,
                         self.strides[index], self.areas[index], self.height, self.width,
                         None if self.parts is None else self.parts[index])

    def first(self, k: int) -> "Proposals":
        """The best k proposals."""
        return self if len(self) <= k else self.select(np.arange(k))

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO results entries, loadable by `pycocotools.coco.COCO.loadRes`."""
        return [
            {
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle,
                "bbox": [round(float(v), 2) for v in box],
                "score": float(f"{score:.6g}"),
            }
            for rle, box, score in zip(self.rles, self.boxes, self.scores)
        ]


@dataclass
class _Network:
    """What every variant of one proposer shares: the model, its exported graphs and compiled forms."""

    model: FastMask
    onnx: dict[int, OnnxNetwork] = field(default_factory=dict)  # scales -> graph
    compiled: dict[str, Callable[..., Pyramid]] = field(default_factory=dict)  # "one-shot" / "pyramid"
    detectors: dict[str, Detector] = field(default_factory=dict)  # backend -> the detector, loaded on first use


class Proposer:
    """Turns RGB images into segment proposals with a FastMask model.

    `options` (a ProposerOptions), or its fields as keywords (`Proposer(model, top_k=1000)`), checked once;
    `variant` gives a proposer with other options on the same network (exported graphs and compiled
    forms are shared). `timer` (a StageTimer) splits the time of each call by stage (`fastmask bench`).
    Raises ParameterError / FastMaskError for options the model or the machine cannot serve.
    """

    def __init__(self, model: FastMask, options: ProposerOptions | None = None, *, timer: StageTimer | None = None,
                 _network: _Network | None = None, **overrides: Any) -> None:
        limit_onednn_cache()
        self.requested = replace(options or ProposerOptions(), **overrides)  # what `variant` changes
        self.options = options = self.requested.resolved(stored_settings(model))  # every field set
        self.device = resolve_device(options.device)
        check_precision(options.precision, self.device)
        self._network = _network or _Network(model.to(self.device).eval())
        self.model = self._network.model
        self.precision, self.top_k, self.multi_shot = options.precision, options.top_k, options.multi_shot
        self.scales, self.size, self.mask_threshold = options.scales, options.size, options.mask_threshold
        self.nms, self.nms_iou, self.nms_mode = options.nms, options.nms_iou, options.nms_mode
        self.ranker, self.fusion = options.ranker, options.fusion
        # torch.compile: ~30% off the network on the CPU, after a compilation per input size (tens of seconds)
        self.compiled = options.compile
        self.timer = timer
        self.notes: list[str] = []  # what a user should know about how it runs (the CLI prints them)
        self.backend = self.resolve_backend(options.backend)
        if self.backend == "onnx":
            try:  # export (or load the cached graph) now, not inside the first image
                self._onnx_network(self.scales)
            except FastMaskError as exc:
                if options.backend != "auto":
                    raise
                self.backend = "torch"  # auto: still works where the graph cannot be exported or cached
                self.notes.append(f"{exc}; running the network in PyTorch instead")
        if self.ranker == "fused" and self.backend not in self._network.detectors:  # where the network runs
            self._network.detectors[self.backend] = Detector(load_detector()[0], self.device, backend=self.backend)

    def variant(self, *, timer: StageTimer | None = None, **changes: Any) -> "Proposer":
        """A proposer on the same network with `changes` to its options (ProposerOptions' fields) and `timer`;
        on another device, a copy of the network (this proposer's stays where it is)."""
        options = replace(self.requested, **changes)
        if resolve_device(options.device) != self.device:
            return Proposer(copy.deepcopy(self.model), options, timer=timer)
        return Proposer(self.model, options, timer=timer, _network=self._network)

    def resolve_backend(self, backend: str) -> str:
        """`auto`: ONNX Runtime for the CPU in fp32 (the fastest measured there), else PyTorch."""
        check_backend(backend)
        onnx_ok = self.device.type == "cpu" and self.precision == "fp32" and not self.compiled
        if backend == "onnx" and not onnx_ok:
            raise ParameterError(("backend", "compile"), "{0} onnx runs the network on the CPU in fp32, without {1}; use {0} torch")
        reason = not_exportable(self.model)
        if backend == "onnx" and reason:
            raise ParameterError("backend", f"{{0}} onnx: {reason}; use {{0}} torch")
        return "onnx" if backend == "onnx" or (backend == "auto" and onnx_ok and reason is None) else "torch"

    def _onnx_network(self, scales: int) -> OnnxNetwork:
        if scales not in self._network.onnx:
            self._network.onnx[scales] = OnnxNetwork.for_model(self.model, scales)
        return self._network.onnx[scales]

    def _compiled(self, mode: str) -> Callable[..., Pyramid]:
        if mode not in self._network.compiled:
            self._network.compiled[mode] = torch.compile(self.model if mode == "one-shot" else self.model.image_pyramid)
        return self._network.compiled[mode]

    @property
    def candidates(self) -> int:
        """Windows decoded per image. With suppression, more than top-k: the windows just below the
        top-k are often the next objects, while the top-k hold several windows of the same ones."""
        low, high = NMS_EXTRA
        return self.top_k if self.nms == "none" else self.top_k + min(max(self.top_k, low), high)

    def settings(self) -> dict:
        """What determines the output, besides the weights (recorded so a resumed run can check it)."""
        keys = ("precision", "top_k", "scales", "size", "mask_threshold", "nms", "nms_iou", "nms_mode", "backend")
        settings = {k: getattr(self, k) for k in keys}
        if self.ranker != "windows":  # unchanged for the windows' ranking, so earlier runs resume
            settings |= {"ranker": self.ranker, "fusion": list(self.fusion)}
        return settings | self.options.filters()  # likewise without filters

    def _stage(self, name: str) -> contextlib.AbstractContextManager:
        return self.timer.stage(name) if self.timer is not None else contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        """This proposer's precision on its device (`device.autocast`)."""
        return autocast(self.precision, self.device)

    def prepare(self, image: np.ndarray) -> Prepared:
        """`image` resized for this proposer's network (`propose_prepared` takes the result)."""
        return prepare(image, self.size)

    def network(self, eager: bool = False) -> Callable[[Tensor, int], Pyramid]:
        """The forward pass in use: one shot (on ONNX Runtime with that backend), or the image-pyramid
        baseline (always PyTorch); compiled when asked. `eager`: the PyTorch model as it is."""
        if self.multi_shot:
            return self._compiled("pyramid") if self.compiled and not eager else self.model.image_pyramid
        if eager:
            return self.model
        if self.backend == "onnx":
            return self._onnx_network(self.scales)
        return self._compiled("one-shot") if self.compiled else self.model

    @torch.inference_mode()
    def propose(self, image: np.ndarray) -> Proposals:
        """Proposals for one RGB image, (H, W, 3) uint8."""
        return self.propose_batch([image])[0]

    @torch.inference_mode()
    def propose_batch(self, images: list[np.ndarray]) -> list[Proposals]:
        """Proposals for a list of RGB images, (H, W, 3) uint8, run through the network together."""
        return self.propose_prepared([self.prepare(im) for im in images])

    @torch.inference_mode()
    def propose_prepared(self, prepared: list[Prepared]) -> list[Proposals]:
        """Proposals for images already resized by `prepare`, run through the network together (padded
        bottom/right to a common size), in their original sizes."""
        batch = pad_batch([p.image for p in prepared], self.device)
        with self.autocast(), self._stage("network"):
            pyramid = self.network()(batch, self.scales)
        detections = [None] * len(prepared)
        if self.ranker == "fused":
            with self.autocast(), self._stage("detector"):
                detections = self._network.detectors[self.backend]([p.image for p in prepared])
        with self.autocast(), self._stage("decode"):
            flat_scores = pyramid.flat_scores().float()
            windows = pyramid.grid.boxes(torch.arange(pyramid.grid.num_windows, device=self.device))
            picks = []
            for i, p in enumerate(prepared):
                h, w = p.image.shape[:2]
                # windows lying wholly in the batch padding see no image: never propose them
                outside = (windows[:, 0] >= w) | (windows[:, 1] >= h)
                scores = flat_scores[i].masked_fill(outside, float("-inf"))
                top = torch.topk(scores, min(self.candidates, int((~outside).sum()))).indices
                if detections[i] is not None:  # and the windows of the detector's best boxes
                    boxes, objectness = detections[i]
                    best = best_boxes(boxes, objectness)
                    detections[i] = boxes[best], objectness[best]
                    top = torch.unique(torch.cat([top, match_windows(pyramid.grid, detections[i][0].to(self.device))]))
                picks.append(top)
            image_index = torch.cat([torch.full_like(p, i) for i, p in enumerate(picks)])
            flat = torch.cat(picks)
            mask_logits, _ = self.model.decode(pyramid, image_index, flat)
            probs = torch.sigmoid(mask_logits.float())
        strides = torch.tensor([lv.stride for lv in pyramid.grid.levels], device=self.device)
        level = pyramid.grid.locate(flat)[0]
        results = []
        for i, p in enumerate(prepared):
            sel = image_index == i
            results.append(
                self._finish(
                    probs[sel], windows[flat[sel]] / p.scale, torch.sigmoid(flat_scores[i, flat[sel]]),
                    strides[level[sel]], p.height, p.width,
                    None if detections[i] is None else (detections[i][0] / p.scale, detections[i][1]),
                )
            )
        return results

    def _finish(self, probs: Tensor, boxes: Tensor, scores: Tensor, strides: Tensor, height: int, width: int,
                detections: tuple[Tensor, Tensor] | None = None) -> Proposals:
        """Paste masks into the original image as crops, threshold, box, encode, rank (by the fused score,
        given the detector's boxes and objectness in the image's pixels), and optionally suppress."""
        with self._stage("paste"):
            chunks = paste_crops(probs, boxes, height, width, self.mask_threshold)
        with self._stage("rle"):
            rles, tight, areas = encode_crops(chunks, probs.shape[0], height, width)
        keep = np.array([i for i, rle in enumerate(rles) if rle is not None], dtype=np.int64)
        keep_t = torch.from_numpy(keep)
        proposals = Proposals(
            [rles[i] for i in keep],
            tight[keep_t.to(tight.device)].cpu().numpy(),
            scores[keep_t.to(scores.device)].cpu().numpy(),
            strides[keep_t.to(strides.device)].cpu().numpy(),
            areas[keep],
            height,
            width,
        )
        if detections is not None and len(proposals):
            proposals.parts = np.stack([proposals.scores, detector_prior(proposals.boxes, *detections)], axis=1)
            fused = fuse(proposals.parts[:, 0], proposals.parts[:, 1], self.fusion)
            order = np.argsort(-fused, kind="stable")
            proposals = proposals.select(order, fused[order].astype(np.float32))
        if self.nms != "none" and len(proposals) > 1:
            with self._stage("nms"):
                proposals = self._suppress(proposals)
        proposals = self._filter(proposals)
        return self._one_per_pixel(proposals) if self.options.one_per_pixel else proposals.first(self.top_k)

    def _filter(self, p: Proposals) -> Proposals:
        """The proposals that pass the options' score and area filters, in their order."""
        o = self.options
        if not o.filters() or not len(p):
            return p
        keep = (p.scores >= o.min_score) & (p.areas >= area_limit(o.min_area, p.height, p.width))
        if o.max_area is not None:
            keep &= p.areas <= area_limit(o.max_area, p.height, p.width)
        return p if keep.all() else p.select(np.flatnonzero(keep))

    def _one_per_pixel(self, p: Proposals) -> Proposals:
        """The best top-k proposals, each pixel given to the best-ranked one covering it; a proposal left with
        less than OWN_FRACTION of its mask is dropped. Masks, boxes and areas are what each keeps."""
        taken = np.zeros((p.height, p.width), dtype=bool)
        kept, rles, boxes, areas = [], [], [], []
        for i, rle in enumerate(p.rles):
            if len(kept) == self.top_k:
                break
            mask = mask_utils.decode(rle).astype(bool) & ~taken
            own = int(mask.sum())
            if own == 0 or own < OWN_FRACTION * p.areas[i]:
                continue
            taken |= mask
            kept.append(i)
            encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            encoded["counts"] = encoded["counts"].decode("ascii")
            rles.append(encoded)
            boxes.append(mask_utils.toBbox(encoded))
            areas.append(own)
        chosen = p.select(np.asarray(kept, dtype=np.int64))
        chosen.rles, chosen.areas = rles, np.asarray(areas, dtype=p.areas.dtype)
        chosen.boxes = np.asarray(boxes, dtype=p.boxes.dtype).reshape(-1, 4)
        return chosen

    def _suppress(self, p: Proposals) -> Proposals:
        """Greedy suppression of near-duplicates among the candidates. `drop` removes them; `demote`
        moves them, in their order, behind every kept proposal and scales their scores below the
        lowest kept score: the first proposals are distinct objects, and duplicates still fill the
        list where distinct candidates run out."""
        if self.nms == "box":
            keep = greedy_nms(box_iou(p.boxes, p.boxes), self.nms_iou)
        else:
            keep = mask_nms(p.rles, p.boxes, p.areas, self.nms_iou)
        scores = p.scores[keep]
        if self.nms_mode == "demote":
            demoted = np.setdiff1d(np.arange(len(p)), keep)
            scores = np.concatenate([scores, p.scores[demoted] * 0.5 * scores.min()])
            keep = np.concatenate([keep, demoted])
        return p.select(keep, scores)

"""What a `Proposer` is asked to do, besides the weights: one frozen, checked object.

    options = ProposerOptions(top_k=1000, nms="box")
    wider = dataclasses.replace(options, top_k=100)     # a variant, checked again

`None` means the model's own value (scales, size and mask threshold are stored in its config).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ParameterError

NMS_KINDS = ("none", "box", "mask")
NMS_MODES = ("demote", "drop")
BACKENDS = ("auto", "onnx", "torch")
RANKERS = ("windows", "fused")
# --one-per-pixel: a proposal keeps its place only with at least this share of its mask left to it
OWN_FRACTION = 0.5
# Inference re-ranks near-duplicates behind distinct objects (see `Proposer._suppress`); chosen on the two-image fit test.
DEFAULT_NMS, DEFAULT_NMS_IOU = "mask", 0.7


def area_limit(value: float, height: int, width: int) -> float:
    """An area filter's value in pixels for a height x width image: below 1, a fraction of the image."""
    return value * height * width if value < 1 else value


def parse_area(text: str) -> float:
    """`--min-area` / `--max-area`: pixels ("500"), a fraction ("0.01") or a percentage ("1%") of the image.
    Raises ValueError for what is not a number."""
    text = text.strip()
    if not text.endswith("%"):
        return float(text)
    percent = float(text[:-1])
    if not 0 < percent < 100:  # 100% and more would read as pixels (from 1): a percentage stays a fraction
        raise ValueError(f"a percentage must be between 0 and 100, not {text}")
    return percent / 100


def check_backend(backend: str) -> None:
    """Raises ParameterError unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise ParameterError("backend", f"unknown {{}} {backend!r}; use {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class ProposerOptions:
    """How proposals are made (paper §5.3, and the departures docs/paper.md lists).

    device: "auto", "cpu", "cuda" or "cuda:N". precision: "fp32", "fp16" (CUDA) or "bf16".
    top_k: proposals per image. scales: pyramid levels (None: the model's). size: the longer image side
    the network sees, pixels (None: the model's). mask_threshold: probability in (0, 1) (None: the
    model's). nms: near-duplicates by overlap of "mask", "box" or "none"; nms_iou: the IoU above which a
    lower-scored one is a duplicate; nms_mode: "demote" (behind every distinct one) or "drop".
    multi_shot: the image-pyramid baseline (§6.2) instead of one shot. compile: torch.compile the network.
    backend: "auto" (ONNX Runtime on the CPU in fp32, else PyTorch), "onnx" or "torch".
    min_score: drop proposals scored below it (a probability). min_area, max_area: drop proposals whose mask
    is smaller, or larger: below 1, a fraction of the image's area; from 1, pixels (`area_limit`). The filters
    apply after suppression and before top-k; AR is only comparable without them. one_per_pixel: each pixel
    goes to the best-ranked proposal covering it, and a proposal left with less than OWN_FRACTION of its
    mask is dropped (after the filters, before top-k).
    ranker: "windows" (our window scores alone, the paper's) or "fused" (the COCO detector's best boxes
    decoded as windows too, every candidate ranked by a score fusing both: inference/detector.py); None:
    the model's ("fused" where export fitted its fusion).
    Raises ParameterError for a value out of range.
    """

    device: str = "auto"
    precision: str = "fp32"
    top_k: int = 100
    scales: int | None = None
    size: int | None = None
    mask_threshold: float | None = None
    nms: str = DEFAULT_NMS
    nms_iou: float = DEFAULT_NMS_IOU
    nms_mode: str = "demote"
    multi_shot: bool = False
    compile: bool = False
    backend: str = "auto"
    ranker: str | None = None
    min_score: float = 0.0
    min_area: float = 0.0
    max_area: float | None = None
    one_per_pixel: bool = False

    def __post_init__(self) -> None:
        if self.nms not in NMS_KINDS:
            raise ParameterError("nms", f"unknown {{}} {self.nms!r}; use {', '.join(NMS_KINDS)}")
        if self.nms_mode not in NMS_MODES:
            raise ParameterError("nms_mode", f"unknown {{}} {self.nms_mode!r}; use {', '.join(NMS_MODES)}")
        for name, value, low in (("top_k", self.top_k, 1), ("scales", self.scales, 1), ("size", self.size, 32)):
            if value is not None and value < low:
                raise ParameterError(name, f"{{}} must be at least {low}, not {value}")
        if not 0 <= self.nms_iou <= 1:
            raise ParameterError("nms_iou", f"{{}} must be between 0 and 1 (an IoU), not {self.nms_iou}")
        if self.mask_threshold is not None and not 0 < self.mask_threshold < 1:
            raise ParameterError("mask_threshold", f"{{}} must be between 0 and 1 (a probability), not {self.mask_threshold}")
        check_backend(self.backend)
        if not 0 <= self.min_score <= 1:  # NaN fails too
            raise ParameterError("min_score", f"{{}} must be between 0 and 1 (a probability), not {self.min_score}")
        if not (math.isfinite(self.min_area) and self.min_area >= 0):
            raise ParameterError("min_area", f"{{}} must be at least 0 (pixels, or below 1 a fraction of the image), not {self.min_area}")
        if self.max_area is not None and not (math.isfinite(self.max_area) and self.max_area > 0):
            raise ParameterError("max_area", f"{{}} must be above 0 (pixels, or below 1 a fraction of the image), not {self.max_area}")
        if self.ranker is not None and self.ranker not in RANKERS:
            raise ParameterError("ranker", f"unknown {{}} {self.ranker!r}; use {', '.join(RANKERS)}")

    def filters(self) -> dict[str, float]:
        """The filters set (min_score, min_area, max_area), for the results' metadata; empty when none is."""
        chosen = (("min_score", self.min_score), ("min_area", self.min_area), ("max_area", self.max_area),
                  ("one_per_pixel", self.one_per_pixel))
        return {k: v for k, v in chosen if v is not None and v is not False and (k == "max_area" or v != 0.0)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

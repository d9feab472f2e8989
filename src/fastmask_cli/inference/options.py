"""How proposals are made, besides the weights: one frozen, checked object, the one home of every
inference setting's default and range.

    options = ProposerOptions(top_k=1000, nms="box")
    wider = dataclasses.replace(options, top_k=100)     # a variant, checked again
    options.resolved(stored_settings(model))            # None fields: what the model carries, else DEFAULTS

`None` means the model's own value: its config's scales and size, and the settings export chose and stored
with the weights (`STORED`: mask threshold, suppression, ranker and fusion). A field given overrides them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import FastMaskError, ParameterError

if TYPE_CHECKING:
    from ..modeling.model import FastMask

NMS_KINDS = ("none", "box", "mask")
NMS_MODES = ("demote", "drop")
BACKENDS = ("auto", "onnx", "torch")
RANKERS = ("windows", "fused")
# Proposals per image: a user's list (propose), and what AR@1000 needs (eval --images, export's measurement)
TOP_K, MEASURE_TOP_K = 100, 1000
# --one-per-pixel: a proposal keeps its place only with at least this share of its mask left to it
OWN_FRACTION = 0.5
# Mask thresholds export measures before weights ship: the best depends on the body and the training
# (0.35 gained the MobileNetV2 default 1.2 points of mask AR@100 over the 0.5 it trained with).
MASK_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5)
FUSION_WEIGHTS = 4  # inference/detector.fuse: a scale and a shift for each of the two scores
# What a model may carry from export (`stored_settings`): a user's value overrides it.
STORED = ("mask_threshold", "nms", "nms_iou", "nms_mode", "ranker", "fusion")


def stored_settings(model: "FastMask") -> dict[str, Any]:
    """What `model` carries for `ProposerOptions.resolved`: its config's scales and size, and the settings
    export chose for its weights (`FastMask.proposer_options`)."""
    return {"scales": model.config.scales, "size": model.config.size, **model.proposer_options}


def carried_options(stored: Mapping[str, Any]) -> "ProposerOptions":
    """What a model carries (`stored_settings`, or `FastMask.proposer_options`) as ProposerOptions, checked as a
    user's would be. Raises FastMaskError, not naming a flag the user did not give, for settings that are
    unknown or out of range (weights written by another version, or altered)."""
    unknown = sorted(set(stored) - {f.name for f in fields(ProposerOptions)})
    detail = f"unknown: {', '.join(unknown)}" if unknown else None
    try:
        carried = ProposerOptions(**{k: v for k, v in stored.items() if v is not None and k not in unknown})
    except ParameterError as exc:
        detail = exc.named(str)
    except (TypeError, ValueError):
        detail = "a value of the wrong type"
    if detail:
        raise FastMaskError(f"the weights carry inference settings this version cannot use ({detail}): "
                            "export them again with this version, or use other weights")
    return carried


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
    top_k: proposals per image. scales: pyramid levels. size: the longer image side the network sees,
    pixels. mask_threshold: probability in (0, 1). nms: near-duplicates by overlap of "mask", "box" or
    "none"; nms_iou: the IoU above which a lower-scored one is a duplicate; nms_mode: "demote" (behind
    every distinct one) or "drop".
    multi_shot: the image-pyramid baseline (§6.2) instead of one shot. compile: torch.compile the network.
    backend: "auto" (ONNX Runtime on the CPU in fp32, else PyTorch), "onnx" or "torch".
    min_score: drop proposals scored below it (a probability). min_area, max_area: drop proposals whose mask
    is smaller, or larger: below 1, a fraction of the image's area; from 1, pixels (`area_limit`). The filters
    apply after suppression and before top-k; AR is only comparable without them. one_per_pixel: each pixel
    goes to the best-ranked proposal covering it, and a proposal left with less than OWN_FRACTION of its
    mask is dropped (after the filters, before top-k).
    ranker: "windows" (our window scores alone, the paper's) or "fused" (the COCO detector's best boxes
    decoded as windows too, every candidate ranked by a score fusing both: inference/detector.py).
    fusion: the fused score's FUSION_WEIGHTS weights, fitted by export (training/fusion.py).
    None, for scales to fusion: the model's (`resolved`).
    Raises ParameterError for a value out of range.
    """

    device: str = "auto"
    precision: str = "fp32"
    top_k: int = TOP_K
    scales: int | None = None
    size: int | None = None
    mask_threshold: float | None = None
    nms: str | None = None
    nms_iou: float | None = None
    nms_mode: str | None = None
    multi_shot: bool = False
    compile: bool = False
    backend: str = "auto"
    ranker: str | None = None
    fusion: tuple[float, ...] | None = None
    min_score: float = 0.0
    min_area: float = 0.0
    max_area: float | None = None
    one_per_pixel: bool = False

    def __post_init__(self) -> None:
        if self.fusion is not None:  # from JSON or a checkpoint: a list
            object.__setattr__(self, "fusion", tuple(float(w) for w in self.fusion))
        for name, allowed in (("nms", NMS_KINDS), ("nms_mode", NMS_MODES), ("ranker", RANKERS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ParameterError(name, f"unknown {{}} {value!r}; use {', '.join(allowed)}")
        for name, value, low in (("top_k", self.top_k, 1), ("scales", self.scales, 1), ("size", self.size, 32)):
            if value is not None and value < low:
                raise ParameterError(name, f"{{}} must be at least {low}, not {value}")
        if self.nms_iou is not None and not 0 <= self.nms_iou <= 1:
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
        if self.max_area is not None and (self.min_area < 1) == (self.max_area < 1) and self.min_area > self.max_area:
            raise ParameterError(("min_area", "max_area"), f"{{0}} {self.min_area:g} is above {{1}} {self.max_area:g}: "
                                 "no proposal could pass")
        if self.fusion is not None and len(self.fusion) not in (0, FUSION_WEIGHTS):
            raise ParameterError("fusion", f"{{}} must hold {FUSION_WEIGHTS} weights, not {len(self.fusion)}")

    def resolved(self, stored: Mapping[str, Any]) -> "ProposerOptions":
        """Every None field filled: from `stored` (what the model carries: `stored_settings`), else from
        DEFAULTS. The ranker: the one given; else "fused" where a fusion is given; else the model's; else
        "fused" where the model carries a fitted fusion, "windows" otherwise. A fused ranker without a fusion
        fuses with DEFAULT_FUSION (each score as it is). Raises FastMaskError for stored settings that are
        unknown or out of range (weights written by another version, or altered)."""
        carried = carried_options(stored)
        chosen = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in chosen.items():
            # a fusion given decides the ranker (below), whatever ranker the model carries
            if value is None and not (name == "ranker" and self.fusion is not None):
                chosen[name] = getattr(carried, name)
        if chosen["ranker"] is None:
            chosen["ranker"] = "fused" if chosen["fusion"] else "windows"
        fitted = chosen["fusion"] or ()
        chosen["fusion"] = (fitted or DEFAULT_FUSION) if chosen["ranker"] == "fused" else ()
        defaults = {k: getattr(DEFAULTS, k) for k in chosen if chosen[k] is None and k != "max_area"}
        return replace(self, **(chosen | defaults))

    def filters(self) -> dict[str, float]:
        """The filters set (min_score, min_area, max_area), for the results' metadata; empty when none is."""
        chosen = (("min_score", self.min_score), ("min_area", self.min_area), ("max_area", self.max_area),
                  ("one_per_pixel", self.one_per_pixel))
        return {k: v for k, v in chosen if v is not None and v is not False and (k == "max_area" or v != 0.0)}

    def stored(self) -> dict[str, Any]:
        """The STORED fields set, as plain values: what export ships with the weights and the manifest shows."""
        return {k: list(v) if isinstance(v, tuple) else v for k in STORED if (v := getattr(self, k)) is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Where neither the user nor the model says: a model trained with `fastmask train` and not yet shipped.
# Suppression re-ranks near-duplicates behind distinct objects (`Proposer._suppress`; chosen on the
# two-image fit test); 0.5 is the threshold training's loss is taken at.
DEFAULTS = ProposerOptions(scales=None, size=None, mask_threshold=0.5, nms="mask", nms_iou=0.7, nms_mode="demote",
                           fusion=())
# `--ranker fused` for a model export fitted no fusion for: the plain noisy-OR of the two scores (detector.fuse)
DEFAULT_FUSION = (1.0, 0.0, 1.0, 0.0)

"""Model configuration: everything needed to rebuild a FastMask network.

A config is stored inside every checkpoint, so `fastmask propose --weights FILE` can rebuild
the exact network that was trained. Presets name the two configurations of the paper (§6.2):
an accurate two-stream body and a fast one-stream light body.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import FastMaskError
from .registry import BODIES, HEADS, NECKS

# Settings older checkpoints kept in their config; now stored beside it (modeling/checkpoint.py).
INFERENCE_KEYS = ("mask_threshold", "fusion")


@dataclass(frozen=True)
class FastMaskConfig:
    """Architecture and input geometry of a FastMask network."""

    body: str = "efficientnet_lite2"
    body_width: int = 64  # 64: the standard body; less scales its channels by body_width / 64 (tests)
    streams: int = 2  # 1: stride 16 only; 2: strides 16 and 24 through the shared top stage (§5.1)
    stride8: bool = False  # a finest level from the body's stride-8 map: 80-px windows at size 800 (small objects)
    neck: str = "residual"
    neck_width: int = 256  # hidden channels of the residual / feed-forward neck branch
    reduce_channels: int = 128  # 1x1 reduction applied to every pyramid level (§4.1)
    head: str = "attentional"
    window: int = 10  # sliding window side, in feature cells (§4.1)
    window_pad: int = 5  # cells of padding around each level, so windows can centre on border objects
    score_hidden: int = 256  # hidden units of the confidence branch
    mask_hidden: int = 512  # hidden units of the mask decoder
    mask_size: int = 40  # side of the decoded mask, in mask pixels per window
    scales: int = 8  # default number of pyramid levels at inference (a run-time knob, §5.3)
    train_scales: int = 7  # levels used in training (4 on the stride-2 stream, 3 on the stride-3 one)
    size: int = 800  # default input size: the image's longer side, in pixels

    def __post_init__(self) -> None:
        checks = [
            (self.body in BODIES, f"body must be one of {', '.join(BODIES)}, not {self.body!r}"),
            (self.neck in NECKS, f"neck must be one of {', '.join(NECKS)}, not {self.neck!r}"),
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}, not {self.head!r}"),
            (self.streams in (1, 2), f"streams must be 1 or 2, not {self.streams}"),
            (self.body not in BODIES or self.streams in BODIES.spec(self.body).streams,
             f"the {self.body} body has one stream (streams 1)"),
            (isinstance(self.stride8, bool), f"stride8 must be true or false, not {self.stride8!r}"),
            (self.window >= 2 and self.window % 2 == 0, "window must be an even number of cells"),
            (0 <= self.window_pad < self.window, "window_pad must be in [0, window)"),
            (self.scales >= 1 and self.train_scales >= 1, "scales must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastMaskError(f"invalid model config: {message}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.stride8:  # unchanged for models without the level: older versions read them, caches stay valid
            del data["stride8"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FastMaskConfig":
        data = {k: v for k, v in data.items() if k not in INFERENCE_KEYS}  # read from the checkpoint beside it
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FastMaskError(f"invalid model config: unknown keys {', '.join(unknown)}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> "FastMaskConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def with_stride8(self) -> "FastMaskConfig":
        """The same pyramid with the stride-8 level added: one level more, in training and at inference,
        so that every coarser level is kept."""
        if self.stride8:
            return self
        return replace(self, stride8=True, scales=self.scales + 1, train_scales=self.train_scales + 1)


PRESETS: dict[str, FastMaskConfig] = {
    # The paper's FastMask-acc is a two-stream ResNet-50 cut after its fourth stage ("ResNet-39", still
    # `--body resnet50`); here the body is EfficientNet-Lite2, whose ImageNet weights install with pip:
    # at 800x600 its network runs in half the time at a fifth of the FLOPs (docs/speed.md).
    "accurate": FastMaskConfig(body="efficientnet_lite2"),
    # The fast configuration (the paper used PVANet): one-stream EfficientNet-Lite0, fewer channels.
    "fast": FastMaskConfig(
        body="efficientnet_lite0",
        streams=1,
        neck_width=128,
        reduce_channels=64,
        score_hidden=128,
        mask_hidden=256,
        scales=5,
        train_scales=4,
    ),
}


def preset(name: str) -> FastMaskConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise FastMaskError(f"unknown configuration {name!r}; choose one of {', '.join(PRESETS)}") from None

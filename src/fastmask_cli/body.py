"""Body (paper §4.1, §5.1): a ResNet cut after its fourth stage, one or two streams.

Parameter names follow torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`, ...), so a torchvision
ImageNet checkpoint loads into the body as is. The stride of the top stage (`layer3`) is removed and
replaced by pooling of the stride-8 feature: stride 2 gives the stride-16 stream, and in the
two-stream body (Fig. 7) stride 3 gives a stride-24 stream through the *same* `layer3` weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import FastMaskError


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)  # stride on the 3x3, as torchvision (v1.5)
        self.conv3, self.bn3 = _conv_bn(width, width * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6)),
    "resnet50": (Bottleneck, (3, 4, 6)),
}


class Body(nn.Module):
    """ResNet stem + layer1..layer3; returns one feature map per stream (strides 16 and 24)."""

    def __init__(self, arch: str = "resnet50", width: int = 64, streams: int = 2) -> None:
        super().__init__()
        block, depths = _ARCHS[arch]
        self.streams = streams
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin = width
        self.layer1 = self._make_layer(block, width, depths[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, depths[1], stride=2)
        # torchvision strides layer3 by 2; here the stream pooling does it, so the top stride is removed.
        self.layer3 = self._make_layer(block, width * 4, depths[2], stride=1, downsample_always=True)
        self.out_channels = width * 4 * block.expansion

    def _make_layer(
        self, block: type[nn.Module], width: int, depth: int, stride: int, downsample_always: bool = False
    ) -> nn.Sequential:
        cout = width * block.expansion
        downsample = None
        if stride != 1 or self._cin != cout or downsample_always:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        layers = [block(self._cin, width, stride, downsample)]
        self._cin = cout
        layers += [block(cout, width) for _ in range(depth - 1)]
        return nn.Sequential(*layers)

    def forward(self, images: Tensor, streams: int | None = None) -> list[Tensor]:
        """Normalised images -> [stride-16 feature, stride-24 feature (two streams only)].
        `streams` may ask for fewer streams than built, when no stride-24 level is needed."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        stride8 = self.layer2(self.layer1(x))
        pooled = [F.avg_pool2d(stride8, 2, 2, ceil_mode=True, count_include_pad=False)]
        if min(streams or self.streams, self.streams) == 2:
            pooled.append(F.avg_pool2d(stride8, 3, 3, ceil_mode=True, count_include_pad=False))
        return [self.layer3(p) for p in pooled]


@dataclass
class LoadReport:
    """What happened when an ImageNet checkpoint was loaded into the body."""

    path: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # body parameters the checkpoint lacks
    unused: list[str] = field(default_factory=list)  # checkpoint entries the body has no use for (layer4, fc)
    mismatched: list[str] = field(default_factory=list)  # same name, different shape

    def summary(self) -> str:
        return (
            f"{self.path}: {len(self.matched)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.mismatched)} of different shape, {len(self.unused)} unused (layer4/fc and the like)"
        )


def load_imagenet(body: Body, path: str | Path) -> LoadReport:
    """Load a torchvision-format ImageNet ResNet checkpoint into `body`, reporting what matched."""
    path = Path(path)
    if not path.is_file():
        raise FastMaskError(f"backbone checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise FastMaskError(f"cannot read backbone checkpoint {path}: {str(exc).splitlines()[0]}") from None
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

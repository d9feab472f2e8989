"""ResNet bodies (paper §4.1): torchvision's ResNet cut after its third stage (`layer3`).

Parameter names follow torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`, ...), so a torchvision
ImageNet checkpoint loads into the body as is. The stride of `layer3` is removed: the stream pooling
of `Body` does it. ResNet-50 cut this way is the paper's "ResNet-39".
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Body


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


class ResNetBody(Body):
    """ResNet stem + layer1..layer3; one feature map per stream (strides 16 and 24).
    `width` is the channels of the first stage (64 in torchvision; tests use less)."""

    def __init__(self, arch: str = "resnet50", width: int = 64, streams: int = 2) -> None:
        super().__init__(streams)
        block, depths = _ARCHS[arch]
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin = width
        self.layer1 = self._make_layer(block, width, depths[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, depths[1], stride=2)
        self.stride8_channels = width * 2 * block.expansion
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

    def bottom(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer2(self.layer1(x))

    def top(self, stride8: Tensor) -> Tensor:
        return self.layer3(stride8)

    def stages(self) -> list[nn.Module]:
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3]

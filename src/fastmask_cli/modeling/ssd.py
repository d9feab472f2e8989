"""SSD-MobileNetV2-COCO, whole: the detector our body comes from, as a dense class-agnostic box ranker.

The TF model zoo's `ssd_mobilenet_v2_coco_2018_03_29` (Liu et al. 2016, SSD; Sandler et al. 2018,
MobileNetV2; TF Object Detection API `ssd_mobilenet_v2_coco.config`), computed as its frozen graph does:
- preprocessing: the image resized to 300x300 by TensorFlow 1's bilinear resize (`align_corners=False`,
  no half-pixel centres: output pixel i samples input i * in / out), then 2/255 * x - 1;
- the feature extractor: MobileNetV2 to `Conv_1` (1280 channels, stride 32); feature maps from the
  expansion of block 13 (`layer_15/expansion_output`, 576 channels, 19x19) and from `Conv_1` (10x10), then
  four extra layers (1x1 conv to d/2, 3x3 depthwise stride 2, 1x1 conv to d; d = 512, 256, 256, 128:
  5x5, 3x3, 2x2, 1x1), each with BatchNorm and ReLU6;
- six box predictors (3x3 convolutions: 4 box codes and 91 class logits per anchor; 3 anchors on the
  lowest map, 6 on the others): 1,917 anchors in all, numbered map by map, row, column, anchor;
- anchors (`ssd_anchor_generator`): scales 0.2-0.95 over the six maps, aspect ratios 1, 2, 1/2, 3, 1/3
  plus one of scale sqrt(s_i s_i+1) at ratio 1; the lowest map only (0.1, 1), (0.2, 2), (0.2, 1/2);
- the box coder (`FasterRcnnBoxCoder`, scale factors 10, 10, 5, 5) and sigmoid class scores (column 0 is
  background).

`SSD(images)` gives, per image, the 1,917 decoded boxes (normalised ymin, xmin, ymax, xmax, as the
graph's `Postprocessor/Reshape_2`) and class logits; `objectness` turns logits into one class-agnostic
score. Weights: `bodies/coco_ssd.load_ssd` reads the graph; the network we ship carries them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bodies.mobilenet_v2 import BLOCKS, BN_EPS, conv_bn_relu6, mobilenet_v2_features

INPUT_SIZE = 300
NUM_CLASSES = 91  # background + COCO's 90 ids (10 of them unused)
EXTRA_DEPTHS = (512, 256, 256, 128)
GRID_SIZES = (19, 10, 5, 3, 2, 1)  # the six maps at 300x300
SCALES = (0.2, 0.95)
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w
EXPANSION_BLOCK = 14  # features.14 = expanded_conv_13: its expansion output is the first map
OBJECTNESS = ("max", "foreground", "noisy-or")


def anchor_specs() -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of each anchor of each map, as `ssd_anchor_generator.create_ssd_anchors`."""
    low, high = SCALES
    count = len(GRID_SIZES)
    scales = [low + (high - low) * i / (count - 1) for i in range(count)] + [1.0]
    specs = []
    for layer, (scale, following) in enumerate(zip(scales[:-1], scales[1:])):
        if layer == 0:  # reduce_boxes_in_lowest_layer
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
        else:
            specs.append([(scale, ratio) for ratio in ASPECT_RATIOS] + [(math.sqrt(scale * following), 1.0)])
    return specs


def make_anchors() -> Tensor:
    """(1917, 4) anchors as (ycenter, xcenter, height, width), normalised, in the predictors' order."""
    rows = []
    for grid, specs in zip(GRID_SIZES, anchor_specs()):
        scale = torch.tensor([s for s, _ in specs], dtype=torch.float32)
        ratio = torch.tensor([r for _, r in specs], dtype=torch.float32).sqrt()
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        count = len(specs)
        rows.append(torch.stack([y[..., None].expand(-1, -1, count), x[..., None].expand(-1, -1, count),
                                 (scale / ratio).expand(grid, grid, -1), (scale * ratio).expand(grid, grid, -1)], -1).reshape(-1, 4))
    return torch.cat(rows)


def decode_boxes(codes: Tensor, anchors: Tensor) -> Tensor:
    """Box codes (..., 4) (ty, tx, th, tw) at anchors (A, 4) -> boxes (..., 4) (ymin, xmin, ymax, xmax)."""
    fy, fx, fh, fw = SCALE_FACTORS
    yc = codes[..., 0] / fy * anchors[:, 2] + anchors[:, 0]
    xc = codes[..., 1] / fx * anchors[:, 3] + anchors[:, 1]
    h = torch.exp(codes[..., 2] / fh) * anchors[:, 2]
    w = torch.exp(codes[..., 3] / fw) * anchors[:, 3]
    return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], dim=-1)


def objectness(logits: Tensor, kind: str = "max") -> Tensor:
    """(..., 91) class logits -> (...,) class-agnostic score in [0, 1]: "max", the largest of the 90 class
    sigmoids; "foreground", 1 - the background sigmoid; "noisy-or", 1 - prod(1 - class sigmoid)."""
    if kind == "max":
        return torch.sigmoid(logits[..., 1:].max(dim=-1).values)
    if kind == "foreground":
        return torch.sigmoid(-logits[..., 0])
    if kind == "noisy-or":  # log(1 - sigmoid(z)) = -softplus(z)
        return -torch.expm1(-F.softplus(logits[..., 1:]).sum(dim=-1))
    raise ValueError(f"objectness must be one of {', '.join(OBJECTNESS)}, not {kind!r}")


def resize_legacy(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """(N, C, H, W) -> (N, C, size, size) float32 as TensorFlow 1's `ResizeBilinear` (align_corners=False,
    half_pixel_centers=False): output pixel i reads input i * H / size, interpolating its two neighbours.
    Rows are picked before anything is converted, so a large uint8 photo costs little more than the output."""

    def weights(length: int) -> tuple[Tensor, Tensor, Tensor]:
        position = torch.arange(size, dtype=torch.float32, device=images.device) * (length / size)
        low = position.floor()
        high = torch.minimum(position.ceil(), torch.tensor(length - 1.0, device=images.device))
        return low.long(), high.long(), position - low

    y0, y1, dy = weights(images.shape[-2])
    x0, x1, dx = weights(images.shape[-1])

    def across(rows: Tensor) -> Tensor:
        left, right = rows[..., x0].float(), rows[..., x1].float()
        return left + (right - left) * dx

    top, bottom = across(images[..., y0, :]), across(images[..., y1, :])
    return top + (bottom - top) * dy[:, None]


def _extra_layer(cin: int, depth: int) -> nn.Sequential:
    """1x1 to depth / 2, 3x3 depthwise at stride 2 ("SAME"), 1x1 to depth; each with BatchNorm and ReLU6."""
    half = depth // 2

    def pointwise(a: int, b: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b, eps=BN_EPS), nn.ReLU6(inplace=True))

    return nn.Sequential(pointwise(cin, half), conv_bn_relu6(half, half, 3, 2, groups=half), pointwise(half, depth))


class SSD(nn.Module):
    """SSD-MobileNetV2 at 300x300: (N, 3, H, W) RGB in [0, 255] -> boxes (N, 1917, 4), logits (N, 1917, 91).

    Parameter names: `features.*` torchvision's MobileNetV2 (features.18 is `Conv_1`), `extras.{0-3}`,
    `box_predictors.{0-5}`, `class_predictors.{0-5}`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = mobilenet_v2_features(BLOCKS)
        self.features.append(nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=BN_EPS),
                                           nn.ReLU6(inplace=True)))
        channels = [self.features[EXPANSION_BLOCK].conv[0][0].out_channels, 1280]
        self.extras = nn.ModuleList()
        for depth in EXTRA_DEPTHS:
            self.extras.append(_extra_layer(channels[-1], depth))
            channels.append(depth)
        anchors = [len(specs) for specs in anchor_specs()]
        self.box_predictors = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(channels, anchors))
        self.class_predictors = nn.ModuleList(nn.Conv2d(c, a * NUM_CLASSES, 3, padding=1) for c, a in zip(channels, anchors))
        self.register_buffer("anchors", make_anchors(), persistent=False)

    def maps(self, images: Tensor) -> list[Tensor]:
        """The six feature maps (N, C, g, g) of images already resized to 300x300, in [0, 255]."""
        x = self.features[:EXPANSION_BLOCK](images * (2.0 / 255.0) - 1.0)
        block = self.features[EXPANSION_BLOCK].conv
        expanded = block[0](x)
        x = self.features[EXPANSION_BLOCK + 1 :](block[1:](expanded))
        maps = [expanded, x]
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return maps

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, 300, 300) RGB in [0, 255] (`resize_legacy`) -> box codes (N, 1917, 4) and class
        logits (N, 1917, 91): the graph's `concat` and `concat_1`."""
        maps = self.maps(images)
        n = images.shape[0]
        # NHWC order, as the graph reshapes: anchors by row, column, then anchor
        codes = torch.cat([p(m).permute(0, 2, 3, 1).reshape(n, -1, 4) for p, m in zip(self.box_predictors, maps)], 1)
        logits = torch.cat([p(m).permute(0, 2, 3, 1).reshape(n, -1, NUM_CLASSES) for p, m in zip(self.class_predictors, maps)], 1)
        return codes, logits

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) RGB in [0, 255], any size -> decoded boxes (N, 1917, 4), normalised
        (ymin, xmin, ymax, xmax) of the image, and class logits (N, 1917, 91)."""
        codes, logits = self.predict(resize_legacy(images))
        return decode_boxes(codes, self.anchors), logits

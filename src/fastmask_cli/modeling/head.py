"""Head (paper §4.3, Fig. 5, Table 2): a confidence per window and a mask per window.

The confidence is a function of one window's 10x10 feature, as in DeepMask's score branch (2x2 max
pool, then a fully connected layer on the window). Written as a convolution it scores every window of
a level at once, instead of cutting windows out and running a fully connected layer on each.
Masks are decoded only for the windows that survive top-k (§5.3), from their cut-out features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScoreBranch(nn.Module):
    """Dense window confidence: (N, C, H, W) padded level -> (N, H - w + 1, W - w + 1) logits."""

    def __init__(self, channels: int, hidden: int, window: int) -> None:
        super().__init__()
        # 2x2 max pool (stride 1) then a w/2 x w/2 kernel with dilation 2 spans exactly w cells:
        # a fully connected layer on the max-pooled window, evaluated at every window position.
        self.fc1 = nn.Conv2d(channels, hidden, window // 2, dilation=2)
        self.fc2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, level: Tensor) -> Tensor:
        x = F.max_pool2d(level, 2, stride=1)
        return self.fc2(F.relu(self.fc1(x))).squeeze(1)


class MaskDecoder(nn.Module):
    """Fully connected decoder: window feature (K, C, w, w) -> mask logits (K, M, M)."""

    def __init__(self, channels: int, window: int, hidden: int, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size
        self.fc1 = nn.Linear(channels * window * window, hidden)
        self.fc2 = nn.Linear(hidden, mask_size * mask_size)

    def forward(self, windows: Tensor) -> Tensor:
        x = F.relu(self.fc1(windows.flatten(1)))
        return self.fc2(x).view(-1, self.mask_size, self.mask_size)


class StandardHead(nn.Module):
    """DeepMask-style head: the mask is decoded from the window feature as it is."""

    def __init__(self, channels: int, window: int, score_hidden: int, mask_hidden: int, mask_size: int) -> None:
        super().__init__()
        self.score = ScoreBranch(channels, score_hidden, window)
        self.mask = MaskDecoder(channels, window, mask_hidden, mask_size)

    def decode(self, windows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mask logits (K, M, M) and attention logits (none for this head)."""
        return self.mask(windows), None


class AttentionalHead(StandardHead):
    """The paper's head: a fully connected layer predicts a w x w spatial attention from the window,
    the feature is multiplied by it across channels, and the mask is decoded from the result."""

    def __init__(self, channels: int, window: int, score_hidden: int, mask_hidden: int, mask_size: int) -> None:
        super().__init__(channels, window, score_hidden, mask_hidden, mask_size)
        self.window = window
        self.attention = nn.Linear(channels * window * window, window * window)

    def decode(self, windows: Tensor) -> tuple[Tensor, Tensor | None]:
        attention = self.attention(windows.flatten(1)).view(-1, self.window, self.window)
        attended = windows * torch.sigmoid(attention).unsqueeze(1)
        return self.mask(attended), attention

"""EfficientNet-Lite0 (Tan & Le 2019, the TensorFlow "lite" variant) in plain torch.

The state dict has exactly the keys and shapes of the converted ImageNet file ulbc registers
(``efficientnet-lite0``, the key layout of lukemelas' ``efficientnet_pytorch``: ``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``, ``_conv_head``,
``_bn1``, ``_fc``), and the arithmetic of ``efficientnet_lite_pytorch``'s
``EfficientNet.from_name('efficientnet-lite0')`` in eval mode:

* What makes Lite differ from B0: no squeeze-and-excitation, ReLU6 instead of swish, stem (32) and
  head (1280) widths not scaled. Lite0's width and depth multipliers are 1.0, so the seven stages
  are exactly the base table below.
* Convolutions pad like TensorFlow's ``SAME``: the output has ``ceil(size / stride)`` samples and
  the padding, when odd, puts its extra sample at the bottom / right. The reference precomputes
  that padding for a 224×224 input; here it follows the actual input size, which is the same at
  224 and keeps other sizes well-defined.
* BatchNorm: eps 1e-3, momentum 0.01 (TensorFlow's decay 0.99).
* Dropout (0.2) before the classifier acts only in training. The reference's drop-connect (random
  skipping of residual branches in training) is left out: ulbc runs this network frozen, in eval
  mode, where it does nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: TensorFlow's batch-norm decay 0.99, as PyTorch's momentum.
BN_MOMENTUM = 1 - 0.99
BN_EPS = 1e-3
STEM_WIDTH = 32
HEAD_WIDTH = 1280
NUM_CLASSES = 1000
DROPOUT = 0.2
#: Lite0's stages: (repeats, kernel size, stride of the first block, expansion ratio, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class SamePaddingConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``SAME`` (no ``padding`` of its own, so its
    state dict is that of a plain ``nn.Conv2d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]  # the odd sample goes right / bottom, as in TF
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expansion (absent at ratio 1), depthwise k×k, linear 1×1 projection;
    the input is added back when the block keeps both resolution and width."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expands = expand_ratio != 1
        if self.expands:
            self._expand_conv = SamePaddingConv2d(in_channels, hidden, 1)
            self._bn0 = _norm(hidden)
        self._depthwise_conv = SamePaddingConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _norm(hidden)
        self._project_conv = SamePaddingConv2d(hidden, out_channels, 1)
        self._bn2 = _norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expands:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for ImageNet-1k: ``forward`` gives the 1000 logits of a normalised
    (N, 3, H, W) batch, ``features`` the 1280 pooled features that the classifier reads."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = SamePaddingConv2d(3, STEM_WIDTH, 3, stride=2)
        self._bn0 = _norm(STEM_WIDTH)
        blocks, width = [], STEM_WIDTH
        for repeats, kernel, stride, expand, out_channels in STAGES:
            for index in range(repeats):
                blocks.append(MBConvBlock(width, out_channels, kernel, stride if index == 0 else 1, expand))
                width = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePaddingConv2d(width, HEAD_WIDTH, 1)
        self._bn1 = _norm(HEAD_WIDTH)
        self._dropout = nn.Dropout(DROPOUT)
        self._fc = nn.Linear(HEAD_WIDTH, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))

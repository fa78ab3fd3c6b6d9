"""EfficientNet-B0 for CIFAR (``EfficientNetB0``), kuangliu's pytorch-cifar layout.

Tan, Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019.
CIFAR layout of kuangliu's ``models/efficientnet.py``: 3x3 stride-1 conv-BN-swish stem
(3 -> 32), 16 MBConv blocks in 7 stages (expansion, channels, blocks, kernel, stride):
(1,16,1,3,1) (6,24,2,3,2) (6,40,2,5,2) (6,80,3,3,2) (6,112,3,5,1) (6,192,4,5,2) (6,320,1,3,1),
each block = [1x1 expansion conv-BN-swish] - depthwise conv-BN-swish - squeeze-excitation
(reduction to 1/4 of the block's *input* channels) - 1x1 projection conv-BN, identity skip when
shapes match; no 1280-channel head: global average pooling, dropout 0.2, ``linear`` 320 -> C.

Differences from kuangliu, on purpose: the expansion conv is not created for expansion-1 blocks
(kuangliu creates it and never uses it: 1,088 dead parameters), and drop-connect is a working
``drop_connect_rate`` option (default 0, which is what kuangliu's code effectively runs).

Features: f0 = stem output, f1..f5 = the last block at each resolution (16@32, 24@16, 40@8,
112@4, 320@2 for a 32-px input). MBConv outputs are linear (no activation after the projection
BN), so pre-activation = the stage output; BN-before-activation = those blocks' ``bn3``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["EfficientNetCifar"]

B0 = [  # expansion, out channels, blocks, kernel, stride
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
]
_LAST = (0, 2, 4, 10, 15)  # index in ``layers`` of the last block at each resolution
FEATURES = FeatureSpec(
    stem="act",
    stages=tuple(f"layers.{i}" for i in _LAST),
    preact=(None,) * len(_LAST),
    pooled="linear",
    bn_before_relu=tuple(f"layers.{i}.bn3" for i in _LAST),
)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.se1 = nn.Conv2d(channels, se_channels, 1)
        self.se2 = nn.Conv2d(se_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.se2(F.silu(self.se1(w))))


class MBConv(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expansion: int,
        se_ratio: float = 0.25,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        ch = expansion * in_ch
        self.expand = expansion != 1
        if self.expand:
            self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, kernel, stride, (kernel - 1) // 2, groups=ch, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.se = SqueezeExcite(ch, max(1, int(in_ch * se_ratio)))
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = F.silu(self.bn1(self.conv1(x))) if self.expand else x
        out = self.se(F.silu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        if self.has_skip:
            if self.training and self.drop_rate > 0:  # drop-connect (stochastic depth)
                keep = 1.0 - self.drop_rate
                mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device) < keep
                out = out * mask.to(out.dtype) / keep
            out = out + x
        return out


class EfficientNetCifar(nn.Module):
    def __init__(
        self,
        cfg=B0,
        num_classes: int = 10,
        dropout_rate: float = 0.2,
        drop_connect_rate: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act = nn.SiLU()
        total = sum(c[2] for c in cfg)
        layers, in_ch, b = [], 32, 0
        for expansion, out_ch, n, kernel, stride in cfg:
            for i in range(n):
                rate = drop_connect_rate * b / total
                layers.append(
                    MBConv(
                        in_ch, out_ch, kernel, stride if i == 0 else 1, expansion, drop_rate=rate
                    )
                )
                in_ch, b = out_ch, b + 1
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_rate)
        self.linear = nn.Linear(in_ch, num_classes)
        kaiming_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.act(self.bn1(self.conv1(x))))
        return self.linear(self.dropout(self.avgpool(x).flatten(1)))


@register_model("EfficientNetB0", family="efficientnet", features=FEATURES)
def efficientnet_b0_cifar(num_classes: int, **kwargs) -> nn.Module:
    """CIFAR EfficientNet-B0 (kuangliu layout: stride-1 stem, no 1280 head)"""
    return EfficientNetCifar(num_classes=num_classes, **kwargs)

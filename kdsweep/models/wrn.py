"""Wide Residual Networks for CIFAR (wrn_16_1 ... wrn_40_2) in RepDistiller's layout.

Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016. Layout as in RepDistiller
``models/wrn.py``: 3x3 stem conv (16 ch, no BN), three groups of ``n = (depth - 4) / 6``
pre-activation BasicBlocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, widths 16k/32k/64k, strides
1/2/2), a bias-free 1x1 conv shortcut where the shape changes (applied to the activated input),
then BN-ReLU, global average pooling and a linear classifier. Module names follow RepDistiller.

Features: f0 = stem conv output (no BN/ReLU yet), f1..f3 = group outputs (residual sums, before
any BN). Because the blocks are pre-activation, a stage's "pre-activation" is the *next* BN
applied to it: ``block2.layer[0].bn1(f1)``, ``block3.layer[0].bn1(f2)`` and the final
``bn1(f3)``, taken from the forward pass itself (not recomputed, so running statistics are
updated once). Those three BNs are also the BN-before-ReLU layers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["WideResNet"]

FEATURES = FeatureSpec(
    stem="conv1",
    stages=("block1", "block2", "block3"),
    preact=("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"),
    pooled="fc",
    bn_before_relu=("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"),
)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(n)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; ``depth = 6n + 4``."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 10, drop_rate: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        kaiming_init(self, linear="zero_bias")

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(self.avgpool(out).flatten(1))


def _register(depth: int, k: int) -> None:
    name = f"wrn_{depth}_{k}"

    def build(num_classes: int, **kwargs) -> nn.Module:
        return WideResNet(depth, k, num_classes=num_classes, **kwargs)

    build.__doc__ = f"Wide ResNet-{depth}-{k} (widths {16 * k}/{32 * k}/{64 * k})"
    build.__name__ = name
    register_model(name, family="wrn", features=FEATURES)(build)


for _depth, _k in ((16, 1), (16, 2), (16, 4), (28, 2), (28, 4), (40, 1), (40, 2)):
    _register(_depth, _k)

"""DenseNet-40 (growth rate k = 12) for CIFAR, registered as ``densenet40``.

Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(the L = 40, k = 12 model of Table 2, 1.0M parameters on CIFAR-10).
Layout: 3x3 conv stem (3 -> 16), three dense blocks of 12 BN-ReLU-conv3x3 layers each
concatenating k = 12 new channels (16 -> 160, 160 -> 304, 304 -> 448), transitions
BN-ReLU-conv1x1 (no compression) followed by 2x2 average pooling, then BN-ReLU, global average
pooling and a linear classifier. He-normal init as in the reference implementations.

DenseNet is pre-activation like WRN. Features: f0 = stem conv output, f1..f3 = dense block
outputs (raw concatenations). Pre-activation = the next BN applied to them
(``trans1.bn``, ``trans2.bn`` and the final ``bn``, taken from the forward pass); those BNs are
also the BN-before-ReLU layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["DenseNet"]

FEATURES = FeatureSpec(
    stem="conv1",
    stages=("dense1", "dense2", "dense3"),
    preact=("trans1.bn", "trans2.bn", "bn"),
    pooled="fc",
    bn_before_relu=("trans1.bn", "trans2.bn", "bn"),
)


class DenseLayer(nn.Module):
    def __init__(self, in_planes: int, growth_rate: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(
        self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10, drop_rate: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 3 != 0:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        n = (depth - 4) // 3
        planes = 16
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        blocks = []
        for _ in range(3):
            layers = [
                DenseLayer(planes + i * growth_rate, growth_rate, drop_rate) for i in range(n)
            ]
            blocks.append(nn.Sequential(*layers))
            planes += n * growth_rate
        self.dense1, self.dense2, self.dense3 = blocks
        c1 = 16 + n * growth_rate
        c2 = c1 + n * growth_rate
        self.trans1 = Transition(c1, c1)
        self.trans2 = Transition(c2, c2)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        kaiming_init(self, linear="zero_bias")

    def forward(self, x: Tensor) -> Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.trans2(self.dense2(x))
        x = self.relu(self.bn(self.dense3(x)))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("densenet40", family="densenet", features=FEATURES)
def densenet40(num_classes: int, **kwargs) -> nn.Module:
    """CIFAR DenseNet-40, growth rate 12, no bottleneck/compression"""
    return DenseNet(40, 12, num_classes=num_classes, **kwargs)

"""ResNeXt-29 for CIFAR (``ResNeXt29_2x64d``, ``ResNeXt29_32x4d``, ``ResNeXt29_32x8d``).

Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep Neural Networks",
CVPR 2017. Layout of kuangliu's pytorch-cifar ``models/resnext.py``: 1x1 conv-BN-ReLU stem
(3 -> 64), three stages of 3 bottleneck blocks (1x1 -> grouped 3x3 with ``cardinality`` groups ->
1x1 to 2x the group width), strides 1/2/2, the bottleneck width doubling after every stage, 1x1
conv + BN projection shortcuts, global average pooling, ``linear`` classifier on
``cardinality * bottleneck_width * 8`` features. ``CxWd`` means
cardinality C and bottleneck width W in the first stage (32x8d: C = 32, W = 8).

Features: f0 = stem output, f1..f3 = stage outputs; pre-activation = the last block's residual
sum before its ReLU; BN-before-ReLU = the last block's ``bn3``.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model
from kdsweep.models.resnet_kuangliu import Bottleneck, shortcut

__all__ = ["ResNeXt"]

FEATURES = FeatureSpec(
    stem="relu",
    stages=("layer1", "layer2", "layer3"),
    preact=("layer1.-1.preact", "layer2.-1.preact", "layer3.-1.preact"),
    pooled="linear",
    bn_before_relu=("layer1.-1.bn3", "layer2.-1.bn3", "layer3.-1.bn3"),
)


class Block(nn.Module):
    expansion = 2

    def __init__(self, in_planes: int, cardinality: int, bottleneck_width: int, stride: int):
        super().__init__()
        gw = cardinality * bottleneck_width
        self.conv1 = nn.Conv2d(in_planes, gw, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(gw)
        self.conv2 = nn.Conv2d(gw, gw, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(gw)
        self.conv3 = nn.Conv2d(gw, self.expansion * gw, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * gw)
        self.shortcut = shortcut(in_planes, self.expansion * gw, stride)
        self.preact = nn.Identity()

    forward = Bottleneck.forward  # the same conv-bn-relu x2, conv-bn, + shortcut, relu


class ResNeXt(nn.Module):
    def __init__(
        self, num_blocks: list[int], cardinality: int, bottleneck_width: int, num_classes: int = 10
    ):
        super().__init__()
        self.cardinality = cardinality
        self.bottleneck_width = bottleneck_width
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_blocks[0], 1)
        self.layer2 = self._make_layer(num_blocks[1], 2)
        self.layer3 = self._make_layer(num_blocks[2], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cardinality * bottleneck_width * 8, num_classes)
        kaiming_init(self)

    def _make_layer(self, n: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            layers.append(
                Block(
                    self.in_planes, self.cardinality, self.bottleneck_width, stride if i == 0 else 1
                )
            )
            self.in_planes = Block.expansion * self.cardinality * self.bottleneck_width
        self.bottleneck_width *= 2
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


def _register(cardinality: int, width: int) -> None:
    name = f"ResNeXt29_{cardinality}x{width}d"

    def build(num_classes: int, **kwargs) -> nn.Module:
        return ResNeXt([3, 3, 3], cardinality, width, num_classes=num_classes, **kwargs)

    build.__doc__ = f"CIFAR ResNeXt-29, cardinality {cardinality}, bottleneck width {width}"
    build.__name__ = name
    register_model(name, family="resnext", features=FEATURES)(build)


for _c, _w in ((2, 64), (32, 4), (32, 8)):
    _register(_c, _w)

"""Family ``resnet_kuangliu``: the four-stage ImageNet ResNets with a CIFAR stem (``ResNet18``,
``ResNet34``, ``ResNet50``, ``ResNet152``) of kuangliu's pytorch-cifar ``models/resnet.py``, which
RepDistiller adapts as ``models/resnetv2.py`` (its ``ResNet50`` teacher).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016. The CIFAR
variant replaces the 7x7/2 stem and max pooling with a 3x3 stride-1 conv (3 -> 64): four stages
of BasicBlocks (18/34) or Bottlenecks (50/152, expansion 4), widths 64/128/256/512, strides
1/2/2/2, 1x1 conv + BN projection shortcuts, global average pooling, ``linear`` classifier.
Module names follow RepDistiller (``shortcut``, ``linear``).

Not to be confused with the 6n+2 CIFAR ResNets ``resnet8`` ... ``resnet110`` of
:mod:`kdsweep.models.resnet`, nor with torchvision's 224-px ImageNet ResNets ``tv_resnet18`` ...
``tv_resnet152`` (:mod:`kdsweep.models.torchvision_models`).

Features: f0 = stem output (after ReLU), f1..f4 = stage outputs; pre-activation = the last
block's residual sum before its ReLU; BN-before-ReLU = the last block's ``bn2`` (BasicBlock) or
``bn3`` (Bottleneck).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["ResNetCifarStem"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _features(last_bn: str) -> FeatureSpec:
    return FeatureSpec(
        stem="relu",
        stages=_STAGES,
        preact=tuple(f"{s}.-1.preact" for s in _STAGES),
        pooled="linear",
        bn_before_relu=tuple(f"{s}.-1.{last_bn}" for s in _STAGES),
    )


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.preact(out + self.shortcut(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = shortcut(in_planes, 4 * planes, stride)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(self.preact(out + self.shortcut(x)))


class ResNetCifarStem(nn.Module):
    def __init__(
        self,
        block: type[nn.Module],
        num_blocks: list[int],
        num_classes: int = 10,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        kaiming_init(self)
        if zero_init_residual:  # Goyal et al. 2017, optional as in RepDistiller
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


def _register(name: str, block, blocks: list[int]) -> None:
    def build(num_classes: int, **kwargs) -> nn.Module:
        return ResNetCifarStem(block, blocks, num_classes=num_classes, **kwargs)

    build.__doc__ = f"{name} with a CIFAR stem (3x3 stride-1 conv, no max pool)"
    build.__name__ = name
    last_bn = "bn3" if block is Bottleneck else "bn2"
    register_model(name, family="resnet_kuangliu", features=_features(last_bn))(build)


_register("ResNet18", BasicBlock, [2, 2, 2, 2])
_register("ResNet34", BasicBlock, [3, 4, 6, 3])
_register("ResNet50", Bottleneck, [3, 4, 6, 3])
_register("ResNet152", Bottleneck, [3, 8, 36, 3])

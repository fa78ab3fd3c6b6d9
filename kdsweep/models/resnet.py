"""Family ``resnet``: the 6n+2 CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) in
RepDistiller's layout.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the 6n+2 CIFAR
networks of section 4.2); the x4 widths are from Tian, Krishnan, Isola, "Contrastive
Representation Distillation", ICLR 2020 (RepDistiller ``models/resnet.py``).

Layout: 3x3 conv-BN-ReLU stem, three stages of ``n = (depth - 2) / 6`` post-activation
BasicBlocks (strides 1, 2, 2), 1x1 conv + BN projection shortcut where the shape changes,
global average pooling, linear classifier. Module names follow RepDistiller, so its
``state_dict`` keys load unchanged.

Features: f0 = stem output (after ReLU), f1..f3 = stage outputs; pre-activation = the last
block's residual sum before its ReLU (the ``preact`` identity tap); BN-before-ReLU = the last
block's ``bn2``.

Not to be confused with :mod:`kdsweep.models.resnet_kuangliu` (``ResNet18`` ... ``ResNet152``: the
four-stage ImageNet ResNets with a CIFAR stem) or the torchvision ``tv_resnet18`` ...
``tv_resnet152`` (:mod:`kdsweep.models.torchvision_models`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["BasicBlock", "CifarResNet"]

FEATURES = FeatureSpec(
    stem="relu",
    stages=("layer1", "layer2", "layer3"),
    preact=("layer1.-1.preact", "layer2.-1.preact", "layer3.-1.preact"),
    pooled="fc",
    bn_before_relu=("layer1.-1.bn2", "layer2.-1.bn2", "layer3.-1.bn2"),
)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU (post-activation)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.preact = nn.Identity()  # tap point: residual sum before the final ReLU

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.preact(out + shortcut))


class CifarResNet(nn.Module):
    """``depth = 6n + 2``; ``num_filters = [stem, stage1, stage2, stage3]`` channels."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3], num_classes)
        kaiming_init(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [self.block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [self.block(planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def block(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> nn.Module:
        """One residual block of a stage (a subclass may build another kind, same layout)."""
        return BasicBlock(inplanes, planes, stride, downsample)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _register(name: str, depth: int, filters: list[int], doc: str) -> None:
    def build(num_classes: int, **kwargs) -> nn.Module:
        return CifarResNet(depth, filters, num_classes=num_classes, **kwargs)

    build.__doc__ = doc
    build.__name__ = name
    register_model(name, family="resnet", features=FEATURES)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, [16, 16, 32, 64], f"CIFAR ResNet-{_depth} (16/32/64)")
_register("resnet8x4", 8, [32, 64, 128, 256], "CIFAR ResNet-8, 4x wide (64/128/256)")
_register("resnet32x4", 32, [32, 64, 128, 256], "CIFAR ResNet-32, 4x wide (64/128/256)")

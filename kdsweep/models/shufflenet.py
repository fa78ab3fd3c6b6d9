"""ShuffleNet V1 and V2 for CIFAR, in RepDistiller's layout: ``ShuffleV1``, ``ShuffleV2`` (width
1.0) and ShuffleNetV2 at widths 0.5 / 1.5 / 2.0 as ``ShuffleV2_0_5``, ``ShuffleV2_1_5``,
``ShuffleV2_2_0``. torchvision's 224-px ShuffleNetV2 is ``tv_shufflenet_v2_x1_0`` etc.

- Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
  Mobile Devices", CVPR 2018 (V1).
- Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
  Design", ECCV 2018 (V2).

CIFAR layouts as in RepDistiller ``models/ShuffleNetv1.py`` / ``ShuffleNetv2.py`` (Tian et al.,
ICLR 2020): a 1x1 conv-BN-ReLU stem 3 -> 24 without stride or max pooling, then three stages
whose first block halves the resolution. V1: groups 3, out planes 240/480/960, 4/8/4 blocks,
stride-2 blocks concatenate an avg-pooled shortcut. V2: each stage is a DownBlock followed by
3/7/3 BasicBlocks (channel split, branch, concat, shuffle); a 1x1 conv-BN-ReLU head (464 -> 1024
for width 1.0) precedes pooling. Default PyTorch init, as in the reference. The widths are the
``configs`` table of RepDistiller's ``ShuffleNetv2.py`` (from kuangliu's pytorch-cifar
``models/shufflenetv2.py``), whose width 2.0 uses stage channels 224/488/976 (torchvision and the
paper: 244/488/976).

Features: f0 = stem output, f1..f3 = stage outputs.
Pre-activation: the last block of each stage computes ``ReLU(pre)``:
- V1: ``pre = bn3(conv3(...)) + x`` (the residual sum); BN-before-ReLU = that block's ``bn3``.
- V2: ``pre = shuffle(cat(x1, bn3(conv3(...))))``, where ``x1`` is the pass-through half (already
  >= 0, so ``ReLU(pre)`` equals the reference output exactly and pre is channel-aligned with the
  stage output; RepDistiller's ``preact`` is unshuffled). BN-before-ReLU covers only the branch
  half here, so :meth:`FeatureTap.bn_before_relu` returns a full-width snapshot BN
  (``bn_layout="shuffle_v2"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.layers import channel_shuffle
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["ShuffleNetV1", "ShuffleNetV2"]

V1_FEATURES = FeatureSpec(
    stem="relu",
    stages=("layer1", "layer2", "layer3"),
    preact=("layer1.-1.preact", "layer2.-1.preact", "layer3.-1.preact"),
    pooled="linear",
    bn_before_relu=("layer1.-1.bn3", "layer2.-1.bn3", "layer3.-1.bn3"),
)
V2_FEATURES = FeatureSpec(
    stem="relu",
    stages=("layer1", "layer2", "layer3"),
    preact=("layer1.-1.preact", "layer2.-1.preact", "layer3.-1.preact"),
    pooled="linear",
    bn_before_relu=("layer1.-1.bn3", "layer2.-1.bn3", "layer3.-1.bn3"),
    bn_layout="shuffle_v2",
)


# ---------------------------------------------------------------------------------- V1
class ShuffleV1Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block sees the 24-channel stem
        self.groups1 = g
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.preact = nn.Identity()  # tap point: the sum / concat before the final ReLU

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        pre = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(self.preact(pre))


class ShuffleNetV1(nn.Module):
    def __init__(
        self,
        out_planes=(240, 480, 960),
        num_blocks=(4, 8, 4),
        groups: int = 3,
        num_classes: int = 10,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, n: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            cat_planes = self.in_planes if i == 0 else 0  # stride-2 blocks concat the input
            layers.append(
                ShuffleV1Block(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups)
            )
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


# ---------------------------------------------------------------------------------- V2
class ShuffleV2Block(nn.Module):
    """Stride-1 unit: split, branch on the second half, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.preact = nn.Identity()  # tap point: shuffle(cat(x1, bn3(...))) before the ReLU

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        pre = channel_shuffle(torch.cat([x1, out], 1), 2)
        return F.relu(self.preact(pre))  # x1 >= 0 already, so this is ReLU on the branch only


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


V2_CONFIGS = {  # net size -> (stage channels + head channels, blocks per stage)
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleNetV2(nn.Module):
    def __init__(self, net_size: float = 1.0, num_classes: int = 10):
        super().__init__()
        out_channels, num_blocks = V2_CONFIGS[net_size]
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, n: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2Block(out_channels) for _ in range(n)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("ShuffleV1", family="shufflenetv1", features=V1_FEATURES, default_lr=0.01)
def shufflev1(num_classes: int, **kwargs) -> nn.Module:
    """CIFAR ShuffleNetV1, groups 3 (RepDistiller ShuffleV1)"""
    return ShuffleNetV1(num_classes=num_classes, **kwargs)


@register_model("ShuffleV2", family="shufflenetv2", features=V2_FEATURES, default_lr=0.01)
def shufflev2(num_classes: int, **kwargs) -> nn.Module:
    """CIFAR ShuffleNetV2, net size 1.0 (RepDistiller ShuffleV2)"""
    return ShuffleNetV2(1.0, num_classes=num_classes, **kwargs)


def _register_width(size: float) -> None:
    name = f"ShuffleV2_{str(size).replace('.', '_')}"

    def build(num_classes: int, **kwargs) -> nn.Module:
        return ShuffleNetV2(size, num_classes=num_classes, **kwargs)

    build.__doc__ = f"CIFAR ShuffleNetV2 at width {size} (RepDistiller layout)"
    build.__name__ = name
    register_model(name, family="shufflenetv2", features=V2_FEATURES)(build)


for _size in V2_CONFIGS:
    if _size != 1.0:  # width 1.0 is ShuffleV2 itself
        _register_width(_size)

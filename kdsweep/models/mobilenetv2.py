"""MobileNetV2 for CIFAR: CRD's half-width ``mobile_half`` (registered as ``MobileNetV2``).

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018. The CIFAR variant is RepDistiller's ``models/mobilenetv2.py``
(Tian et al., ICLR 2020, from "Knowledge Distillation via Route Constrained Optimization"):
expansion T = 6, width 0.5, stem conv3x3 stride 2 (3 -> 16), settings (t, c, n, s)
[1,16,1,1] [T,24,2,1] [T,32,3,2] [T,64,4,2] [T,96,3,1] [T,160,3,2] [T,320,1,1] (channels x0.5),
the 1x1 expansion conv present even at t = 1, last conv 160 -> 1280 (not scaled for width <= 1),
global average pooling, linear classifier. ReLU (not ReLU6) as in the reference. Module names
follow RepDistiller.

Features: f0 = stem output (16 x 16 x 16 for a 32-px input), f1..f4 = outputs of ``blocks[1]``,
``blocks[2]``, ``blocks[4]``, ``blocks[6]`` (the last block at each resolution, 12/16/48/160
channels). These are linear bottlenecks: no activation follows a stage output, so the
pre-activation feature *is* the stage output (mdistiller has no ``preact_feats`` for this model;
kdsweep defines them this way). BN-before-ReLU = the last BN of those blocks (``conv[-1]``), as
in RepDistiller's ``get_bn_before_relu``.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["MobileNetV2Cifar"]

FEATURES = FeatureSpec(
    stem="conv1",
    stages=("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    preact=(None, None, None, None),
    pooled="classifier",
    bn_before_relu=(
        "blocks.1.-1.conv.-1",
        "blocks.2.-1.conv.-1",
        "blocks.4.-1.conv.-1",
        "blocks.6.-1.conv.-1",
    ),
)


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),  # pw expansion
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # dw
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, bias=False),  # pw linear
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Cifar(nn.Module):
    def __init__(self, num_classes: int = 100, expansion: int = 6, width_mult: float = 0.5):
        super().__init__()
        settings = [  # t, c, n, s
            [1, 16, 1, 1],
            [expansion, 24, 2, 1],
            [expansion, 32, 3, 2],
            [expansion, 64, 4, 2],
            [expansion, 96, 3, 1],
            [expansion, 160, 3, 2],
            [expansion, 320, 1, 1],
        ]
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in settings:
            out_ch = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        kaiming_init(self, linear="normal")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = self.avgpool(self.conv2(x)).flatten(1)
        return self.classifier(x)


@register_model("MobileNetV2", family="mobilenetv2", features=FEATURES, default_lr=0.01)
def mobilenetv2_half(num_classes: int, **kwargs) -> nn.Module:
    """CIFAR MobileNetV2, CRD's half-width mobile_half (T=6, width 0.5)"""
    return MobileNetV2Cifar(num_classes=num_classes, **kwargs)

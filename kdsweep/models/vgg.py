"""VGG with batch normalisation for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19), RepDistiller layout.

Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015; batch norm from Ioffe, Szegedy, ICML 2015. The CIFAR variant (fully connected layers
removed, one linear classifier on the globally pooled 512-d feature, vgg8 = configuration "S")
is RepDistiller's ``models/vgg.py`` (Tian et al., "Contrastive Representation Distillation",
ICLR 2020). Module names follow RepDistiller (``block0..block4``, ``classifier``).

Five blocks of conv3x3(bias)-BN-ReLU layers; the last ReLU of each block is applied outside the
block (``act0..act4``) so that the block output is the pre-activation. 2x2 max pooling follows
blocks 0-2, and block 3 only for inputs of 64 px or more (as in RepDistiller, which skips
``pool3`` for 32-px inputs).

Features: f0 = ReLU(block0), f1..f4 = ReLU(block1..block4); pre-activation = the block outputs
before that ReLU; BN-before-ReLU = the last BN of blocks 1-4.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdsweep.models.layers import kaiming_init
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["VGG", "CFGS"]

CFGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}

FEATURES = FeatureSpec(
    stem="act0",
    stages=("act1", "act2", "act3", "act4"),
    preact=("block1", "block2", "block3", "block4"),
    pooled="classifier",
    bn_before_relu=("block1.-1", "block2.-1", "block3.-1", "block4.-1"),
)


def _block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in widths:
        layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
        in_channels = v
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is the model's act{i}


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int = 10):
        super().__init__()
        in_ch = 3
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(widths, in_ch))
            setattr(self, f"act{i}", nn.ReLU())
            in_ch = widths[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        kaiming_init(self, linear="normal")

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[2]
        x = self.pool0(self.act0(self.block0(x)))
        x = self.pool1(self.act1(self.block1(x)))
        x = self.pool2(self.act2(self.block2(x)))
        x = self.act3(self.block3(x))
        if h >= 64:
            x = self.pool3(x)
        x = self.act4(self.block4(x))
        return self.classifier(self.pool4(x).flatten(1))


def _register(name: str) -> None:
    def build(num_classes: int, **kwargs) -> nn.Module:
        return VGG(CFGS[name], num_classes=num_classes, **kwargs)

    n_conv = sum(len(b) for b in CFGS[name])
    build.__doc__ = f"CIFAR VGG-{n_conv + 1}-BN ({n_conv} conv layers + 1 linear)"
    build.__name__ = name
    register_model(name, family="vgg", features=FEATURES)(build)


for _name in CFGS:
    _register(_name)

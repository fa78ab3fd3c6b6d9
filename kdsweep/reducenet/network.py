"""Family ``reducenet``: ReduceNet-20/56, CIFAR ResNets grown by a non-linear bottleneck branch.

ReduceNet ("Grow, Shrink, Distill", public code ohmydroid/reducenet, its ``models/reducenet.py``): a
residual block has two branches before its final 3x3 convolution, a non-linear **bottleneck**
branch (Conv3x3-BN-ReLU then Conv1x1-BN-ReLU, ``expansion`` x the block's width inside) and a
single-layer branch (Conv3x3-BN-ReLU); their sum goes through Conv3x3-BN, the shortcut is added
and a ReLU follows. Without the bottleneck branch the block *is* RepDistiller's CIFAR
``BasicBlock`` (:mod:`kdsweep.models.resnet`), and the modules keep its names (``conv1``/``bn1``
= the single-layer branch, ``conv2``/``bn2`` = the final convolution, ``downsample``), so
``reduce20`` minus every ``*.bottleneck.*`` tensor is exactly ``resnet20``: the ReduceNet student
is a subnetwork of its teacher, and weights move between the two by name (kdsweep/reducenet/README.md).

Names: ``reduce20``/``reduce56`` (expansion 1, the public code's default), ``reduce20_e2``,
``reduce20_e4``, ``reduce56_e2``, ``reduce56_e4``; the small network is ``resnet20``/``resnet56``.
``reduce8`` (``_e2``, ``_e4``, small network ``resnet8``) is not in the paper: it is the tiny
variant for smoke runs and tests.

Deviations from the public code (which differs between its own versions): there the branches are
bare convolutions summed before one shared BN-ReLU (bottleneck Conv3-BN-ReLU-Conv1, single Conv3)
and no ReLU follows the residual addition; here each branch has its own BN-ReLU as the README
describes and the block is post-activation like He et al.'s CIFAR ResNets, which is what makes
the small network exactly ``resnet20``. The public code blocks the bottleneck by multiplying it
by a scalar 0; here stage 1 trains ``resnet20`` itself and stage 2 adds freshly initialised
bottleneck branches (:mod:`kdsweep.reducenet.stages`).

Features: as family ``resnet`` (f0 = stem, f1..f3 = stage outputs, pre-activation = the last
block's residual sum, BN-before-ReLU = the last block's ``bn2``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.models.registry import register_model
from kdsweep.models.resnet import FEATURES, CifarResNet

__all__ = ["ReduceBlock", "ReduceNet"]

EXPANSIONS = (1, 2, 4)
DEPTHS = (8, 20, 56)  # 8: a tiny variant for smoke runs and tests (not in the paper)


class ReduceBlock(nn.Module):
    """``relu(bn1(conv1 x)) + bottleneck(x)`` -> conv2-BN, plus shortcut, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None,
                 expansion: int = 1):
        super().__init__()
        width = expansion * planes
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(inplanes, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
        )
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.preact = nn.Identity()  # tap point: residual sum before the final ReLU

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x))) + self.bottleneck(x)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.preact(out + shortcut))


class ReduceNet(CifarResNet):
    """A 6n+2 CIFAR ResNet whose blocks carry a bottleneck branch of width ``expansion`` x planes."""

    def __init__(self, depth: int, num_filters: list[int], num_classes: int = 10,
                 expansion: int = 1):
        self.expansion = int(expansion)  # read by block() during CifarResNet.__init__
        super().__init__(depth, num_filters, num_classes=num_classes)

    def block(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> nn.Module:
        return ReduceBlock(inplanes, planes, stride, downsample, self.expansion)


def teacher_name(depth: int, expansion: int) -> str:
    """The registered name of ReduceNet-``depth`` with bottleneck ``expansion``."""
    return f"reduce{depth}" if expansion == 1 else f"reduce{depth}_e{expansion}"


def _register(depth: int, expansion: int) -> None:
    name = teacher_name(depth, expansion)

    def build(num_classes: int, **kwargs) -> nn.Module:
        return ReduceNet(depth, [16, 16, 32, 64], num_classes=num_classes, expansion=expansion,
                         **kwargs)

    build.__doc__ = (f"ReduceNet-{depth}, bottleneck expansion {expansion} (resnet{depth} + "
                     "bottleneck branches)")
    build.__name__ = name
    register_model(name, family="reducenet", features=FEATURES)(build)


for _depth in DEPTHS:
    for _e in EXPANSIONS:
        _register(_depth, _e)

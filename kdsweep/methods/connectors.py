"""Shared pieces of the feature methods: regressors/adapters and stage-list alignment.

Connectors are ordinary submodules of a method (created in ``Method.build`` from the shapes of a
dry-run batch), so they are optimised and checkpointed with it and counted as extra parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.models import ModelOutput

T_ = TypeVar("T_")

__all__ = [
    "ConnectorConvBN",
    "ConvReg",
    "align_tail",
    "match_spatial",
    "require_features",
]


def align_tail(a: Sequence[T_], b: Sequence[T_]) -> tuple[list[T_], list[T_]]:
    """Keep the last ``min(len(a), len(b))`` items of both lists (deepest stages paired together).

    mdistiller's ``_align_list``: when the teacher and the student have different numbers of
    stages (e.g. ResNet50's four vs resnet8's three), the deepest stages are matched.
    """
    n = min(len(a), len(b))
    return list(a[len(a) - n:]), list(b[len(b) - n:])


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps down to the other's H x W (RepDistiller's AT rule)."""
    hs, ws = f_s.shape[-2:]
    ht, wt = f_t.shape[-2:]
    if (hs, ws) == (ht, wt):
        return f_s, f_t
    if hs * ws > ht * wt:
        return F.adaptive_avg_pool2d(f_s, (ht, wt)), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, (hs, ws))


def require_features(method: str, out: ModelOutput | None, who: str, *, pooled: bool = False,
                     preact: bool = False, min_stages: int = 1) -> None:
    """Refuse, with one line, outputs that lack the features a method reads."""
    if out is None:
        raise ConfigError(f"method {method!r} needs a teacher")
    if pooled:
        if out.pooled is None:
            raise ConfigError(f"method {method!r} needs the {who}'s pooled embedding; its model "
                              "declares no features (see docs/models.md)")
        return
    feats = out.preact_feats if preact else out.feats
    if len(feats) < min_stages + 1:
        kind = "pre-activation stage features" if preact else "stage features"
        raise ConfigError(f"method {method!r} needs at least {min_stages} {kind} of the {who} "
                          f"(f1..); got {max(0, len(feats) - 1)} (see docs/models.md)")


class ConvReg(nn.Module):
    """FitNet's regressor from a student map to a teacher map (RepDistiller's ``ConvReg`` rules).

    Chosen from the spatial sizes ``Hs`` (student) and ``Ht`` (teacher):

    - ``Hs == 2 Ht``: 3x3 conv, stride 2, padding 1;
    - ``2 Hs == Ht``: 4x4 transposed conv, stride 2, padding 1;
    - ``Hs >= Ht``: conv with kernel ``(1 + Hs - Ht, 1 + Ws - Wt)`` (1x1 for equal sizes);
    - otherwise (student smaller by a factor other than 2; RepDistiller raises here): 1x1 conv
      followed by bilinear upsampling to the teacher's size.

    then BatchNorm and (``use_relu``) ReLU.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True):
        super().__init__()
        _, s_c, s_h, s_w = (int(v) for v in s_shape)
        _, t_c, t_h, t_w = (int(v) for v in t_shape)
        self.upsample: tuple[int, int] | None = None
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=1)
            self.upsample = (t_h, t_w)
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.upsample is not None:
            x = F.interpolate(x, size=self.upsample, mode="bilinear", align_corners=False)
        x = self.bn(x)
        return F.relu(x) if self.use_relu else x


class ConnectorConvBN(nn.Sequential):
    """OFD's connector (Heo et al. 2019): ``k x k`` conv (no bias, 'same' padding) + BatchNorm.

    Maps the student's channels to the teacher's; the conv is initialised N(0, 2 / (k*k*C_out))
    and the BN to identity, as in the reference code.
    """

    def __init__(self, s_channels: int, t_channels: int, kernel_size: int = 1):
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=kernel_size, stride=1,
                         padding=(kernel_size - 1) // 2, bias=False)
        bn = nn.BatchNorm2d(t_channels)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        super().__init__(conv, bn)

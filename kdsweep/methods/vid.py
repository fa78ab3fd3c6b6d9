"""Variational information distillation (VID)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import align_tail, match_spatial, require_features
from kdsweep.models import ModelOutput

#: Added to the predicted variance (RepDistiller's ``VIDLoss(eps=1e-5)``).
VID_EPS = 1e-5


def inverse_softplus(y: float) -> float:
    """``x`` with ``log(1 + exp(x)) == y`` (``y > 0``), stable for large and small ``y``."""
    return y + math.log(-math.expm1(-y))


class VIDPair(nn.Module):
    """One layer pair: a Gaussian ``N(mu(f_s), diag(sigma^2))`` over the teacher map.

    ``mu`` = 1x1 conv (``C_s -> C_m``) -> ReLU -> 1x1 conv (``C_m -> C_m``) -> ReLU -> 1x1 conv
    (``C_m -> C_t``), all without bias; ``sigma_c^2 = softplus(alpha_c) + eps`` per teacher
    channel, ``alpha`` initialised so that ``sigma^2 = init_pred_var``.
    """

    def __init__(self, c_s: int, c_mid: int, c_t: int, init_pred_var: float = 5.0,
                 eps: float = VID_EPS):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_t, 1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((c_t,), inverse_softplus(init_pred_var - eps)))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.log_scale.float()) + self.eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """``mean_{b,c,h,w} 0.5 * ((mu - f_t)^2 / sigma_c^2 + log sigma_c^2)`` (float32), after
        average-pooling the larger of the two maps to the smaller one's H x W."""
        f_s, f_t = match_spatial(f_s, f_t)
        mu = self.regressor(f_s).float()
        var = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((mu - f_t.float()).pow(2) / var + var.log())).mean()


@register_method("vid")
class VID(FeatureMethod):
    """Variational Information Distillation, Ahn, Hu, Damianou, Lawrence & Dai, "Variational
    Information Distillation for Knowledge Transfer", CVPR 2019, arXiv:1904.05835 (RepDistiller's
    ``VIDLoss``, from the authors' code).

    For each pair of stage maps ``(f_s^j, f_t^j)`` (``feats[1:]``, RepDistiller's ``feat[1:-1]``;
    the deepest stages paired when the counts differ) the student predicts a Gaussian over the
    teacher's map: mean ``mu_j(f_s^j)`` (three 1x1 convs without bias, ReLU between them,
    ``C_s -> C_t -> C_t -> C_t``) and a learned per-channel variance ``sigma^2 = softplus(alpha) +
    eps``. The larger of the two maps is first average-pooled to the smaller one's H x W::

        L_j  = mean_{b,c,h,w} 0.5 * ((mu_j(f_s^j) - f_t^j)^2 / sigma_{j,c}^2 + log sigma_{j,c}^2)
        loss = ce_weight * CE + feat_weight * sum_j L_j  [+ kd_weight * KD]

    (the negative log-likelihood without its constant ``0.5 log 2 pi``, as in the code). Defaults:
    ``feat_weight 1, ce 1, kd 0, init_pred_var 5, eps 1e-5`` (RepDistiller ``-a 0 -b 1`` and
    ``VIDLoss(init_pred_var=5.0, eps=1e-5)``). The NLL is computed in float32 (the regressors run
    in the autocast precision). Logged terms: ``ce``, ``vid``. Deviations: pooling to the full
    (H, W) (the code pools to a square ``(H, H)``: the same for square maps); ``F.softplus``
    instead of ``log(1 + exp(.))`` (the same values, no overflow).
    """

    def __init__(self, feat_weight: Weight = 1.0,
                 init_pred_var: Annotated[float, Range(VID_EPS, lo_open=True)] = 5.0,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.init_pred_var = feat_weight, init_pred_var
        self._init_logits(ce_weight, kd_weight, T)
        self.pairs: nn.ModuleList | None = None

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        g_s, g_t = align_tail(student_out.feats[1:], teacher_out.feats[1:])
        for f_s, f_t in zip(g_s, g_t, strict=True):
            if f_s.dim() != 4 or f_t.dim() != 4:
                raise ConfigError(
                    f"method 'vid' needs 4-d (B, C, H, W) stage maps from both models; got student "
                    f"{tuple(f_s.shape)} and teacher {tuple(f_t.shape)}")
        self.pairs = nn.ModuleList(
            VIDPair(f_s.shape[1], f_t.shape[1], f_t.shape[1], self.init_pred_var)
            for f_s, f_t in zip(g_s, g_t, strict=True)).to(student_out.logits.device)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        if self.pairs is None:
            raise RuntimeError("vid: build() must run before the first step")
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        terms = self._logit_terms(student_out, teacher_out, targets)
        g_s, g_t = align_tail(student_out.feats[1:], teacher_out.feats[1:])
        terms["vid"] = self.feat_weight * sum(
            pair(f_s, f_t.detach()) for pair, f_s, f_t in zip(self.pairs, g_s, g_t, strict=True))
        return terms

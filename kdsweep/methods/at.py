"""Attention transfer."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import (
    FeatureMethod,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import align_tail, match_spatial, require_features
from kdsweep.models import ModelOutput


def attention_map(f: Tensor, p: float) -> Tensor:
    """``Q = normalize(mean_c |f_c|^p)`` flattened to ``(B, H*W)`` (unit L2 norm per sample).

    For even ``p`` (the published 2) ``|f|^p == f^p``, as in the reference code.
    """
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float) -> Tensor:
    """``mean((Q_s - Q_t)^2)`` after pooling the larger map to the smaller one's H x W."""
    f_s, f_t = match_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_method("at")
class AT(FeatureMethod):
    """Attention Transfer, Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017,
    arXiv:1612.03928 (RepDistiller's ``Attention``).

    For each pair of stage maps ``(f_s^j, f_t^j)`` an attention map ``Q = mean_c |f_c|^p``, flattened
    and L2-normalised per sample; the larger map is first average-pooled to the smaller's size::

        loss = ce_weight * CE + feat_weight * sum_j mean_{b,hw}((Q_s^j - Q_t^j)^2)  [+ kd_weight * KD]

    The stages are ``feats[1:]`` (f1..fn, RepDistiller's ``feat[1:-1]``); when the two models have
    different numbers of stages the deepest ones are paired. Channel counts may differ (the map
    averages over channels), so no connector is needed. Defaults: ``p 2, feat_weight 1000, ce 1``
    (RepDistiller ``-a 0 -b 1000``). Logged terms: ``ce``, ``at``.
    """

    def __init__(self, feat_weight: Weight = 1000.0, p: Annotated[float, Range(0.0, lo_open=True)] = 2.0,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.p = feat_weight, p
        self._init_logits(ce_weight, kd_weight, T)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        terms = self._logit_terms(student_out, teacher_out, targets)
        g_s, g_t = align_tail(student_out.feats[1:], teacher_out.feats[1:])
        loss = sum(at_loss(f_s, f_t.detach(), self.p) for f_s, f_t in zip(g_s, g_t, strict=True))
        terms["at"] = self.feat_weight * loss
        return terms

"""Similarity-preserving knowledge distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import FeatureMethod, StepInfo, Temperature, Weight, register_method
from kdsweep.methods.connectors import require_features
from kdsweep.models import ModelOutput


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``||normalize_rows(A_s A_s^T) - normalize_rows(A_t A_t^T)||_F^2 / b^2``, ``A = f.view(b, -1)``."""
    b = f_s.shape[0]
    a_s = f_s.float().reshape(b, -1)
    a_t = f_t.float().reshape(b, -1)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


@register_method("sp")
class SP(FeatureMethod):
    """Similarity-Preserving KD, Tung & Mori, ICCV 2019, arXiv:1907.09682 (RepDistiller's
    ``Similarity``).

    With ``A`` the last stage map flattened to ``(b, C*H*W)`` and ``G = row_normalize(A A^T)`` the
    ``b x b`` batch similarity matrix::

        loss = ce_weight * CE + feat_weight * ||G_s - G_t||_F^2 / b^2  [+ kd_weight * KD]

    The map is ``feats[-1]`` (the last stage output, RepDistiller's ``feat[-2]``); ``G`` is
    ``b x b`` whatever the shapes, so any pair works without a connector. Defaults:
    ``feat_weight 3000, ce 1`` (RepDistiller ``-a 0 -b 3000``). Logged terms: ``ce``, ``sp``.
    """

    def __init__(self, feat_weight: Weight = 3000.0, ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight = feat_weight
        self._init_logits(ce_weight, kd_weight, T)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        terms = self._logit_terms(student_out, teacher_out, targets)
        loss = sp_loss(student_out.feats[-1], teacher_out.feats[-1].detach())
        terms["sp"] = self.feat_weight * loss
        return terms

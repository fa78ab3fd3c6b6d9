"""Hinton knowledge distillation (optionally with logit standardisation)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import (
    Fraction,
    Method,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.logits import kd_loss, logit_terms  # noqa: F401  (kd_loss re-exported)
from kdsweep.models import ModelOutput


@register_method("kd")
class KD(Method):
    """Knowledge distillation, Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network", NIPS Deep Learning Workshop 2015, arXiv:1503.02531.

    With student logits ``z_s``, teacher logits ``z_t``, temperature ``T`` and labels ``y``::

        loss = w_kd * T^2 * KL(softmax(g(z_t)/T) || softmax(g(z_s)/T)) + (1 - alpha) * CE(z_s, y)
        w_kd = alpha if kd_weight is null else kd_weight
        g = identity, or the per-sample Z-score (z - mean) / (std + 1e-7) when logit_stand

    ``alpha`` weights the *soft* (distillation) term, as in Hinton et al.'s formulation and
    RepDistiller (HobbitLong/RepDistiller, ``-r 0.1 -a 0.9`` is ``alpha=0.9``). torchdistill uses the opposite convention (its alpha
    weights the hard loss). Defaults: ``T=4, alpha=0.9``, the CRD benchmark's CIFAR-100 setting.
    Logged terms: ``ce`` and ``kd``, each already weighted.

    ``kd_weight`` (default ``null``: ``alpha``) sets the soft term's weight on its own, leaving the
    CE at ``1 - alpha`` (mdistiller's ``KD.LOSS.KD_WEIGHT`` next to ``KD.LOSS.CE_WEIGHT``).
    ``logit_stand`` (default false) is the Logit Standardization of Sun, Ren, Li, Wang & Cao,
    "Logit Standardization in Knowledge Distillation", CVPR 2024, arXiv:2403.01427 (code:
    sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``): both logit vectors
    are Z-scored over the classes (unbiased std, ``1e-7`` added to it) before the temperature
    softmax of the ``kd`` term; the CE reads the raw logits. ``T`` is then the paper's *base*
    temperature. The authors' CIFAR-100 KD+LS (``--logit-stand --base-temp 2 --kd-weight 9`` with
    their ``KD.LOSS.CE_WEIGHT 0.1``) is ``method.logit_stand=true method.T=2 method.kd_weight=9``
    (``alpha`` stays 0.9, i.e. CE weight 0.1). With the defaults the loss is exactly the one above
    without LS.
    """

    def __init__(self, alpha: Fraction = 0.9, T: Temperature = 4.0,
                 kd_weight: Weight | None = None, logit_stand: bool = False):
        super().__init__()
        self.alpha, self.T = alpha, T
        self.kd_weight, self.logit_stand = kd_weight, logit_stand

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "kd needs a teacher"
        soft = kd_loss(student_out.logits, teacher_out.logits, self.T,
                       logit_stand=self.logit_stand)
        hard = F.cross_entropy(student_out.logits, targets)
        w_kd = self.alpha if self.kd_weight is None else self.kd_weight
        return {"ce": (1.0 - self.alpha) * hard, "kd": w_kd * soft}

"""Hinton knowledge distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import Fraction, Method, StepInfo, Temperature, register_method
from kdsweep.methods.logits import kd_loss, logit_terms  # noqa: F401  (kd_loss re-exported)
from kdsweep.models import ModelOutput


@register_method("kd")
class KD(Method):
    """Knowledge distillation, Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network", NIPS Deep Learning Workshop 2015, arXiv:1503.02531.

    With student logits ``z_s``, teacher logits ``z_t``, temperature ``T`` and labels ``y``::

        loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)

    ``alpha`` weights the *soft* (distillation) term, as in Hinton et al.'s formulation and
    RepDistiller (HobbitLong/RepDistiller, ``-r 0.1 -a 0.9`` is ``alpha=0.9``). torchdistill uses the opposite convention (its alpha
    weights the hard loss). Defaults: ``T=4, alpha=0.9``, the CRD benchmark's CIFAR-100 setting.
    Logged terms: ``ce`` and ``kd``, each already weighted.
    """

    def __init__(self, alpha: Fraction = 0.9, T: Temperature = 4.0):
        super().__init__()
        self.alpha, self.T = alpha, T

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "kd needs a teacher"
        soft = kd_loss(student_out.logits, teacher_out.logits, self.T)
        hard = F.cross_entropy(student_out.logits, targets)
        return {"ce": (1.0 - self.alpha) * hard, "kd": self.alpha * soft}

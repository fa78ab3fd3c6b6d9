"""Hinton knowledge distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import Method, StepInfo, check_range, register_method
from kdsweep.models import ModelOutput


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, summed over classes, mean over the batch.

    The ``T^2`` factor keeps the soft term's gradient scale independent of ``T`` (Hinton et al., 2015,
    Sec. 2). Computed in float32 so that mixed precision cannot underflow the soft targets.
    """
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def logit_terms(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, *,
                ce_weight: float, kd_weight: float, T: float) -> dict[str, Tensor]:
    """The ``ce`` and ``kd`` terms that every method can add to its own (weights > 0 only).

    Lets feature methods express the seeds' combinations (e.g. RepDistiller's ``-r 1 -a 1 -b 400``
    for SemCKD, or "CRD+KD") without new code.
    """
    terms: dict[str, Tensor] = {}
    if ce_weight > 0:
        terms["ce"] = ce_weight * F.cross_entropy(student_logits, targets)
    if kd_weight > 0 and teacher_logits is not None:
        terms["kd"] = kd_weight * kd_loss(student_logits, teacher_logits, T)
    return terms


@register_method("kd")
class KD(Method):
    """Knowledge distillation, Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network", NIPS Deep Learning Workshop 2015, arXiv:1503.02531.

    With student logits ``z_s``, teacher logits ``z_t``, temperature ``T`` and labels ``y``::

        loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)

    ``alpha`` weights the *soft* (distillation) term, as in seeds 001 and 003 and RepDistiller
    (``-r 0.1 -a 0.9`` is ``alpha=0.9``). torchdistill uses the opposite convention (its alpha
    weights the hard loss). Defaults: ``T=4, alpha=0.9``, the CRD benchmark's CIFAR-100 setting.
    Logged terms: ``ce`` and ``kd``, each already weighted.
    """

    def __init__(self, alpha: float = 0.9, T: float = 4.0):
        super().__init__()
        self.alpha = check_range("method.alpha", alpha, 0.0, 1.0)
        self.T = check_range("method.T", T, 0.0, lo_open=True)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "kd needs a teacher"
        soft = kd_loss(student_out.logits, teacher_out.logits, self.T)
        hard = F.cross_entropy(student_out.logits, targets)
        return {"ce": (1.0 - self.alpha) * hard, "kd": self.alpha * soft}

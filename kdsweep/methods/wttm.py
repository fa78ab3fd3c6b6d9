"""WTTM: weighted transformed teacher matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import Method, StepInfo, Temperature, Weight, register_method
from kdsweep.methods.dist import at_least_fp32
from kdsweep.methods.logits import logit_terms
from kdsweep.models import ModelOutput


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``mean_i U_gamma(p_t,i) * KL(p_t,i^gamma / U_gamma(p_t,i) || p_s,i)``, ``gamma = 1 / T``,
    in float32 (float64 for float64 logits).

    ``p_t = softmax(z_t)`` and ``p_s = softmax(z_s)`` (no temperature on either);
    ``U_gamma(p) = sum_j p_j^gamma`` is the power sum that normalises the power-transformed teacher
    (``p^gamma / U = softmax(z_t / T)``). Everything is computed in the log domain
    (``log U = logsumexp(gamma * log p_t)``), so it stays finite at any logit scale.
    """
    gamma = 1.0 / T
    log_p_s = F.log_softmax(at_least_fp32(student_logits), dim=1)
    scaled = gamma * F.log_softmax(at_least_fp32(teacher_logits), dim=1)  # gamma * log p_t
    log_u = torch.logsumexp(scaled, dim=1)  # log U_gamma(p_t), per sample
    log_q = scaled - log_u.unsqueeze(1)  # the transformed teacher, log(p_t^gamma / U)
    kl = (log_q.exp() * (log_q - log_p_s)).sum(dim=1)
    return (log_u.exp() * kl).mean()


@register_method("wttm")
class WTTM(Method):
    """Weighted transformed teacher matching, Zheng & Yang, "Knowledge Distillation Based on
    Transformed Teacher Matching", ICLR 2024, arXiv:2402.11148; follows the authors' code
    (zkxufo/TTM, ``distiller_zoo/wttm.py`` and ``train_student.py``).

    TTM drops the temperature on the student's side: the teacher's distribution is power
    transformed, ``p_t^gamma / U_gamma(p_t)`` with ``gamma = 1 / T`` (equal to
    ``softmax(z_t / T)``), and the student's plain ``p_s = softmax(z_s)`` is matched to it. WTTM
    weights each sample's KL by the power sum ``U_gamma(p_t) = sum_j p_t,j^gamma``, which is large
    for a smooth teacher prediction and 1 for a one-hot one (the paper's sample-adaptive weight)::

        loss = ce_weight * CE(z_s, y)
               + beta * mean_i U_gamma(p_t,i) * KL(p_t,i^gamma / U_gamma(p_t,i) || p_s,i)

    No ``T^2`` factor and no temperature on the student, as in the code. ``T`` is the paper's
    temperature (its appendix lists ``T`` and ``beta`` per pair); the code's ``--ttm_l`` is
    ``gamma = 1 / T``. Defaults: ``ce_weight 1`` (``-r 1``); ``T 5, beta 4`` from the one WTTM
    setting the authors publish with their code, the README's ``--add wttm --ttm_l 0.2 -a 4``
    (vgg13 -> vgg8, with CRD at ``-b 0.8``). The paper's per-pair values (its appendix A.4) were
    not available here; set ``method.T`` / ``method.beta`` to reproduce a specific pair. Computed
    in float32 from the logits (so under bf16 autocast too), in the log domain (``log U =
    logsumexp(gamma log p_t)``) instead of the code's ``softmax(z_t) ** gamma``, which gives the
    same values and stays finite for very confident teachers. The weight ``U`` depends on the
    teacher only (no gradient). Logged terms: ``ce``, ``wttm``, each already weighted. KD on top:
    ``method=multi``.
    """

    def __init__(self, ce_weight: Weight = 1.0, beta: Weight = 4.0, T: Temperature = 5.0):
        super().__init__()
        self.ce_weight, self.beta, self.T = ce_weight, beta, T

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "wttm needs a teacher"
        terms = logit_terms(student_out.logits, None, targets, ce_weight=self.ce_weight,
                            kd_weight=0.0, T=self.T)
        terms["wttm"] = self.beta * wttm_loss(student_out.logits, teacher_out.logits.detach(),
                                              self.T)
        return terms

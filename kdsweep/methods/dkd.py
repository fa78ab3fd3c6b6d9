"""Decoupled knowledge distillation (DKD)."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from kdsweep.methods.base import Method, Range, StepInfo, Temperature, Weight, register_method
from kdsweep.methods.logits import logit_terms
from kdsweep.models import ModelOutput


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
              T: float) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)``, each ``T^2 * KL(teacher || student)``, batch-mean, in float32.

    TCKD is the KL between the binary distributions ``b = [p_gt, 1 - p_gt]``; NCKD the KL between
    the distributions over the non-target classes, renormalised without the target class. Both
    are computed from log-sum-exps (no ``log`` of a softmax), so they stay finite at large logits.
    """
    zs = student_logits.float() / T
    zt = teacher_logits.float() / T
    n, c = zs.shape
    gt = torch.zeros_like(zs, dtype=torch.bool)
    gt[torch.arange(n, device=zs.device), targets] = True

    def split(z: Tensor) -> tuple[Tensor, Tensor]:
        lse_all = torch.logsumexp(z, dim=1)
        z_other = z[~gt].view(n, c - 1)
        log_gt = z[gt] - lse_all  # log p_gt
        log_not_gt = torch.logsumexp(z_other, dim=1) - lse_all  # log (1 - p_gt)
        return torch.stack([log_gt, log_not_gt], dim=1), torch.log_softmax(z_other, dim=1)

    log_b_s, log_q_s = split(zs)
    log_b_t, log_q_t = split(zt)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1).mean() * (T * T)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1).mean() * (T * T)
    return tckd, nckd


@register_method("dkd")
class DKD(Method):
    """Decoupled Knowledge Distillation, Zhao, Cui, Song, Qiu & Liang, CVPR 2022,
    arXiv:2203.08679 (mdistiller).

    With ``b = [p_gt, 1 - p_gt]`` (target vs. all other classes) and ``q`` the softmax over the
    non-target classes only, all at temperature ``T``::

        TCKD = T^2 * KL(b_t || b_s)        NCKD = T^2 * KL(q_t || q_s)
        loss = ce_weight * CE(z_s, y) + w(epoch) * (alpha * TCKD + beta * NCKD)
               [+ kd_weight * T^2 * KL(p_t || p_s)]
        w(epoch) = min((epoch + 1) / warmup, 1)      (1 when warmup = 0)

    ``epoch`` is :class:`StepInfo`'s 0-based epoch, so ``w`` is mdistiller's
    ``min(epoch / warmup, 1)`` with its 1-based epochs: 1/20 in the first epoch, 1 from epoch 20.
    Defaults (mdistiller ``DKD.*``): ``ce_weight 1, alpha 1, beta 8, T 4, warmup 20``; beta is
    tuned per pair (2 for resnet56/110 -> resnet20/32, 6 for vgg13 and wrn_40_2 teachers, 8
    otherwise; see conf/method/dkd.yaml). Logged terms: ``ce``, ``tckd``, ``nckd`` (and ``kd``),
    each already weighted, the warmup included.
    """

    def __init__(self, ce_weight: Weight = 1.0, alpha: Weight = 1.0, beta: Weight = 8.0,
                 T: Temperature = 4.0, warmup: Annotated[float, Range(0.0)] = 20.0,
                 kd_weight: Weight = 0.0):
        super().__init__()
        self.ce_weight, self.alpha, self.beta, self.T = ce_weight, alpha, beta, T
        self.warmup, self.kd_weight = warmup, kd_weight

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup <= 0 else min((epoch + 1) / self.warmup, 1.0)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "dkd needs a teacher"
        t_logits = teacher_out.logits.detach()
        terms = logit_terms(student_out.logits, t_logits, targets, ce_weight=self.ce_weight,
                            kd_weight=self.kd_weight, T=self.T)
        tckd, nckd = dkd_parts(student_out.logits, t_logits, targets, self.T)
        w = self.warmup_factor(info.epoch)
        terms["tckd"] = (w * self.alpha) * tckd
        terms["nckd"] = (w * self.beta) * nckd
        return terms

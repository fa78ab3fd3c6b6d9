"""Decoupled knowledge distillation (DKD)."""

from __future__ import annotations

import logging
from typing import Annotated

import torch
from torch import Tensor

from kdsweep.methods.base import (
    BuildContext,
    Method,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.logits import logit_terms, standardize
from kdsweep.models import ModelOutput

log = logging.getLogger(__name__)

#: mdistiller's published beta per CIFAR-100 pair (``configs/cifar100/dkd/*.yaml``), by
#: (teacher, student) in kdsweep's model names; every other pair uses ``DEFAULT_BETA``.
PAIR_BETA: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0,
}
DEFAULT_BETA = 8.0  # mdistiller DKD.BETA


def pair_beta(teacher: str | None, student: str | None) -> tuple[float, str]:
    """(beta, where it comes from) for a teacher/student pair, as mdistiller's configs set it."""
    if teacher is None or student is None:
        return DEFAULT_BETA, "mdistiller's default (the engine did not name the pair)"
    if (teacher, student) in PAIR_BETA:
        return PAIR_BETA[teacher, student], f"mdistiller's beta for {teacher} -> {student}"
    return DEFAULT_BETA, f"mdistiller's default ({teacher} -> {student} has no own config)"


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
              T: float, *, logit_stand: bool = False) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)``, each ``T^2 * KL(teacher || student)``, batch-mean, in float32.

    TCKD is the KL between the binary distributions ``b = [p_gt, 1 - p_gt]``; NCKD the KL between
    the distributions over the non-target classes, renormalised without the target class. Both
    are computed from log-sum-exps (no ``log`` of a softmax), so they stay finite at large logits.
    With ``logit_stand`` both logit vectors are first Z-scored over all classes
    (:func:`~kdsweep.methods.logits.standardize`), then split, as the LS authors' ``dkd_loss``.
    """
    zs, zt = student_logits.float(), teacher_logits.float()
    if logit_stand:
        zs, zt = standardize(zs), standardize(zt)
    zs = zs / T
    zt = zt / T
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
    Defaults (mdistiller ``DKD.*``): ``ce_weight 1, alpha 1, T 4, warmup 20``. ``beta`` is
    mdistiller's per-pair value when left at ``null`` (:data:`PAIR_BETA`: 2 for resnet56 ->
    resnet20 and resnet110 -> resnet32; 6 for vgg13 -> vgg8 / MobileNetV2 and wrn_40_2 ->
    wrn_16_2 / wrn_40_1; 8 otherwise), chosen in :meth:`build` from ``BuildContext.teacher_arch``
    / ``student_arch``; after ``build`` ``self.beta`` is the value in use and ``self.beta_source``
    says why (also in :attr:`resolved`). ``method.beta=X`` fixes it. Logged terms: ``ce``,
    ``tckd``, ``nckd`` (and ``kd``), each already weighted, the warmup included.

    ``dkd_weight`` (default 1) multiplies both ``alpha`` and ``beta``:
    ``w(epoch) * dkd_weight * (alpha * TCKD + beta * NCKD)``. ``logit_stand`` (default false) is
    the Logit Standardization of Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024, arXiv:2403.01427 (code: sunshangquan/logit-standardization-KD,
    ``mdistiller/distillers/DKD.py``): student and teacher logits are Z-scored over the classes
    (unbiased std, ``1e-7`` added to it) before the temperature softmaxes of TCKD, NCKD (and of
    the optional ``kd`` term); the CE reads the raw logits. The authors' CIFAR-100 DKD+LS
    (``--logit-stand --base-temp 2 --kd-weight 9``: ``DKD.ALPHA`` and ``DKD.BETA`` times 9,
    ``DKD.T = 2``, CE weight 1, warmup 20) is ``method.logit_stand=true method.T=2
    method.dkd_weight=9``, which keeps the pair's beta. With the defaults the loss is exactly
    the one above without LS.
    """

    def __init__(self, ce_weight: Weight = 1.0, alpha: Weight = 1.0, beta: Weight | None = None,
                 T: Temperature = 4.0, warmup: Annotated[float, Range(0.0)] = 20.0,
                 kd_weight: Weight = 0.0, dkd_weight: Weight = 1.0, logit_stand: bool = False):
        super().__init__()
        self.ce_weight, self.alpha, self.T = ce_weight, alpha, T
        self.warmup, self.kd_weight = warmup, kd_weight
        self.dkd_weight, self.logit_stand = dkd_weight, logit_stand
        self.per_pair = beta is None
        # Until build() names the pair, a per-pair beta is mdistiller's default.
        self.beta = DEFAULT_BETA if beta is None else beta
        self.beta_source = "mdistiller's default (not built yet)" if beta is None else "method.beta"

    @property
    def resolved(self) -> dict[str, float | str]:
        """The values in use that the config left open (``method.beta=null``), and why."""
        return {"beta": self.beta, "beta_source": self.beta_source}

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        if self.per_pair:
            self.beta, self.beta_source = pair_beta(getattr(context, "teacher_arch", None),
                                                    getattr(context, "student_arch", None))
        log.info("dkd: beta %g (%s)", self.beta, self.beta_source)

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup <= 0 else min((epoch + 1) / self.warmup, 1.0)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "dkd needs a teacher"
        t_logits = teacher_out.logits.detach()
        terms = logit_terms(student_out.logits, t_logits, targets, ce_weight=self.ce_weight,
                            kd_weight=self.kd_weight, T=self.T, logit_stand=self.logit_stand)
        tckd, nckd = dkd_parts(student_out.logits, t_logits, targets, self.T,
                               logit_stand=self.logit_stand)
        w = self.warmup_factor(info.epoch) * self.dkd_weight
        terms["tckd"] = (w * self.alpha) * tckd
        terms["nckd"] = (w * self.beta) * nckd
        return terms

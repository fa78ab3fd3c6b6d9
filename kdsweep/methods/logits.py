"""The logit terms every method can add: Hinton's soft-target KL and the labels' cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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

    Lets feature methods express the papers' combinations (e.g. RepDistiller's ``-r 1 -a 1 -b 400``
    for SemCKD, or "CRD+KD") without new code.
    """
    terms: dict[str, Tensor] = {}
    if ce_weight > 0:
        terms["ce"] = ce_weight * F.cross_entropy(student_logits, targets)
    if kd_weight > 0 and teacher_logits is not None:
        terms["kd"] = kd_weight * kd_loss(student_logits, teacher_logits, T)
    return terms

"""The logit terms every method can add: Hinton's soft-target KL and the labels' cross-entropy,
and the logit standardisation (Z-score) that ``kd`` and ``dkd`` can apply before their softmaxes."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdsweep.errors import ConfigError

#: Added to the standard deviation in :func:`standardize` (the LS authors' ``normalize``).
LS_EPS = 1e-7


def standardize(logits: Tensor) -> Tensor:
    """Each row's Z-score: ``(z - mean(z)) / (std(z) + 1e-7)`` over the classes (last dim).

    Logit standardisation, Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024, arXiv:2403.01427 (code: sunshangquan/logit-standardization-KD,
    ``normalize`` in ``mdistiller/distillers/KD.py``): ``std`` is the *unbiased* estimate
    (Bessel's ``C - 1``, ``torch.std``'s default, as the authors' code), and ``1e-7`` is added to
    it, not under a square root. The result does not change when a constant is added to a row or
    a row is scaled by a positive factor (up to the ``1e-7``).
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # unbiased (correction=1)
    return (logits - mean) / (std + LS_EPS)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float, *,
            logit_stand: bool = False) -> Tensor:
    """``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, summed over classes, mean over the batch.

    The ``T^2`` factor keeps the soft term's gradient scale independent of ``T`` (Hinton et al., 2015,
    Sec. 2). Computed in float32 so that mixed precision cannot underflow the soft targets. With
    ``logit_stand`` both ``z_s`` and ``z_t`` are first replaced by their Z-scores
    (:func:`standardize`, in float32), so ``T`` acts as the LS paper's base temperature.
    """
    zs, zt = student_logits.float(), teacher_logits.float()
    if logit_stand:
        zs, zt = standardize(zs), standardize(zt)
    log_p_s = F.log_softmax(zs / T, dim=1)
    log_p_t = F.log_softmax(zt / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def logit_terms(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, *,
                ce_weight: float, kd_weight: float, T: float,
                logit_stand: bool = False) -> dict[str, Tensor]:
    """The ``ce`` and ``kd`` terms that every method can add to its own (weights > 0 only).

    Lets feature methods express the papers' combinations (e.g. RepDistiller's ``-r 1 -a 1 -b 400``
    for SemCKD, or "CRD+KD") without new code. ``logit_stand`` standardises the logits of the
    ``kd`` term only (:func:`kd_loss`); the cross-entropy always reads the raw logits.
    """
    terms: dict[str, Tensor] = {}
    if ce_weight > 0:
        terms["ce"] = ce_weight * F.cross_entropy(student_logits, targets)
    if kd_weight > 0 and teacher_logits is not None:
        terms["kd"] = kd_weight * kd_loss(student_logits, teacher_logits, T,
                                          logit_stand=logit_stand)
    return terms


def require_same_classes(method: str, student_logits: Tensor, teacher_logits: Tensor | None) -> int:
    """The number of classes, refusing (one line, at build) a missing teacher or a pair whose
    heads differ: the methods that compare class distributions need the same classes."""
    if teacher_logits is None:
        raise ConfigError(f"method {method!r} needs a teacher")
    c_s, c_t = student_logits.shape[1], teacher_logits.shape[1]
    if c_s != c_t:
        raise ConfigError(f"method {method!r} compares class distributions: the student has {c_s} "
                          f"logits, the teacher {c_t}; both need the same classes")
    return c_s
